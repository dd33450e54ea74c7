import { Status } from '../protocol/constants.js';
import { encodeBareCompletion } from '../protocol/completion.js';
import type { VqRequestData } from '../transport/transport.js';

/** Where a request's completion goes: its queue's connection, while the queue is open. */
export interface CompletionSink {
  /**
   * The request's completion is about to leave: from now on the peer may reuse its command id
   * (the request may still hold buffers until its data has been sent and it finishes).
   */
  vacate(request: TargetRequest): void;
  /** `refusal`: whether a non-SUCCESS status counts as a refused command (admin counters). */
  send(completion: Buffer, refusal?: boolean, payload?: Buffer): void;
  /** A VQ completion with the first `written` bytes of `data`'s writable buffer. */
  sendVq(data: VqRequestData, completion: Buffer, written: number): Promise<void>;
}

/**
 * One command in flight on a target queue, from its arrival to its completion. Owned by its
 * QueueSession, which holds exactly one per command id in flight; completing is an operation
 * on the request, and a request completes at most once. A VQ command's request owns the
 * transport's part of it (its VqRequestData: buffers, descriptors) and releases it when the
 * request leaves its queue, so nothing else keyed by command id needs to exist.
 *
 * Cancellation (reset, abrupt close, instance teardown) aborts `signal`: device work checks it
 * between steps, and a cancelled request never completes SUCCESS (virtio 1.x 2.4.1: once a
 * reset completes, the device does not touch the queues any more).
 */
export class TargetRequest {
  private readonly abort = new AbortController();
  private completed = false;
  private markFinished: () => void = () => {};
  private readonly finished = new Promise<void>((resolve) => (this.markFinished = resolve));

  constructor(
    readonly commandId: number,
    readonly opcode: number,
    private readonly sink: CompletionSink,
    /** VQ commands: the transport's buffers of this command. */
    readonly data: VqRequestData | null = null,
  ) {}

  get signal(): AbortSignal {
    return this.abort.signal;
  }

  get cancelled(): boolean {
    return this.abort.signal.aborted;
  }

  /** Ask the request to stop; resolves once it has left its queue. */
  cancel(reason: string): Promise<void> {
    if (!this.abort.signal.aborted) this.abort.abort(new Error(reason));
    return this.finished;
  }

  /**
   * Send this request's completion (once). A cancelled request gets ESTATUS instead of SUCCESS.
   * `refusal` false: a non-SUCCESS status that is an answer, not a refused command.
   */
  complete(completion: Buffer, refusal = true, payload?: Buffer): void {
    if (this.completed) return;
    this.completed = true;
    this.sink.vacate(this);
    this.sink.send(this.cancelled && completion.readUInt16LE(0) === Status.SUCCESS ? encodeBareCompletion(Status.ESTATUS, this.commandId) : completion, refusal, payload);
  }

  /**
   * Deliver the `written` bytes the device put in the writable buffer, then the VQ completion.
   * A cancelled request writes nothing and completes with ESTATUS.
   */
  async completeVq(completion: Buffer, written: number): Promise<void> {
    if (this.completed) return;
    if (this.cancelled) return this.complete(completion);
    // Not a VQ command's request: there are no buffers to deliver from.
    if (!this.data) return this.complete(encodeBareCompletion(Status.ESTATUS, this.commandId));
    this.completed = true;
    this.sink.vacate(this);
    await this.sink.sendVq(this.data, completion, written);
  }

  /**
   * The transport could not write the device-writable buffers after all: answer with `status`
   * instead (only possible while completeVq has not sent anything).
   */
  failVq(status: number): void {
    this.sink.send(encodeBareCompletion(status, this.commandId));
  }

  /** The request has left its queue (completed, or its connection is gone). */
  finish(): void {
    this.completed = true;
    this.data?.release();
    this.markFinished();
  }

  whenFinished(): Promise<void> {
    return this.finished;
  }
}
