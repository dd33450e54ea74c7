import { decodeCompletion, type DecodedCompletion } from '../protocol/completion.js';
import type { CommandWithoutId } from './initiator-queue.js';

/**
 * Where a request is: `idle` (not submitted, or between a failed connection and its
 * resubmission), `waiting` for a free slot, `in-flight` in a slot under its command id,
 * `completed` or `failed`.
 */
export type InitiatorRequestState = 'idle' | 'waiting' | 'in-flight' | 'completed' | 'failed';

/**
 * One command on an initiator queue. While in flight it sits in its queue's array of
 * queue-size slots, and the slot index is its command id: everything the queue needs to take
 * its completion (the device-writable buffers, the answer deadline, what to do with the
 * answer) is here, and completing or failing it is an operation on it. No other table keyed
 * by command id exists on the initiator's core; transports index their own per-command state
 * by the same id, which is always below the queue size, and the queue keeps each id's encoded
 * command header with the slot.
 *
 * What happens on completion is the subclass's: this one settles a promise (control and admin
 * commands, see begin()); an IoSlot is a reusable I/O slot that calls back its device
 * and allocates nothing per command.
 */
export class InitiatorRequest {
  /** The slot it occupies while in flight; -1 otherwise. */
  commandId = -1;
  state: InitiatorRequestState = 'idle';
  /** The redirect record that followed an EREDIRECT Connect completion. */
  payload: Buffer | null = null;
  /** Device-readable bytes (VQ commands). */
  outLength = 0;
  /** Device-writable bytes (VQ commands). */
  inLength = 0;
  /** An answer deadline armed by the queue (see InitiatorQueue.submit); cleared on completion. */
  timer: NodeJS.Timeout | null = null;
  private promised: { resolve: (c: DecodedCompletion) => void; reject: (e: Error) => void } | null = null;

  constructor(
    readonly opcode: number,
    /** A non-VQ command as encoded once its id is known; null for a VQ command. */
    readonly command: CommandWithoutId | null,
    /** Connect only: the Connect Body. */
    readonly body: Buffer | undefined,
    /** VQ commands: device-readable buffers. */
    public out: readonly Buffer[],
    /** VQ commands: device-writable buffers; null for every other command. */
    public inBuffers: readonly Buffer[] | null,
    /** A Connect whose body announced VOF_CONNECT_F_REDIRECT: EREDIRECT brings a record. */
    readonly redirectable = false,
  ) {
    this.setBuffers(out, inBuffers);
  }

  /** Give the (VQ) request its buffers for its next submission. */
  protected setBuffers(out: readonly Buffer[], inBuffers: readonly Buffer[] | null): void {
    this.out = out;
    this.inBuffers = inBuffers;
    let o = 0;
    for (let k = 0; k < out.length; k++) o += out[k]!.length;
    let i = 0;
    if (inBuffers) for (let k = 0; k < inBuffers.length; k++) i += inBuffers[k]!.length;
    this.outLength = o;
    this.inLength = i;
  }

  /** Arm the request for one submission; the promise settles with its completion or failure. */
  begin(): Promise<DecodedCompletion> {
    this.arm();
    return new Promise((resolve, reject) => (this.promised = { resolve, reject }));
  }

  /** Arm the request for one submission with no promise (the subclass takes the outcome). */
  arm(): void {
    this.payload = null;
    this.state = 'waiting';
  }

  /**
   * Its completion arrived (already checked to belong to it). `completion` is the transport's
   * and valid only during the call.
   */
  complete(completion: Buffer): void {
    this.end('completed');
    this.completed(completion);
  }

  /** It will get no completion on this queue. */
  fail(err: Error): void {
    this.end('failed');
    this.failed(err);
  }

  /** What a completion does: settle the promise of begin() with the decoded completion. */
  protected completed(completion: Buffer): void {
    const s = this.promised;
    this.promised = null;
    s?.resolve(decodeCompletion(completion, this.opcode));
  }

  protected failed(err: Error): void {
    const s = this.promised;
    this.promised = null;
    s?.reject(err);
  }

  private end(state: InitiatorRequestState): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.commandId = -1;
    this.state = state;
  }
}
