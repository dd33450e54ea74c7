import { COMMAND_SIZE, COMPLETION_SIZE, CONNECT_BODY_SIZE, KEYED_DESCRIPTOR_SIZE, Opcode } from '../../protocol/constants.js';
import { REDIRECT_RECORD_SIZE } from '../../protocol/redirect-record.js';
import { decodeKeyedDescriptors, validateKeyedDescriptors, type KeyedDescriptor } from '../../protocol/keyed-descriptor.js';
import type { Logger } from '../../util/log.js';
import { VqTransferError, type TargetConnection, type TargetConnectionHandler, type VqRequestData } from '../transport.js';
import type { CmEvent, CmId, NativeBinding, SendWr } from './native-binding.js';
import { WrOpcode } from './native-binding.js';
import { RcConnection } from './rc-connection.js';
import { formatRdmaPeer } from '../address.js';
import { RdmaWorkError, WC_WR_FLUSH_ERR } from './send-queue.js';
import type { RegisteredBuffer, RegisteredPool } from './registered-pool.js';
import { readDepths } from './rdma-limits.js';

export interface RdmaTargetOptions {
  readonly maxVqPayload: number;
  /** Keyed descriptors accepted per VQ command (answer to Get Keyed Number Descriptors). */
  readonly maxKeyedDescriptors: number;
  readonly recvDepth: number;
  readonly sendDepth: number;
  /** Registered data chunks per virtqueue connection, and their size. */
  readonly dataChunks: number;
  readonly dataChunkSize: number;
}

/** The largest request message: a Connect with its body (also room for 64 descriptors). */
export const MAX_REQUEST_MESSAGE = COMMAND_SIZE + CONNECT_BODY_SIZE;
const EMPTY = Buffer.alloc(0);

/**
 * One VQ command's keyed descriptors, validated once on arrival, and the registered memory it
 * holds: the device-readable bytes fetched by RDMA READ, and the device-writable buffer the
 * device fills and the RDMA WRITE sends from. Owned by the target's request for the command,
 * which releases it when the request ends; memory a WRITE still sends from is given back once
 * the send has completed.
 */
class KeyedVqRequest implements VqRequestData {
  data: RegisteredBuffer | null = null;
  reply: RegisteredBuffer | null = null;
  /** The WRITE and completion chain, while posted. */
  sending: Promise<void> | null = null;
  private released = false;

  constructor(
    readonly commandId: number,
    readonly outLength: number,
    readonly inLength: number,
    readonly descriptors: readonly KeyedDescriptor[],
    readonly problem: string | null,
    readonly connection: RdmaTargetConnection,
  ) {}

  readOut(): Promise<Buffer> {
    return this.connection.readOut(this);
  }

  writable(): Promise<Buffer> {
    return this.connection.writable(this);
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    if (this.sending) void this.sending.finally(() => this.freeMemory());
    else this.freeMemory();
  }

  private freeMemory(): void {
    this.data?.release();
    this.data = null;
    this.reply?.release();
    this.reply = null;
  }
}

type State = 'accepting' | 'open' | 'closing' | 'closed';

/**
 * Target end of one RDMA CM connection (DECISIONS.md item 4): each received message is one
 * request PDU; device-readable bytes are fetched with RDMA READ into registered chunks, the
 * device-writable bytes go back with RDMA WRITE chained to the completion SEND. Target memory
 * is registered for local access only: the initiator never gets a key to it.
 */
export class RdmaTargetConnection implements TargetConnection {
  readonly kind = 'keyed' as const;
  readonly peer: string;
  readonly maxKeyedDescriptors: number;
  private readonly rc: RcConnection;
  private handler: TargetConnectionHandler | null = null;
  private state: State = 'accepting';
  private dataPool: RegisteredPool | null = null;
  private closeTimer: NodeJS.Timeout | null = null;
  private closeReason: Error | undefined;

  constructor(
    private readonly binding: NativeBinding,
    private readonly cmId: CmId,
    request: CmEvent,
    private readonly options: RdmaTargetOptions,
    private readonly log: Logger,
    private readonly onEstablished: (c: RdmaTargetConnection) => void,
    private readonly onGone: (c: RdmaTargetConnection) => void,
  ) {
    const peer = cmId.peerAddress();
    this.peer = peer ? formatRdmaPeer(peer.host, peer.port) : 'rdma://?';
    this.maxKeyedDescriptors = options.maxKeyedDescriptors;
    this.rc = new RcConnection(
      binding,
      cmId,
      { recvDepth: options.recvDepth, recvSize: MAX_REQUEST_MESSAGE, sendDepth: options.sendDepth, sendSize: COMMAND_SIZE, largestSend: COMPLETION_SIZE + REDIRECT_RECORD_SIZE },
      { onMessage: (m) => this.onMessage(m), onBroken: (err) => this.onBroken(err) },
    );
    try {
      cmId.accept(readDepths(cmId, request));
    } catch (err) {
      this.rc.destroy();
      throw err;
    }
  }

  onCmEvent(ev: CmEvent): void {
    switch (ev.type) {
      case 'ESTABLISHED':
        this.establish();
        break;
      case 'DISCONNECTED':
      case 'DEVICE_REMOVAL':
      case 'CONNECT_ERROR':
      case 'UNREACHABLE':
      case 'REJECTED':
        this.teardown(ev.type === 'DISCONNECTED' ? undefined : new Error(`RDMA CM ${ev.type} (status ${ev.status})`));
        break;
      default:
        break;
    }
  }

  /**
   * The initiator learns of the connection first and may send before our ESTABLISHED event
   * arrives; a received message proves the connection as well.
   */
  private establish(): void {
    if (this.state !== 'accepting') return;
    this.state = 'open';
    this.onEstablished(this);
  }

  start(handler: TargetConnectionHandler): void {
    this.handler = handler;
  }

  private onMessage(msg: Buffer): void {
    this.establish();
    if (this.state !== 'open' || !this.handler) return;
    if (msg.length < COMMAND_SIZE) return this.violation(`${msg.length}-byte message is shorter than a command`);
    const command = Buffer.from(msg.subarray(0, COMMAND_SIZE));
    const opcode = command.readUInt16LE(0);
    const rest = msg.length - COMMAND_SIZE;
    if (opcode === Opcode.Connect) {
      const announced = command.readUInt32LE(8);
      if (rest !== announced || (rest !== 0 && rest !== CONNECT_BODY_SIZE)) {
        return this.violation(`Connect announces a ${announced}-byte body and carries ${rest} bytes (0 or ${CONNECT_BODY_SIZE} are valid)`);
      }
      this.handler.onCommand(command, rest === 0 ? EMPTY : Buffer.from(msg.subarray(COMMAND_SIZE)));
      return;
    }
    if (opcode === Opcode.Vq) {
      const commandId = command.readUInt16LE(2);
      const outLength = command.readUInt32LE(8);
      const inLength = command.readUInt32LE(12);
      let problem: string | null = null;
      let descriptors: KeyedDescriptor[] = [];
      if (rest % KEYED_DESCRIPTOR_SIZE !== 0) {
        problem = `${rest} bytes after the command are not whole keyed descriptors`;
      } else {
        descriptors = decodeKeyedDescriptors(msg, COMMAND_SIZE);
        const p = validateKeyedDescriptors(descriptors, outLength, inLength, this.maxKeyedDescriptors);
        if (p !== 'none') problem = `${p} (${descriptors.length} descriptors, limit ${this.maxKeyedDescriptors})`;
      }
      // Each command's memory belongs to its own request object, never to its id: a reused id
      // (which the session refuses by closing the queue) cannot touch another's buffers.
      this.handler.onCommand(command, new KeyedVqRequest(commandId, outLength, inLength, descriptors, problem, this));
      return;
    }
    if (rest !== 0) return this.violation(`${opcodeLabel(opcode)} carries ${rest} unexpected bytes`);
    this.handler.onCommand(command, EMPTY);
  }

  private violation(why: string): void {
    this.log.warn(`${this.peer}: closing: ${why}`);
    this.close();
  }

  private pool(): RegisteredPool {
    this.dataPool ??= this.rc.createPool(this.options.dataChunkSize, this.options.dataChunks, this.binding.access.LOCAL_WRITE);
    return this.dataPool;
  }

  async readOut(req: KeyedVqRequest): Promise<Buffer> {
    if (req.problem) throw new VqTransferError('out', req.problem);
    if (req.outLength > this.options.maxVqPayload) {
      throw new VqTransferError('out', `device-readable length ${req.outLength} exceeds the ${this.options.maxVqPayload}-byte limit`);
    }
    if (req.outLength === 0) return EMPTY;
    req.data ??= this.pool().acquire(req.outLength);
    const data = req.data;
    const wrs: SendWr[] = [];
    let at = 0;
    for (const d of req.descriptors) {
      if (at >= req.outLength) break;
      if (d.length === 0) continue; // legal, moves nothing (DECISIONS.md item 4)
      wrs.push({ wrId: 0, opcode: WrOpcode.Read, signaled: false, sg: [data.mr, data.offset + at, d.length], remoteAddr: d.addr, rkey: d.key });
      at += d.length;
    }
    try {
      await this.rc.sendQueue.post(wrs, `RDMA READ of command ${req.commandId}`);
    } catch (err) {
      throw new VqTransferError('out', (err as Error).message, { cause: err });
    }
    return data.view;
  }

  /**
   * The device-writable buffer: a registered chunk the device fills and completeVq's RDMA
   * WRITEs send from (no staging copy).
   */
  async writable(req: KeyedVqRequest): Promise<Buffer> {
    if (req.problem) throw new VqTransferError('in', req.problem);
    if (req.inLength > this.options.maxVqPayload) {
      throw new VqTransferError('in', `device-writable length ${req.inLength} exceeds the ${this.options.maxVqPayload}-byte limit`);
    }
    req.reply ??= this.pool().acquire(req.inLength);
    return req.reply.view;
  }

  sendCompletion(completion: Buffer, payload?: Buffer): void {
    if (this.state !== 'open' && this.state !== 'closing') return;
    this.rc.send(payload ? [completion, payload] : [completion], 'completion').catch((err: Error) => this.log.debug(`${this.peer}: completion not sent: ${err.message}`));
  }

  /**
   * Posts the RDMA WRITEs and the completion SEND as one chain and returns at once: the
   * initiator may send its next command as soon as the completion lands, before our own send
   * completion is polled, so the command must stop counting as in flight now. If the chain
   * fails the queue pair is in the error state and no status could reach the initiator anyway;
   * the connection closes through onBroken.
   */
  completeVq(request: VqRequestData, completion: Buffer, written: number): Promise<void> {
    if (!(request instanceof KeyedVqRequest) || request.connection !== this) {
      return Promise.reject(new TypeError(`${this.peer}: completeVq for a request this connection did not deliver`));
    }
    const req = request;
    if (this.state === 'closed') return Promise.resolve();
    const reply = req.reply;
    if (written > 0 && (reply === null || written > reply.view.length)) {
      return Promise.reject(new RangeError(`${this.peer}: ${written} bytes written into ${reply?.view.length ?? 0} device-writable bytes`));
    }
    const wrs: SendWr[] = [];
    if (reply !== null && written > 0) {
      // Fill the device-writable descriptors (those past out_length) in order, straight from
      // the registered buffer the device wrote into.
      let pos = 0;
      let left = written;
      for (const d of req.descriptors) {
        if (left === 0) break;
        pos += d.length;
        if (pos <= req.outLength) continue;
        const n = Math.min(d.length, left);
        if (n === 0) continue;
        wrs.push({ wrId: 0, opcode: WrOpcode.Write, signaled: false, sg: [reply.mr, reply.offset + (written - left), n], remoteAddr: d.addr, rkey: d.key });
        left -= n;
      }
    }
    const commandId = req.commandId;
    // The request's memory stays taken until the chain has completed (see KeyedVqRequest.release).
    req.sending = this.rc
      .send([completion], `RDMA WRITE and completion of command ${commandId}`, wrs)
      .catch((err: Error) => this.log.debug(`${this.peer}: ${err.message}`));
    return Promise.resolve();
  }

  private onBroken(err: Error): void {
    if (this.state === 'closed') return;
    // A flush is what a peer's disconnect looks like from the completion queue.
    const flushed = err instanceof RdmaWorkError && err.status === WC_WR_FLUSH_ERR;
    (flushed ? this.log.debug : this.log.warn)(`${this.peer}: queue pair failed (${err.message}): closing the queue`);
    this.closeReason = err;
    this.close();
  }

  close(): void {
    if (this.state === 'closing' || this.state === 'closed') return;
    const wasOpen = this.state === 'open';
    this.state = 'closing';
    // Let the completions already posted leave (they are the Disconnect answer, say), then
    // disconnect; the DISCONNECTED event, or the timer for a peer that never answers, tears down.
    const disconnect = () => {
      if (this.state !== 'closing') return;
      try {
        this.cmId.disconnect();
      } catch (err) {
        this.log.debug(`${this.peer}: disconnect: ${(err as Error).message}`);
      }
    };
    if (wasOpen && !this.rc.broken && !this.rc.sendQueue.idle) {
      const started = Date.now();
      const wait = () => {
        if (this.rc.sendQueue.idle || this.rc.broken || Date.now() - started > 1000) disconnect();
        else setTimeout(wait, 5);
      };
      wait();
    } else {
      disconnect();
    }
    this.closeTimer = setTimeout(() => this.teardown(this.closeReason), 3000);
    this.closeTimer.unref();
  }

  /** Release everything; called once, on DISCONNECTED or when closing times out. */
  teardown(reason?: Error): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    if (this.closeTimer) clearTimeout(this.closeTimer);
    this.rc.destroy();
    this.onGone(this);
    const h = this.handler;
    this.handler = null;
    h?.onClose(reason ?? this.closeReason);
  }
}

function opcodeLabel(opcode: number): string {
  return `opcode 0x${opcode.toString(16).padStart(4, '0')}`;
}
