/**
 * What a browser agent keeps across page loads, in IndexedDB (docs/WEB.md, "State"):
 * the last global model (for the draw panel, and to show the round at once), the
 * codec's error-feedback residual, the last answer sent (so a reloaded page re-sends
 * the same bytes instead of training the round twice), and the device's own labelled
 * drawings, which never leave it.
 *
 * One database per origin (`fedmq`); records are keyed by `job/agent` (drawings by
 * job and task), so several agents in one browser (the demo's tabs) keep apart.
 */

const DB = 'fedmq';
const VERSION = 1;
const STATE = 'agent-state';
const DRAWINGS = 'drawings';

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

export class AgentStore {
  constructor(db, job, agent) {
    this.db = db;
    this.key = `${job}/${agent}`;
    this.job = job;
  }

  /** Open (and on first use create) the database; `idb` is `indexedDB`. */
  static async open(idb, job, agent) {
    const req = idb.open(DB, VERSION);
    req.onupgradeneeded = () => {
      const db = req.result;
      if (!db.objectStoreNames.contains(STATE)) db.createObjectStore(STATE);
      if (!db.objectStoreNames.contains(DRAWINGS)) {
        db.createObjectStore(DRAWINGS, { autoIncrement: true }).createIndex('by_task', 'scope');
      }
    };
    return new AgentStore(await request(req), job, agent);
  }

  async get(field) {
    const tx = this.db.transaction(STATE, 'readonly');
    return (await request(tx.objectStore(STATE).get(`${this.key}/${field}`))) ?? null;
  }

  async put(field, value) {
    const tx = this.db.transaction(STATE, 'readwrite');
    const store = tx.objectStore(STATE);
    if (value === null) store.delete(`${this.key}/${field}`);
    else store.put(value, `${this.key}/${field}`);
    return new Promise((resolve, reject) => {
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
    });
  }

  /** The last global model: {run, round, task, done, weights, shapes}. */
  loadModel() { return this.get('model'); }

  saveModel(model) {
    const { run, round, task, done, weights, shapes, model_id: modelId } = model;
    return this.put('model', { run, round, task, done, weights, shapes, model_id: modelId });
  }

  loadResidual() { return this.get('residual'); }

  saveResidual(state) { return this.put('residual', state); }

  loadAnswer() { return this.get('answer'); }

  saveAnswer(answer) { return this.put('answer', answer); }

  /** The device's labelled drawings for `task`: {x: Float32Array rows, y: labels}. */
  async drawings(task) {
    const tx = this.db.transaction(DRAWINGS, 'readonly');
    const all = await request(tx.objectStore(DRAWINGS).index('by_task').getAll(`${this.job}/${task}`));
    return all;
  }

  addDrawing(task, x, label) {
    const tx = this.db.transaction(DRAWINGS, 'readwrite');
    tx.objectStore(DRAWINGS).add({ scope: `${this.job}/${task}`, x, label, at: Date.now() });
    return new Promise((resolve, reject) => {
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
    });
  }
}
