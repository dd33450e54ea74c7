import { Status, opcodeName, statusName } from '../protocol/constants.js';
import { encodeVqCompletion } from '../protocol/completion.js';
import { VqTransferError } from '../transport/transport.js';
import type { DeviceInstance } from './device-instance.js';
import type { TargetQueue } from './target-queue.js';
import type { RequestSteps, TargetRequest } from './target-request.js';
import { VQ_COMMAND } from '../protocol/command.js';
import { getLE32 } from '../protocol/fields.js';

/**
 * What a dispatch returns for a VQ command whose slot ends itself (TargetRequest's bound
 * callbacks call finish()): the caller neither finishes it nor waits on a promise.
 */
export const FINISHES_ITSELF = 'finishes itself' as const;
export type Dispatched = Promise<void> | void | typeof FINISHES_ITSELF;

const EMPTY = Buffer.alloc(0);

/**
 * VQ execution: the state machine a VQ command's slot (TargetRequest) moves through on a bound
 * virtqueue, and the steps its callbacks lead to (RequestSteps). Made once per queue, so that
 * moving a command on allocates nothing: the slot calls these methods with itself as argument.
 *
 * A VQ command's life on its slot, each state left when its event arrives:
 *   buffers (readable, then writable) → executing (the device) → completing (the transport
 *   sends the completion and written bytes) → the slot is free (onSent: the slot ends itself).
 * A step whose input is at hand goes on at once: on stream transports a command reaches the
 * device in the turn it arrived, with no promise of the core's. Keyed transports fetch
 * (RDMA READ) or wait for pool memory first (VqRequestData.fetch). Cancellation is checked before
 * the device is called and makes the completion ESTATUS.
 */
export class VqExecution implements RequestSteps {
  constructor(private readonly queue: TargetQueue) {}

  /**
   * A VQ command on this virtqueue of `inst` (the target queue checked both), read from its header
   * in place: no decoded object per command.
   */
  run(req: TargetRequest, raw: Buffer, inst: DeviceInstance, vqIndex: number): Dispatched {
    const data = req.data;
    if (!data) return this.queue.refuse(req, Status.ENOCMD, 'VQ command without its buffers');
    const outLength = getLE32(raw, VQ_COMMAND.outLength);
    const inLength = getLE32(raw, VQ_COMMAND.inLength);
    const id = req.commandId;
    // Virtqueue traffic proves the initiator alive as much as a keepalive does.
    inst.heard();
    if (!inst.acceptsRequests) return req.complete(encodeVqCompletion(Status.ESTATUS, id, 0));
    const max = inst.maxRequestBytes(vqIndex);
    if (outLength > max || inLength > max) {
      this.queue.log.info(`${this.queue.connection.peer}: VQ command of ${outLength}+${inLength} bytes over the ${max}-byte limit`);
      return req.complete(encodeVqCompletion(outLength > max ? Status.EOUTVQBUF : Status.EINVQBUF, id, 0));
    }
    req.instance = inst;
    req.vqIndex = vqIndex;
    const readable = data.readOutNow();
    const writable = inLength === 0 ? EMPTY : data.writableNow();
    if (readable === undefined || writable === undefined) {
      // Keyed transports: the RDMA READ or pool memory first; the slot hears back (buffersReady
      // or buffersFailed, see RequestSteps.fetched) and from there ends itself.
      data.fetch(req);
      return FINISHES_ITSELF;
    }
    return this.execute(req, readable, writable);
  }

  // RequestSteps.

  /** A dispatch that threw (any command, control ones too): a bug, logged; the slot is then released. */
  dispatchFailed(req: TargetRequest, err: unknown): void {
    this.queue.log.error(`${this.queue.connection.peer}: ${opcodeName(req.opcode)} failed: ${(err as Error)?.stack ?? String(err)}`);
  }

  fetched(req: TargetRequest, readable: Buffer, writable: Buffer): boolean {
    return this.execute(req, readable, writable) === FINISHES_ITSELF;
  }

  /** The transport could not supply a VQ buffer (VqTransferError): EOUTVQBUF or EINVQBUF. */
  fetchFailed(req: TargetRequest, err: VqTransferError): void {
    const status = err.direction === 'out' ? Status.EOUTVQBUF : Status.EINVQBUF;
    this.queue.log.info(`${this.queue.connection.peer}: VQ command ${req.commandId}: ${err.message}: ${statusName(status)}`);
    req.complete(encodeVqCompletion(status, req.commandId, 0));
  }

  /**
   * Hand the buffers to the device; its report moves the slot on (deviceDone / deviceFailed,
   * which end it), possibly before submitRequest returns. Answered at once (void) when the
   * device is not called or throws.
   */
  private execute(req: TargetRequest, readable: Buffer, writable: Buffer): Dispatched {
    // Reset or teardown while the buffers were on their way: the device never sees them.
    if (req.cancelled) return req.complete(encodeVqCompletion(Status.ESTATUS, req.commandId, 0));
    req.readable = readable;
    req.writable = writable;
    req.executing = true;
    try {
      req.instance!.submitRequest(req.vqIndex, readable, writable, req);
    } catch (err) {
      // A device that threw after reporting the end has already moved the slot on (it may be
      // free again): a bug of the device's, logged, and nothing more done to the slot.
      if (!req.executing) {
        this.dispatchFailed(req, err);
        return FINISHES_ITSELF;
      }
      req.executing = false;
      return this.executeFailed(req, err);
    }
    return FINISHES_ITSELF;
  }

  /** True when the completion is on its way (the slot's onSent ends the command). */
  executed(req: TargetRequest, written: number): boolean {
    const writable = req.writable!;
    if (!Number.isSafeInteger(written) || written < 0 || written > writable.length) {
      this.deviceFault(req, `vq ${req.vqIndex}: device reports ${written} bytes written into ${writable.length} device-writable bytes`);
      return false;
    }
    req.written = written;
    // Into the slot's own completion buffer: it is not reused before the slot is free again.
    return req.completeVq(encodeVqCompletion(Status.SUCCESS, req.commandId, written, req.completion), written);
  }

  /** Errors the device can express (IOERR, UNSUPP) come in its own status; a throw is a fault. */
  executeFailed(req: TargetRequest, err: unknown): void {
    // A device that stops a cancelled command by throwing (throwIfAborted) did as asked.
    if (req.cancelled) return req.complete(encodeVqCompletion(Status.ESTATUS, req.commandId, 0));
    // Only a reset clears it: the instance is now DEVICE_NEEDS_RESET, the command ESTATUS.
    this.deviceFault(req, `vq ${req.vqIndex}: ${(err as Error)?.message ?? String(err)}`);
  }

  completed(req: TargetRequest): void {
    const stats = this.queue.stats;
    stats.bytesOut += req.readable!.length;
    stats.bytesIn += req.written;
  }

  completeFailed(req: TargetRequest, err: unknown): void {
    if (!(err instanceof VqTransferError)) throw err;
    this.queue.log.info(`${this.queue.connection.peer}: VQ command ${req.commandId}: ${err.message}: EINVQBUF`);
    req.failVq(Status.EINVQBUF);
  }

  /** A VQ command's device faulted: the instance needs a reset, the command is ESTATUS. */
  private deviceFault(req: TargetRequest, why: string): void {
    req.instance!.needsReset(why);
    req.complete(encodeVqCompletion(Status.ESTATUS, req.commandId, 0));
  }
}
