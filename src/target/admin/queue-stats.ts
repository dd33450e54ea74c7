/** Per-queue counters reported by the transport class's LIST_QUEUES (reset by the vendor class). */
export class QueueStats {
  commands = 0;
  /** Device-readable bytes received with VQ commands. */
  bytesOut = 0;
  /** Device-written bytes sent back. */
  bytesIn = 0;
  /** Commands answered with a non-SUCCESS Virtio-oF status, or failed by the device. */
  errors = 0;

  reset(): void {
    this.commands = this.bytesOut = this.bytesIn = this.errors = 0;
  }
}
