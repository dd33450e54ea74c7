import type { ByteQueue } from './byte-queue.js';

/**
 * One stream VQ completion's payload on its way into the initiator's device-writable buffers.
 * Bytes are copied from the received chunks straight into those buffers as they arrive, so a
 * payload that spans many reads is neither gathered into a buffer of its own nor copied twice.
 */
export class PayloadScatter {
  private index = 0; // buffer being filled
  private offset = 0; // bytes of it already filled

  constructor(
    private readonly into: readonly Buffer[],
    /** Payload bytes still to come; at most the buffers' total length (the queue checked). */
    private left: number,
  ) {}

  /** Move what the queue holds of the payload into the buffers; true once all of it is there. */
  fill(queue: ByteQueue): boolean {
    while (this.left > 0 && queue.length > 0) {
      const target = this.into[this.index];
      if (target === undefined) throw new RangeError('VQ payload longer than its device-writable buffers');
      const room = target.length - this.offset;
      if (room === 0) {
        this.index++;
        this.offset = 0;
        continue;
      }
      const n = Math.min(room, this.left, queue.length);
      queue.takeInto(n, target, this.offset);
      this.offset += n;
      this.left -= n;
    }
    return this.left === 0;
  }
}
