// A small seedable PRNG (splitmix32): the fuzzer's every choice comes from it, so a seed and an
// iteration number reproduce the same inputs (timing on the wire aside).

export class Prng {
  /** @param {number} seed */
  constructor(seed) {
    this.state = seed >>> 0;
  }
  /** Next 32-bit unsigned integer. */
  u32() {
    let z = (this.state = (this.state + 0x9e3779b9) >>> 0);
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  }
  /** Integer in [0, n). */
  below(n) {
    return n <= 1 ? 0 : this.u32() % n;
  }
  /** True with probability p. */
  chance(p) {
    return this.u32() / 0x100000000 < p;
  }
  /** @template T @param {readonly T[]} list @returns {T} */
  pick(list) {
    return list[this.below(list.length)];
  }
  bytes(n) {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }
}

/** The seed of iteration i of a run: iterations can be replayed one at a time. */
export function iterationSeed(runSeed, i) {
  return (Math.imul(runSeed ^ 0x5bd1e995, 0x01000193) + Math.imul(i + 1, 0x9e3779b1)) >>> 0;
}
