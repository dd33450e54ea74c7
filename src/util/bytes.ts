/** Ranges up to this many bytes are copied by copyBytes word by word rather than by Buffer.copy. */
const SMALL_COPY = 256;

/**
 * Copies src[from, from + n) to dst at `at` (both ranges in bounds). Buffer.copy makes a view
 * of its source whenever the range does not cover the whole source (Node 20's _copyActual), a
 * heap object per call: the data path's small records (commands, completions, descriptors,
 * virtio-blk headers) are copied four bytes at a time instead, allocating nothing.
 */
export function copyBytes(src: Buffer, from: number, n: number, dst: Buffer, at: number): void {
  if (n > SMALL_COPY) {
    src.copy(dst, at, from, from + n);
    return;
  }
  let i = 0;
  for (; i + 4 <= n; i += 4) dst.writeUInt32LE(src.readUInt32LE(from + i), at + i);
  for (; i < n; i++) dst[at + i] = src[from + i]!;
}
