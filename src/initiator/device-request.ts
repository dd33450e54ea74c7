/**
 * One VQ request as the device user submitted it. It outlives the queue connection it was sent
 * on: when that connection fails before a completion arrives, the same object is sent again on
 * the reconnected queue (its buffers are the caller's, untouched until a completion is taken).
 */
export class DeviceRequest {
  /** How many times it was sent again after a reconnect. */
  resubmissions = 0;
  /** Settles (never rejects) once the request has completed or failed for good. */
  readonly done: Promise<void>;
  private settle!: () => void;

  constructor(
    readonly vqIndex: number,
    readonly out: readonly Buffer[],
    readonly inBuffers: readonly Buffer[],
    /**
     * A flush: makes durable what completed before it. Sent again after a reconnect only once
     * every re-submitted non-flush request has completed, so that its completion still means
     * "everything acknowledged is durable".
     */
    readonly isFlush: boolean,
  ) {
    this.done = new Promise((resolve) => (this.settle = resolve));
  }

  finish(): void {
    this.settle();
  }
}
