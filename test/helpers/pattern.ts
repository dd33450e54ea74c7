/**
 * `length` deterministic pseudo-random bytes for `seed` (a linear congruential generator's high
 * bytes): data that differs per block and per seed, so a misplaced or stale block shows.
 */
export function pattern(length: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(length);
  let x = seed | 1;
  for (let i = 0; i < length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}
