/** Ranges up to this many bytes are copied by copyBytes word by word rather than by Buffer.copy. */
const SMALL_COPY = 256;

/**
 * Copies src[from, from + n) to dst at `at` (both ranges in bounds). Buffer.copy makes a view
 * of its source whenever the range does not cover the whole source (Node 20's _copyActual), a
 * heap object per call: the data path's small records (commands, completions, descriptors,
 * virtio-blk headers) are copied byte by byte instead, allocating nothing (a byte is always a
 * small integer; a 32-bit word read may be boxed as a heap number where V8 does not inline it).
 */
export function copyBytes(src: Buffer, from: number, n: number, dst: Buffer, at: number): void {
  if (n > SMALL_COPY) {
    src.copy(dst, at, from, from + n);
    return;
  }
  for (let i = 0; i < n; i++) dst[at + i] = src[from + i]!;
}
