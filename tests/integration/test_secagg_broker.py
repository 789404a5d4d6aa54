"""SecAgg over a real Mosquitto, with an agent process SIGKILLed at each phase.

Ten agents train digits under ``--secagg``: three in this process, seven as ``fedmq
agent`` processes (numpy trainer). Round 1 runs clean; in round 2 one victim dies
before it sends its keys, in round 3 before its shares, in round 4 before its masked
input and in round 5 before it unmasks. Every round still closes with the sum of
the agents whose inputs it holds, and its metrics name the victim under the phase
it died in.

No timing luck: to kill a victim between phase P-1 and phase P, the phase P-1 must
stay open until it is dead. Gate processes hold each earlier phase open: gate i is
stopped (SIGSTOP) once it has sent its message of phase i-1 and before phase i can
open, because gate i-1, stopped earlier, has not sent its own yet; then gate i-1 is
resumed. The victim is killed once its phase P-1 message is on the broker, and only
then is the last gate resumed. Waiting is on conditions with timeouts, never a sleep.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from harness import CoordinatorThread, agent_fleet, fedmq_process
from paho.mqtt.enums import CallbackAPIVersion

from coordinator import Action, RoundClosed, RoundConfig
from coordinator.config import SecAggPolicy
from fedmq.broker import LocalBroker
from fedmq.tasks import get_task
from protocol import Phase, Topics, parse_topic
from protocol.peek import peek_fields
from transport.connection import BrokerURL

pytestmark = pytest.mark.integration

MESSAGES = ["secagg_keys", "secagg_shares", "secagg_masked", "secagg_unmask"]
PHASES = ["keys", "shares", "masked", "unmask"]
AGENTS, IN_PROCESS = 10, 3
GATES = ["agent-3", "agent-4", "agent-5"]
#: round -> (the phase its victim dies in, the victim)
PLAN = {2: (0, "agent-6"), 3: (1, "agent-7"), 4: (2, "agent-8"), 5: (3, "agent-9")}


class Choreography:
    """Stops, resumes and kills agent processes at exact points of each round's phases."""

    def __init__(self, procs: dict[str, subprocess.Popen[bytes]]) -> None:
        self.procs = procs
        self.cond = threading.Condition()
        self.sent: set[tuple[int, int, str]] = set()  # (round, phase index, agent)
        self.stopped: set[str] = set()
        self.killed: set[str] = set()
        #: (round, gate) for every gate that has held its phase: each does so once a round
        self.held: set[tuple[int, str]] = set()
        self.round = 0

    def round_closed(self, number: int) -> None:
        """On the coordinator's thread, before round ``number + 1`` is announced."""
        with self.cond:
            self.round = number + 1
            plan = PLAN.get(self.round)
            if plan is None:
                return
            phase, victim = plan
            if phase == 0:
                self._kill(victim)  # it never sees the round's model
            else:
                self._stop(GATES[0])  # holds the keys phase open
                self.held.add((self.round, GATES[0]))
            self.cond.notify_all()

    def message(self, agent: str, kind: str, round_no: int) -> None:
        """On the watcher's thread: ``agent`` published a SecAgg message."""
        with self.cond:
            self.sent.add((round_no, MESSAGES.index(kind), agent))
            self._advance()
            self.cond.notify_all()

    def _advance(self) -> None:
        plan = PLAN.get(self.round)
        if plan is None or plan[0] == 0:
            return
        phase, victim = plan
        r = self.round
        for i in range(1, phase):  # gate i takes over from gate i-1, one phase later
            if (r, GATES[i]) not in self.held and (r, i - 1, GATES[i]) in self.sent:
                self._stop(GATES[i])
                self.held.add((r, GATES[i]))
                self._resume(GATES[i - 1])
        last = GATES[phase - 1]
        ready = victim not in self.killed and (r, phase - 1, victim) in self.sent
        if last in self.stopped and ready:
            self._kill(victim)
            self._resume(last)

    def _stop(self, agent: str) -> None:
        self.procs[agent].send_signal(signal.SIGSTOP)
        self.stopped.add(agent)

    def _resume(self, agent: str) -> None:
        self.procs[agent].send_signal(signal.SIGCONT)
        self.stopped.discard(agent)

    def _kill(self, agent: str) -> None:
        self.procs[agent].kill()  # SIGKILL: the broker publishes its last will
        self.procs[agent].wait(10)
        self.killed.add(agent)


def watch_secagg(url: str, job: str, play: Choreography) -> mqtt.Client:
    broker = BrokerURL.parse(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    subscribed = threading.Event()

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        ref = parse_topic(msg.topic)
        head = peek_fields(bytes(msg.payload), ("type", "round"))
        if ref.agent is not None and head.get("type") in MESSAGES:
            play.message(ref.agent, head["type"], head["round"])

    client.on_connect = lambda c, *_: c.subscribe(Topics(job).all_secagg_up, qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = on_message
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert subscribed.wait(10)
    return client


def test_agents_killed_at_every_secagg_phase_leave_every_round_closed_with_the_survivors_sum(
    broker: LocalBroker, tmp_path: Path
) -> None:
    job = "secagg-kills"
    procs = {
        f"agent-{k}": fedmq_process(
            "agent", "--broker", broker.url, "--job", job, "--task", "digits", "--trainer",
            "numpy", "--agent-id", f"agent-{k}", "--shard", f"{k}/{AGENTS}",
            log=tmp_path / f"agent-{k}.log")
        for k in range(IN_PROCESS, AGENTS)
    }
    play = Choreography(procs)
    watcher = watch_secagg(broker.url, job, play)

    def observe(action: Action) -> None:
        if isinstance(action, RoundClosed):
            play.round_closed(action.metrics.round)

    config = RoundConfig(job=job, task="digits", rounds=5, plan=get_task("digits").plan,
                         deadline_s=120.0, min_agents=AGENTS, min_replies=4,
                         secagg=SecAggPolicy(keys_s=60.0, shares_s=60.0, unmask_s=60.0))
    coord = CoordinatorThread(config, broker.url, tmp_path / "run", on_action=observe)
    try:
        with agent_fleet(broker.url, job, "digits", IN_PROCESS, total=AGENTS):
            coord.start().join(timeout=240)
    finally:
        watcher.disconnect()
        watcher.loop_stop()
        for proc in procs.values():
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait(10)
    assert coord.node.rounds.phase is Phase.DONE
    history = coord.node.rounds.history
    assert [m.accepted for m in history] == [10, 9, 8, 7, 7]
    for m in history:
        assert m.secagg is not None
        phase_and_victim = PLAN.get(m.round)
        expected = {p: () for p in PHASES}
        if phase_and_victim is not None:
            expected[PHASES[phase_and_victim[0]]] = (phase_and_victim[1],)
        assert m.secagg == expected, m.round
        # a victim's last will closed its phase: no round waited out a phase deadline
        assert m.duration_s < 60.0
    assert history[-1].accuracy is not None and history[-1].accuracy > 0.8
    assert play.killed == set(v for _, v in PLAN.values())


def test_the_demo_with_secagg_completes(tmp_path: Path, broker: LocalBroker) -> None:
    summary = tmp_path / "summary.json"
    proc = fedmq_process("demo", "--secagg", "--agents", "4", "--rounds", "3", "--broker",
                         broker.url, "--job", "secagg-demo", "--summary", str(summary),
                         log=tmp_path / "demo.log")
    assert proc.wait(timeout=180) == 0, (tmp_path / "demo.log").read_text()[-2000:]
    doc = json.loads(summary.read_text())
    assert doc["rounds_completed"] == 3 and doc["updates_accepted"] == 12
    assert doc["final_accuracy"] > 0.6
    said = [line for line in (tmp_path / "demo.log").read_text().splitlines() if "secagg:" in line]
    assert said, "the demo says the run is securely aggregated"
