import { Opcode } from '../protocol/constants.js';
import { QueueRequest } from './queue-request.js';

/**
 * One VQ request as the device user submitted it: the queue request that occupies a slot of
 * its virtqueue while in flight. It outlives the queue connection it was sent on: when that
 * connection fails before a completion arrives, the same object is submitted again on the
 * reconnected queue, under whatever slot is free there (its buffers are the caller's,
 * untouched until a completion is taken).
 */
export class DeviceRequest extends QueueRequest {
  /** How many times it was sent again after a reconnect. */
  resubmissions = 0;
  /** Settles (never rejects) once the request has completed or failed for good. */
  readonly done: Promise<void>;
  private markDone!: () => void;

  constructor(
    readonly vqIndex: number,
    out: readonly Buffer[],
    inBuffers: readonly Buffer[],
    /**
     * A flush: makes durable what completed before it. Sent again after a reconnect only once
     * every re-submitted non-flush request has completed, so that its completion still means
     * "everything acknowledged is durable".
     */
    readonly isFlush: boolean,
  ) {
    super(Opcode.Vq, null, undefined, out, inBuffers);
    this.done = new Promise((resolve) => (this.markDone = resolve));
  }

  finish(): void {
    this.markDone();
  }
}
