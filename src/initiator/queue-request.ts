import { decodeCompletion, type DecodedCompletion } from '../protocol/completion.js';
import type { CommandWithoutId } from './queue-client.js';

/**
 * Where a request is: `idle` (not submitted, or between a failed connection and its
 * resubmission), `waiting` for a free slot, `in-flight` in a slot under its command id,
 * `completed` or `failed`.
 */
export type QueueRequestState = 'idle' | 'waiting' | 'in-flight' | 'completed' | 'failed';

/**
 * One command on an initiator queue. While in flight it sits in its queue's array of
 * queue-size slots, and the slot index is its command id: everything the queue needs to take
 * its completion (the device-writable buffers, the promise to settle, the answer deadline)
 * is here, and completing or failing it is an operation on it. No other table keyed by
 * command id exists on the initiator's core; transports index their own per-command state by
 * the same id, which is always below the queue size.
 */
export class QueueRequest {
  /** The slot it occupies while in flight; -1 otherwise. */
  commandId = -1;
  state: QueueRequestState = 'idle';
  /** The redirect record that followed an EREDIRECT Connect completion. */
  payload: Buffer | null = null;
  /** Device-readable bytes (VQ commands). */
  readonly outLength: number;
  /** Device-writable bytes (VQ commands). */
  readonly inLength: number;
  /** An answer deadline armed by the queue (see QueueClient.submit); cleared on completion. */
  timer: NodeJS.Timeout | null = null;
  private settle: { resolve: (c: DecodedCompletion) => void; reject: (e: Error) => void } | null = null;

  constructor(
    readonly opcode: number,
    /** A non-VQ command as encoded once its id is known; null for a VQ command. */
    readonly command: CommandWithoutId | null,
    /** Connect only: the Connect Body. */
    readonly body: Buffer | undefined,
    /** VQ commands: device-readable buffers. */
    readonly out: readonly Buffer[],
    /** VQ commands: device-writable buffers; null for every other command. */
    readonly inBuffers: readonly Buffer[] | null,
    /** A Connect whose body announced VOF_CONNECT_F_REDIRECT: EREDIRECT brings a record. */
    readonly redirectable = false,
  ) {
    let o = 0;
    for (const b of out) o += b.length;
    let i = 0;
    for (const b of inBuffers ?? []) i += b.length;
    this.outLength = o;
    this.inLength = i;
  }

  /** Arm the request for one submission; the promise settles with its completion or failure. */
  begin(): Promise<DecodedCompletion> {
    this.payload = null;
    this.state = 'waiting';
    return new Promise((resolve, reject) => (this.settle = { resolve, reject }));
  }

  /** Its completion arrived (already checked to belong to it). */
  complete(completion: Buffer): void {
    this.end('completed');
    const s = this.settle;
    this.settle = null;
    s?.resolve(decodeCompletion(completion, this.opcode));
  }

  /** It will get no completion on this queue. */
  fail(err: Error): void {
    this.end('failed');
    const s = this.settle;
    this.settle = null;
    s?.reject(err);
  }

  private end(state: QueueRequestState): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.commandId = -1;
    this.state = state;
  }
}
