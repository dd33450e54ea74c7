import { Status } from '../protocol/constants.js';
import { COMPLETION_SIZE } from '../protocol/constants.js';
import { encodeBareCompletion } from '../protocol/completion.js';
import type { VqBufferSink, VqRequestData, VqTransferError } from '../transport/transport.js';
import type { DeviceRequest } from './device.js';
import type { DeviceInstance } from './device-instance.js';
import { getLE16 } from '../protocol/fields.js';
import { COMPLETION_HEADER } from '../protocol/header.js';

/** Where a request's completion goes: its queue's connection, while the queue is open. */
export interface CompletionSink {
  /**
   * The request's completion is about to leave: from now on the peer may reuse its command id
   * (the request may still hold buffers until its data has been sent and it finishes).
   */
  vacate(request: TargetRequest): void;
  /** `refusal`: whether a non-SUCCESS status counts as a refused command (admin counters). */
  send(completion: Buffer, refusal?: boolean, payload?: Buffer): void;
  /**
   * A VQ completion with the first `written` bytes of the request's writable buffer; the sink
   * calls `request.onSent` once it has left (or could not be sent).
   */
  sendVq(request: TargetRequest, completion: Buffer, written: number): void;
  /** The request has left its queue: its slot may serve the next command. */
  finished(request: TargetRequest): void;
}

/**
 * The steps of a VQ command that its slot's callbacks lead to (the queue's VqExecution implements them, vq-execution.ts):
 * bound once per slot, so that moving a command on allocates no closure.
 */
export interface RequestSteps {
  /** A dispatch threw or rejected: a bug, logged; the slot is released after. */
  dispatchFailed(request: TargetRequest, err: unknown): void;
  /**
   * The transport fetched the command's buffers (RDMA READ, pool memory): run it. True when
   * the command goes on (the device or the completion ends it), false when it was answered at once.
   */
  fetched(request: TargetRequest, readable: Buffer, writable: Buffer): boolean;
  /** The buffers could not be had: answer the command with the side's status. */
  fetchFailed(request: TargetRequest, err: VqTransferError): void;
  /**
   * The device finished the command: `written` bytes of its writable buffer. True when the
   * completion is on its way (onSent ends the command), false when it was answered at once.
   */
  executed(request: TargetRequest, written: number): boolean;
  /** The device threw: a device fault. */
  executeFailed(request: TargetRequest, err: unknown): void;
  /** The transport has sent the completion (and the bytes the device wrote). */
  completed(request: TargetRequest): void;
  /** The transport could not send the device-writable bytes after all. */
  completeFailed(request: TargetRequest, err: unknown): void;
}

/**
 * Where a request slot is in its life:
 * - free: in its queue's pool, serving no command;
 * - running: a command occupies it (its id is in flight; the device may be working on it);
 * - completed: its completion has been handed to the transport (the id is free again), but
 *   its buffers may still be leaving;
 * then free again once the command's work has ended (finish()).
 */
export type RequestState = 'free' | 'running' | 'completed';

/**
 * One command slot of a target queue, from a command's arrival to its completion, reused for
 * the queue's next commands (nvmet's per-queue response slots, SPDK's request objects): a
 * queue creates a slot only when all of its slots are busy, so in steady state no request
 * object, abort controller or promise is created per command. Completing is an operation on
 * the slot, and a command completes at most once. A VQ command's slot owns the transport's part
 * of it (its VqRequestData: buffers, descriptors) and releases it when the command leaves.
 *
 * Cancellation (reset, abrupt close, instance teardown) is a flag the device checks between
 * steps (the slot is the device's RequestCancel); a cancelled command never completes SUCCESS
 * (virtio 1.x 2.4.1: once a reset completes, the device does not touch the queues any more).
 */
export class TargetRequest implements DeviceRequest, VqBufferSink {
  commandId = 0;
  opcode = 0;
  /** VQ commands: the transport's buffers of this command. */
  data: VqRequestData | null = null;
  /** Budget bytes the queue reserved for this command's payload, given back when it finishes. */
  reserved = 0;
  /** Counted among its queue's commands in flight (InFlight): from start until vacated. */
  listed = false;
  private stateValue: RequestState = 'free';
  private cancelledFlag = false;
  private cancelReason = '';
  /** Only for a device that waits on cancellation (whenAborted): made on demand. */
  private abortWait: { promise: Promise<void>; resolve: () => void } | null = null;

  // A VQ command's core state, kept on the slot while the command runs.
  /** The instance and virtqueue the command runs on. */
  instance: DeviceInstance | null = null;
  vqIndex = 0;
  /** The buffers the device was given (device-readable, device-writable). */
  readable: Buffer | null = null;
  writable: Buffer | null = null;
  /** Bytes the device wrote, once it has finished. */
  written = 0;
  /**
   * The device holds the command (from submitRequest until its deviceDone or deviceFailed):
   * a second report, or one for a command the slot no longer serves, is ignored.
   */
  executing = false;
  /** The slot's VQ completion, encoded in place for each command (it stays valid until the slot is free). */
  readonly completion = Buffer.alloc(COMPLETION_SIZE);

  /**
   * Bound once per slot, not per command: the callbacks that move a command to its next state
   * when a promise of the device or the transport settles. From the device's answer on, a VQ
   * command's slot ends itself (finish()) in these: no promise of the core's chains onto the
   * device's, and none is made for sending the completion.
   */
  readonly onDispatched: () => void;
  readonly onDispatchFailed: (err: unknown) => void;
  readonly onExecuted: (written: number) => void;
  readonly onExecuteFailed: (err: unknown) => void;
  /** The transport has sent this command's VQ completion (null), or could not (the error). */
  readonly onSent: (err: unknown) => void;

  constructor(
    private readonly sink: CompletionSink,
    private readonly steps: RequestSteps,
  ) {
    this.onDispatched = () => this.finish();
    this.onDispatchFailed = (err) => {
      steps.dispatchFailed(this, err);
      this.finish();
    };
    this.onExecuted = (written) => this.deviceDone(written);
    this.onExecuteFailed = (err) => this.deviceFailed(err);
    this.onSent = (err) => {
      try {
        if (err) steps.completeFailed(this, err);
        else steps.completed(this);
      } catch (e) {
        steps.dispatchFailed(this, e);
      }
      this.finish();
    };
  }

  // DeviceRequest: the device's report moves the command on (a step that throws is a bug,
  // handled as a dispatch that threw: logged, slot released).
  deviceDone(written: number): void {
    if (!this.executing) return;
    this.executing = false;
    let sending = false;
    try {
      sending = this.steps.executed(this, written);
    } catch (err) {
      this.steps.dispatchFailed(this, err);
    }
    if (!sending) this.finish();
  }

  // VqBufferSink: the transport's answer to fetch() (the slot is running until it comes).
  buffersReady(readable: Buffer, writable: Buffer): void {
    if (this.stateValue !== 'running') return;
    let going = false;
    try {
      going = this.steps.fetched(this, readable, writable);
    } catch (err) {
      this.steps.dispatchFailed(this, err);
    }
    if (!going) this.finish();
  }

  buffersFailed(err: VqTransferError): void {
    if (this.stateValue !== 'running') return;
    try {
      this.steps.fetchFailed(this, err);
    } catch (e) {
      this.steps.dispatchFailed(this, e);
    }
    this.finish();
  }

  deviceFailed(err: unknown): void {
    if (!this.executing) return;
    this.executing = false;
    try {
      this.steps.executeFailed(this, err);
    } catch (e) {
      this.steps.dispatchFailed(this, e);
    }
    this.finish();
  }

  /** Take the slot for a command (it must be free). */
  start(commandId: number, opcode: number, data: VqRequestData | null, reserved: number): void {
    if (this.stateValue !== 'free') throw new Error(`request slot for command ${commandId} is ${this.stateValue}, not free`);
    this.stateValue = 'running';
    this.commandId = commandId;
    this.opcode = opcode;
    this.data = data;
    this.reserved = reserved;
    this.cancelledFlag = false;
    this.cancelReason = '';
    this.abortWait = null;
    this.instance = null;
    this.vqIndex = 0;
    this.readable = null;
    this.writable = null;
    this.written = 0;
    this.executing = false;
  }

  get state(): RequestState {
    return this.stateValue;
  }

  get cancelled(): boolean {
    return this.cancelledFlag;
  }

  // RequestCancel, as the device sees the command.
  get aborted(): boolean {
    return this.cancelledFlag;
  }

  throwIfAborted(): void {
    if (this.cancelledFlag) throw new Error(`request cancelled: ${this.cancelReason}`);
  }

  whenAborted(): Promise<void> {
    if (this.cancelledFlag) return Promise.resolve();
    if (this.abortWait === null) {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => (resolve = r));
      this.abortWait = { promise, resolve };
    }
    return this.abortWait.promise;
  }

  /** Ask the command to stop; its queue tells when it has left (whenIdle). */
  cancel(reason: string): void {
    if (this.stateValue === 'free' || this.cancelledFlag) return;
    this.cancelledFlag = true;
    this.cancelReason = reason;
    this.abortWait?.resolve();
  }

  /**
   * Send this command's completion (once). A cancelled command gets ESTATUS instead of SUCCESS.
   * `refusal` false: a non-SUCCESS status that is an answer, not a refused command.
   */
  complete(completion: Buffer, refusal = true, payload?: Buffer): void {
    if (this.stateValue !== 'running') return;
    this.stateValue = 'completed';
    this.sink.vacate(this);
    this.sink.send(this.cancelledFlag && getLE16(completion, COMPLETION_HEADER.status) === Status.SUCCESS ? encodeBareCompletion(Status.ESTATUS, this.commandId) : completion, refusal, payload);
  }

  /**
   * Deliver the `written` bytes the device put in the writable buffer, then the VQ completion.
   * A cancelled command writes nothing and completes with ESTATUS. True when the completion
   * is on its way (onSent follows, and ends the command); false when it was answered at once
   * or was not this slot's to answer any more.
   */
  completeVq(completion: Buffer, written: number): boolean {
    if (this.stateValue !== 'running') return false;
    if (this.cancelledFlag) {
      this.complete(completion);
      return false;
    }
    // Not a VQ command: there are no buffers to deliver from.
    if (!this.data) {
      this.complete(encodeBareCompletion(Status.ESTATUS, this.commandId));
      return false;
    }
    this.stateValue = 'completed';
    this.sink.vacate(this);
    this.sink.sendVq(this, completion, written);
    return true;
  }

  /**
   * The transport could not write the device-writable buffers after all: answer with `status`
   * instead (only possible while completeVq has not sent anything).
   */
  failVq(status: number): void {
    this.sink.send(encodeBareCompletion(status, this.commandId));
  }

  /** The command has left its queue (completed, or its connection is gone): the slot is free. */
  finish(): void {
    if (this.stateValue === 'free') return;
    const data = this.data;
    this.stateValue = 'free';
    this.executing = false;
    this.data = null;
    // Nothing of the command outlives it on the slot (the buffers may be pooled elsewhere).
    this.instance = null;
    this.readable = null;
    this.writable = null;
    data?.release();
    this.sink.finished(this);
  }
}
