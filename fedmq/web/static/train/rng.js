/**
 * numpy's `default_rng(seed).permutation(n)`, bit for bit, so a browser agent shuffles
 * its rows in the order the Python trainers do (`default_rng([plan.seed, round, index])`).
 *
 * References: numpy/random/bit_generator.pyx (SeedSequence, pool size 4), numpy's
 * pcg64.h (PCG64 XSL-RR 128/64, O'Neill 2014), numpy/random/_generator.pyx
 * (`shuffle`: Fisher-Yates from the end with `random_interval`, masked rejection).
 *
 * Invariants: pure and deterministic; no clock, no globals. 32-bit words are kept in
 * uint32 with `Math.imul` and `>>> 0`; the 128-bit PCG state is a BigInt.
 */

const INIT_A = 0x43b0d7e5;
const MULT_A = 0x931e8875;
const INIT_B = 0x8b51f9dd;
const MULT_B = 0x58f38ded;
const MIX_MULT_L = 0xca01f9dd;
const MIX_MULT_R = 0x4973f715;
const POOL_SIZE = 4;
const XSHIFT = 16;

const MASK64 = (1n << 64n) - 1n;
const MASK128 = (1n << 128n) - 1n;
/** PCG_DEFAULT_MULTIPLIER_128 */
const PCG_MULT = (2549297995355413924n << 64n) + 4865540595714422341n;

/** A non-negative integer (Number or BigInt) as little-endian uint32 words; 0 is [0]. */
function intWords(value) {
  let n = BigInt(value);
  if (n < 0n) throw new RangeError(`seed entries must be >= 0, got ${value}`);
  if (n === 0n) return [0];
  const words = [];
  while (n > 0n) {
    words.push(Number(n & 0xffffffffn));
    n >>= 32n;
  }
  return words;
}

/** numpy's `_coerce_to_uint32_array` for an int or a (nested) list of ints. */
function entropyWords(seed) {
  if (Array.isArray(seed)) return seed.flatMap(entropyWords);
  if (typeof seed === 'number' && !Number.isSafeInteger(seed)) {
    throw new TypeError(`seed entries must be integers, got ${seed}`);
  }
  return intWords(seed);
}

/** SeedSequence's pool: the entropy hashed and mixed into 4 uint32 words. */
function seedPool(seed) {
  const entropy = entropyWords(seed);
  let hashConst = INIT_A;
  const hashmix = (value) => {
    let v = (value ^ hashConst) >>> 0;
    hashConst = Math.imul(hashConst, MULT_A) >>> 0;
    v = Math.imul(v, hashConst) >>> 0;
    return (v ^ (v >>> XSHIFT)) >>> 0;
  };
  const mix = (x, y) => {
    const r = (Math.imul(MIX_MULT_L, x) - Math.imul(MIX_MULT_R, y)) >>> 0;
    return (r ^ (r >>> XSHIFT)) >>> 0;
  };
  const pool = new Array(POOL_SIZE);
  for (let i = 0; i < POOL_SIZE; i++) pool[i] = hashmix(i < entropy.length ? entropy[i] : 0);
  for (let src = 0; src < POOL_SIZE; src++) {
    for (let dst = 0; dst < POOL_SIZE; dst++) {
      if (src !== dst) pool[dst] = mix(pool[dst], hashmix(pool[src]));
    }
  }
  for (let src = POOL_SIZE; src < entropy.length; src++) {
    for (let dst = 0; dst < POOL_SIZE; dst++) pool[dst] = mix(pool[dst], hashmix(entropy[src]));
  }
  return pool;
}

/** `SeedSequence.generate_state(words, np.uint64)` as BigInts. */
function generateState64(pool, words) {
  let hashConst = INIT_B;
  const out32 = [];
  for (let i = 0; i < 2 * words; i++) {
    let v = (pool[i % POOL_SIZE] ^ hashConst) >>> 0;
    hashConst = Math.imul(hashConst, MULT_B) >>> 0;
    v = Math.imul(v, hashConst) >>> 0;
    out32.push((v ^ (v >>> XSHIFT)) >>> 0);
  }
  const out = [];
  for (let i = 0; i < words; i++) out.push(BigInt(out32[2 * i]) | (BigInt(out32[2 * i + 1]) << 32n));
  return out;
}

/** numpy's PCG64 bit generator seeded as `default_rng(seed)` seeds it. */
export class PCG64 {
  constructor(seed) {
    const [s0, s1, i0, i1] = generateState64(seedPool(seed), 4);
    const initState = (s0 << 64n) | s1;
    const initSeq = (i0 << 64n) | i1;
    this.inc = ((initSeq << 1n) | 1n) & MASK128;
    this.state = 0n;
    this.step();
    this.state = (this.state + initState) & MASK128;
    this.step();
    /** next_uint32 hands out the high half of a 64-bit draw on its next call */
    this.spare = null;
  }

  step() {
    this.state = (this.state * PCG_MULT + this.inc) & MASK128;
  }

  /** The next 64-bit output (XSL-RR), as a BigInt. */
  next64() {
    this.step();
    const s = this.state;
    const xored = ((s >> 64n) ^ s) & MASK64;
    const rot = Number(s >> 122n);
    return ((xored >> BigInt(rot)) | (xored << BigInt((64 - rot) & 63))) & MASK64;
  }

  /** The next 32-bit output, as numpy buffers it: low half now, high half next time. */
  next32() {
    if (this.spare !== null) {
      const v = this.spare;
      this.spare = null;
      return v;
    }
    const v = this.next64();
    this.spare = Number(v >> 32n);
    return Number(v & 0xffffffffn);
  }

  /** numpy's `random_interval(max)`: uniform on [0, max] by masked rejection. */
  interval(max) {
    if (max === 0) return 0;
    let mask = max;
    for (const shift of [1, 2, 4, 8, 16]) mask |= mask >>> shift;
    mask >>>= 0;
    if (max <= 0xffffffff) {
      for (;;) {
        const v = (this.next32() & mask) >>> 0;
        if (v <= max) return v;
      }
    }
    throw new RangeError(`interval above 2^32-1 is not needed here, got ${max}`);
  }
}

/** `numpy.random.default_rng(seed)`, for the draws fedmq's trainers make. */
export class Generator {
  constructor(seed) {
    this.bitgen = new PCG64(seed);
  }

  /** `Generator.random()`: a double on [0, 1) from the top 53 bits of one 64-bit draw. */
  random() {
    return Number(this.bitgen.next64() >> 11n) / 9007199254740992;
  }

  /** `Generator.permutation(n)`: Fisher-Yates from the end, as an Int32Array. */
  permutation(n) {
    if (!Number.isSafeInteger(n) || n < 0 || n > 0x7fffffff) {
      throw new RangeError(`permutation size must be 0..2^31-1, got ${n}`);
    }
    const out = new Int32Array(n);
    for (let i = 0; i < n; i++) out[i] = i;
    for (let i = n - 1; i > 0; i--) {
      const j = this.bitgen.interval(i);
      const t = out[i];
      out[i] = out[j];
      out[j] = t;
    }
    return out;
  }
}

/** `numpy.random.default_rng(seed).permutation(n)`. */
export function permutation(seed, n) {
  return new Generator(seed).permutation(n);
}
