// numpy.random.default_rng(seed).random(): numpy's SeedSequence and PCG64 (XSL-RR 128/64) in
// BigInt, so the page draws the very uniforms `densreg sample --seed` and `densreg complete
// --seed` draw. Doubles as numpy makes them: (next64 >> 11) * 2**-53, in [0, 1).

const M32 = 0xffffffffn;
const M64 = (1n << 64n) - 1n;
const M128 = (1n << 128n) - 1n;
const PCG_MULT = (2549297995355413924n << 64n) + 4865540595714422341n;
const INIT_A = 0x43b0d7e5, MULT_A = 0x931e8875, INIT_B = 0x8b51f9dd, MULT_B = 0x58f38ded;
const MIX_MULT_L = 0xca01f9dd, MIX_MULT_R = 0x4973f715, POOL_SIZE = 4;

const mul32 = (a, b) => Math.imul(a, b) >>> 0;

function seedWords(seed) {
  // a non-negative integer as little-endian uint32 words (numpy's _int_to_uint32_array)
  let n = BigInt(seed);
  if (n < 0n) throw new RangeError(`seed must be a non-negative integer, got ${seed}`);
  const words = [];
  do { words.push(Number(n & M32)); n >>= 32n; } while (n > 0n);
  return words;
}

// numpy.random.SeedSequence(seed): its pool of four uint32 words
function seedPool(seed) {
  const entropy = seedWords(seed);
  let hashConst = INIT_A;
  const hashmix = (value) => {
    value = (value ^ hashConst) >>> 0;
    hashConst = mul32(hashConst, MULT_A);
    value = mul32(value, hashConst);
    return (value ^ (value >>> 16)) >>> 0;
  };
  const mix = (x, y) => {
    const r = (mul32(MIX_MULT_L, x) - mul32(MIX_MULT_R, y)) >>> 0;
    return (r ^ (r >>> 16)) >>> 0;
  };
  const pool = [];
  for (let i = 0; i < POOL_SIZE; i++) pool.push(hashmix(i < entropy.length ? entropy[i] : 0));
  for (let src = 0; src < POOL_SIZE; src++)
    for (let dst = 0; dst < POOL_SIZE; dst++)
      if (src !== dst) pool[dst] = mix(pool[dst], hashmix(pool[src]));
  for (let src = POOL_SIZE; src < entropy.length; src++)
    for (let dst = 0; dst < POOL_SIZE; dst++) pool[dst] = mix(pool[dst], hashmix(entropy[src]));
  return pool;
}

// SeedSequence.generate_state(4, uint64): eight uint32 words, paired little-endian
function generateState(pool) {
  let hashConst = INIT_B;
  const words = [];
  for (let i = 0; i < 8; i++) {
    let v = (pool[i % POOL_SIZE] ^ hashConst) >>> 0;
    hashConst = mul32(hashConst, MULT_B);
    v = mul32(v, hashConst);
    words.push((v ^ (v >>> 16)) >>> 0);
  }
  const u64 = [];
  for (let i = 0; i < 8; i += 2) u64.push((BigInt(words[i + 1]) << 32n) | BigInt(words[i]));
  return u64;
}

export class Generator {
  /** numpy.random.default_rng(seed) for an integer seed >= 0 (PCG64 seeded by SeedSequence). */
  constructor(seed) {
    const [s0, s1, i0, i1] = generateState(seedPool(seed));
    this.inc = ((((i0 << 64n) | i1) << 1n) | 1n) & M128;
    this.state = 0n;
    this.step();
    this.state = (this.state + ((s0 << 64n) | s1)) & M128;
    this.step();
  }

  step() {
    this.state = (this.state * PCG_MULT + this.inc) & M128;
  }

  next64() {
    this.step();
    const s = this.state, rot = Number(s >> 122n);
    const x = ((s >> 64n) ^ s) & M64;
    return ((x >> BigInt(rot)) | (x << BigInt((64 - rot) & 63))) & M64;
  }

  /** Generator.random(count): float64 uniforms in [0, 1), in numpy's order (row-major). */
  random(count) {
    const out = new Float64Array(count);
    for (let i = 0; i < count; i++) out[i] = Number(this.next64() >> 11n) / 9007199254740992;
    return out;
  }
}
