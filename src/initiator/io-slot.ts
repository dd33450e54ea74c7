import { Opcode } from '../protocol/constants.js';
import { InitiatorRequest } from './initiator-request.js';
import { VQ_COMPLETION } from '../protocol/completion.js';
import { getLE16, getLE32 } from '../protocol/fields.js';
import { COMPLETION_HEADER } from '../protocol/header.js';

/** How a device request ends: an error, or the number of bytes the device wrote. */
export type RequestCallback = (err: Error | null, written: number) => void;

/** What a device request reports to the device that owns it (RemoteDevice implements it). */
export interface RequestOwner {
  /** Its completion arrived on the queue: `status` and the bytes the device wrote. */
  requestCompleted(req: IoSlot, status: number, written: number): void;
  /** Its queue failed it (no completion will come there). */
  requestFailed(req: IoSlot, err: Error): void;
}

/**
 * Where an I/O slot is: `free` in its device's pool; `submitted` (held for a reconnect or a
 * drain, waiting for a queue slot, or in flight under a command id: InitiatorRequest.state says
 * which); then free again once its caller has been told.
 */
export type IoSlotPhase = 'free' | 'submitted';

/**
 * One VQ request as the device user submitted it, on a reusable I/O slot of its device (as
 * the target's TargetRequest): the queue request that occupies a command slot of its
 * virtqueue while in flight. A device makes a slot only when all of its slots are busy, so in
 * steady state a request allocates nothing: its buffers are the caller's, its command header
 * is its command id's on the queue, its outcome goes to the device's callbacks (bound once per
 * slot), and the caller's Promise, if it asked for one, is the only object made per I/O.
 *
 * It outlives the queue connection it was sent on: when that connection fails before a
 * completion arrives, the same slot is submitted again on the reconnected queue, under
 * whatever command id is free there (its buffers are the caller's, untouched until a
 * completion is taken).
 */
export class IoSlot extends InitiatorRequest {
  phase: IoSlotPhase = 'free';
  vqIndex = 0;
  /**
   * A flush: makes durable what completed before it. Sent again after a reconnect only once
   * every re-submitted non-flush request has completed, so that its completion still means
   * "everything acknowledged is durable".
   */
  isFlush = false;
  /** How many times it was sent again after a reconnect. */
  resubmissions = 0;
  /** The device connection generation it was last sent on (a failure from an older one is stale). */
  generation = 0;
  /** Sent on the current connection and not completed (a drain waits for these). */
  active = false;
  /** Who hears of the outcome: the caller's callback, or the slot's own promise settler. */
  callback: RequestCallback | null = null;
  /** The caller's Promise (request()): settled by `settle`, made by `executor`. */
  private resolve: ((written: number) => void) | null = null;
  private reject: ((err: Error) => void) | null = null;
  /** Bound once per slot: `new Promise(executor)` makes nothing else. */
  readonly executor: (resolve: (written: number) => void, reject: (err: Error) => void) => void;
  readonly settle: RequestCallback;
  /** Waiters for its end (a drain, a flush after resubmissions): made on demand. */
  private doneWait: { promise: Promise<void>; resolve: () => void } | null = null;

  constructor(private readonly owner: RequestOwner) {
    super(Opcode.Vq, null, undefined, NONE, NONE);
    this.executor = (resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    };
    this.settle = (err, written) => {
      const resolve = this.resolve;
      const reject = this.reject;
      this.resolve = null;
      this.reject = null;
      if (err) reject?.(err);
      else resolve?.(written);
    };
  }

  /** Take the slot for one request (it must be free). */
  start(vqIndex: number, out: readonly Buffer[], inBuffers: readonly Buffer[], isFlush: boolean, callback: RequestCallback): void {
    if (this.phase !== 'free') throw new Error(`I/O slot is ${this.phase}, not free`);
    this.phase = 'submitted';
    this.vqIndex = vqIndex;
    this.setBuffers(out, inBuffers);
    this.isFlush = isFlush;
    this.resubmissions = 0;
    this.active = false;
    this.callback = callback;
    this.state = 'idle';
  }

  /** The caller has been told: the slot may serve the next request. Returns its callback. */
  release(): RequestCallback | null {
    const callback = this.callback;
    this.phase = 'free';
    this.callback = null;
    this.active = false;
    // Nothing of the caller's outlives the request on the slot.
    this.setBuffers(NONE, NONE);
    const wait = this.doneWait;
    this.doneWait = null;
    wait?.resolve();
    return callback;
  }

  /** Settles (never rejects) once the request has completed or failed for good. */
  get done(): Promise<void> {
    if (this.phase === 'free') return Promise.resolve();
    if (this.doneWait === null) {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => (resolve = r));
      this.doneWait = { promise, resolve };
    }
    return this.doneWait.promise;
  }

  protected override completed(completion: Buffer): void {
    this.active = false;
    this.owner.requestCompleted(this, getLE16(completion, COMPLETION_HEADER.status), getLE32(completion, VQ_COMPLETION.length));
  }

  protected override failed(err: Error): void {
    this.active = false;
    this.owner.requestFailed(this, err);
  }
}

const NONE: readonly Buffer[] = [];
