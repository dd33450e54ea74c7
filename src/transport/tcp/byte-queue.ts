/**
 * Bytes received from a stream, consumed in PDU-sized pieces. Keeps the received chunks as
 * they are and copies only when a piece spans chunks, so a PDU split across reads and many
 * PDUs in one read cost no more than one copy each.
 */
/** Pieces up to this size are copied without Buffer#copy (see takeInto). */
const SMALL_COPY = 64;

export class ByteQueue {
  private chunks: Buffer[] = [];
  private head = 0; // consumed bytes of chunks[0]
  private total = 0;

  get length(): number {
    return this.total;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.total += chunk.length;
  }

  /** Remove and return the next n bytes (n ≤ length). A view when it lies in one chunk. */
  take(n: number): Buffer {
    if (n > this.total) throw new RangeError('take past end of queue');
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0]!;
    if (first.length - this.head >= n) {
      const out = first.subarray(this.head, this.head + n);
      this.advance(n);
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    this.takeInto(n, out, 0);
    return out;
  }

  /** Whether the next n bytes (n ≤ length) lie in one received chunk (take(n) is then a view). */
  contiguous(n: number): boolean {
    return n === 0 || (this.chunks.length > 0 && this.chunks[0]!.length - this.head >= n);
  }

  /**
   * Remove the next n bytes (n ≤ length) by copying them into target at offset: for bytes that
   * already have a home, no intermediate buffer whatever the chunks' boundaries.
   */
  takeInto(n: number, target: Buffer, offset: number): void {
    if (n > this.total) throw new RangeError('take past end of queue');
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[0]!;
      const len = Math.min(c.length - this.head, n - filled);
      if (len <= SMALL_COPY) {
        // Byte by byte: Buffer#copy of part of a buffer makes a view of it, which for a
        // 16-byte header per command is the allocation this copy exists to avoid.
        for (let i = 0; i < len; i++) target[offset + filled + i] = c[this.head + i]!;
      } else c.copy(target, offset + filled, this.head, this.head + len);
      filled += len;
      this.advance(len);
    }
  }

  /** Drop up to n bytes without copying them; returns how many were dropped. */
  skip(n: number): number {
    const k = Math.min(n, this.total);
    let left = k;
    while (left > 0) {
      const c = this.chunks[0]!;
      const len = Math.min(c.length - this.head, left);
      this.advance(len);
      left -= len;
    }
    return k;
  }

  private advance(n: number): void {
    this.head += n;
    this.total -= n;
    if (this.head === this.chunks[0]!.length) {
      this.chunks.shift();
      this.head = 0;
    }
  }
}
