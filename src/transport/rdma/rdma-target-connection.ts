import { COMMAND_SIZE, COMPLETION_SIZE, CONNECT_BODY_SIZE, CONTROL_QUEUE_INSTANCE_ID, KEYED_DESCRIPTOR_SIZE, Opcode, Status } from '../../protocol/constants.js';
import { REDIRECT_RECORD_SIZE } from '../../protocol/redirect-record.js';
import { decodeKeyedDescriptors, validateKeyedDescriptors, type KeyedDescriptor } from '../../protocol/keyed-descriptor.js';
import { carriesInline, decodeInlineRequest, inlineRequestMessageSize } from '../../protocol/inline-data.js';
import { setMaxListeners } from 'node:events';
import type { Logger } from '../../util/log.js';
import { VqTransferError, type TargetConnection, type TargetConnectionHandler, type VqRequestData } from '../transport.js';
import type { CmEvent, CmId, NativeBinding, SendWr } from './native-binding.js';
import { WrOpcode } from './native-binding.js';
import { RcConnection } from './rc-connection.js';
import { formatRdmaPeer } from '../address.js';
import { RdmaWorkError, WC_WR_FLUSH_ERR } from './send-queue.js';
import type { RegisteredBuffer } from './registered-pool.js';
import { targetConnParam } from './rdma-limits.js';
import { deviceMemories, type DeviceMemory, type DeviceMemoryLease, type MemoryReservation } from './device-memory.js';

export interface RdmaTargetOptions {
  readonly maxVqPayload: number;
  /** Keyed descriptors accepted per VQ command (answer to Get Keyed Number Descriptors). */
  readonly maxKeyedDescriptors: number;
  readonly recvDepth: number;
  readonly sendDepth: number;
  /** Registered bytes of the device's shared data pools at most (device-memory.ts). */
  readonly deviceMemoryBytes: number;
  /** Close the connection when its sends make no progress for this long (ms; 0: never). */
  readonly sendStallTimeoutMs: number;
  /** Completion chains allowed to wait for room in the send queue. */
  readonly maxSendBacklog: number;
  /** Inline size offered with VOF_F_INLINE_DATA (receive buffers hold it); 0 offers none. */
  readonly inlineDataBytes: number;
}

/** Device-writable and status bytes beyond max_vq_payload one request may need (virtio-blk: 1). */
const REQUEST_SLACK = 4096;

/**
 * Receive buffers posted until the queue's Connect succeeds. Before it a peer has no business
 * sending anything but that Connect, and a connection that never gets there (a peer that only
 * sends connect requests, or Connects that are refused) must not hold a full receive ring
 * (recvDepth × recvSize, ~1.3 MiB by default) of registered memory: the rest is registered
 * when the answer to a successful Connect is sent.
 */
export const PRE_CONNECT_RECV_DEPTH = 2;

/** The largest request message: a Connect with its body (also room for 64 descriptors). */
export const MAX_REQUEST_MESSAGE = COMMAND_SIZE + CONNECT_BODY_SIZE;
const EMPTY = Buffer.alloc(0);

/**
 * One VQ command's keyed descriptors, validated once on arrival, and the one registered buffer
 * it uses: device-readable bytes at [0, out_length), device-writable at [out_length, +in_length)
 * — the RDMA READ lands there, the device fills the writable part in place and the RDMA WRITE
 * sends from it. Owned by the target's request for the command, which releases it when the
 * request ends; memory a WRITE still sends from is given back once the send has completed.
 */
class KeyedVqRequest implements VqRequestData {
  data: RegisteredBuffer | null = null;
  /** The WRITE and completion chain, while posted. */
  sending: Promise<void> | null = null;
  private memory: Promise<RegisteredBuffer> | null = null;
  /** The core is done with it: no device work reads or writes its buffer any more. */
  private released = false;

  constructor(
    readonly commandId: number,
    readonly outLength: number,
    readonly inLength: number,
    readonly descriptors: readonly KeyedDescriptor[],
    readonly problem: string | null,
    readonly connection: RdmaTargetConnection,
    /** vof inline data: the readable bytes came in the SEND; `descriptors` are the writable part's. */
    readonly inline: Buffer | null = null,
  ) {}

  /** Bytes of the readable part the descriptors describe (none when it came inline). */
  get describedReadable(): number {
    return this.inline ? 0 : this.outLength;
  }

  readOut(): Promise<Buffer> {
    return this.connection.readOut(this);
  }

  /** Keyed: the bytes travel (RDMA READ) or are checked first; always through readOut(). */
  readOutNow(): undefined {
    return undefined;
  }

  /** Keyed: pool memory may have to be waited for; always through writable(). */
  writableNow(): undefined {
    return undefined;
  }

  /** The device-writable part of this request's buffer (waits for pool memory, never registers). */
  async writable(): Promise<Buffer> {
    this.connection.checkSizes(this, 'in');
    const data = await this.buffer('in');
    return data.view.subarray(this.outLength, this.outLength + this.inLength);
  }

  /**
   * This request's registered buffer, taken from the device pools once (by the core's calls);
   * a wait that fails is reported for the side that asked (`direction`).
   */
  buffer(direction: 'out' | 'in'): Promise<RegisteredBuffer> {
    this.memory ??= this.connection.acquire(this.outLength + this.inLength).then((b) => {
      // Released while waiting (the core gave up on the request): give it straight back.
      if (this.released) b.release();
      else this.data = b;
      return b;
    });
    return this.memory.catch((err: unknown) => {
      throw new VqTransferError(direction, `no target memory: ${(err as Error).message}`, { cause: err });
    });
  }

  /**
   * The core is done with the request (its device work has ended). The buffer goes back to the
   * device's pools once the WRITE and completion chain no longer sends from it either: a pool
   * shared by several connections never hands out memory that is still in use.
   */
  release(): void {
    if (this.released) return;
    this.released = true;
    if (this.sending) void this.sending.finally(() => this.freeMemory());
    else this.freeMemory();
  }

  private freeMemory(): void {
    this.data?.release();
    this.data = null;
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
  private readonly memoryLease: DeviceMemoryLease;
  private readonly memory: DeviceMemory;
  private reservation: MemoryReservation | null = null;
  /** Aborted at teardown: requests still waiting for pool memory stop waiting. */
  private readonly gone = new AbortController();
  private closeTimer: NodeJS.Timeout | null = null;
  private closeReason: Error | undefined;
  readonly inlineDataCapacity: number;
  /** Agreed inline size once the virtqueue's instance negotiated VOF_F_INLINE_DATA, else 0. */
  private inlineSize = 0;
  /** The command id of a Connect whose answer has not been sent yet. */
  private connectCommandId: number | null = null;
  /** The virtqueue's instance negotiated VOF_F_REMOTE_INVALIDATE. */
  private remoteInvalidation = false;
  /**
   * VQ requests whose readable part came inline, RDMA READ chains posted, and completions sent
   * as a SEND with Invalidate (tests, bench).
   */
  readonly transferCounts = { inlineRequests: 0, rdmaReads: 0, remoteInvalidations: 0 };

  constructor(
    binding: NativeBinding,
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
    this.inlineDataCapacity = options.inlineDataBytes;
    // Every request waiting for pool memory listens on it (up to the queue size at once).
    setMaxListeners(0, this.gone.signal);
    // The device's shared PD and pools; released by the RcConnection, last of all.
    this.memoryLease = deviceMemories.lease(
      cmId.deviceName() ?? '?',
      () => new binding.ProtectionDomain(cmId),
      { largestBuffer: options.maxVqPayload + REQUEST_SLACK, limitBytes: options.deviceMemoryBytes, access: binding.access.LOCAL_WRITE },
      log,
    );
    this.memory = this.memoryLease.memory;
    try {
      this.rc = new RcConnection(
        binding,
        cmId,
        {
          recvDepth: options.recvDepth,
          initialRecvDepth: PRE_CONNECT_RECV_DEPTH,
          // Sized before Connect says which instance this queue joins: room for the offered inline size.
          recvSize: Math.max(MAX_REQUEST_MESSAGE, options.inlineDataBytes > 0 ? inlineRequestMessageSize(options.maxKeyedDescriptors, options.inlineDataBytes) : 0),
          sendDepth: options.sendDepth,
          sendSize: COMMAND_SIZE,
          largestSend: COMPLETION_SIZE + REDIRECT_RECORD_SIZE,
          protectionDomain: { pd: this.memory.pd, release: () => this.memoryLease.release() },
          sendLimits: { maxBacklog: options.maxSendBacklog, stallTimeoutMs: options.sendStallTimeoutMs },
        },
        { onMessage: (m) => this.onMessage(m), onBroken: (err) => this.onBroken(err) },
      );
    } catch (err) {
      this.memoryLease.release();
      throw err;
    }
    try {
      cmId.accept(targetConnParam(cmId, request));
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

  enableInlineData(size: number): void {
    this.inlineSize = Math.min(size, this.inlineDataCapacity);
  }

  enableRemoteInvalidation(): void {
    this.remoteInvalidation = true;
  }

  /** vof inline data: copied out of the receive buffer, which is reposted when this returns. */
  private inlineVqRequest(msg: Buffer, commandId: number, outLength: number, inLength: number): KeyedVqRequest {
    const r = decodeInlineRequest(msg, this.maxKeyedDescriptors);
    this.transferCounts.inlineRequests++;
    return new KeyedVqRequest(commandId, outLength, inLength, r.writable, r.problem, this, r.problem ? null : Buffer.from(r.readable));
  }

  /** The seed's layout: N keyed descriptors after the command, validated once here. */
  private keyedVqRequest(msg: Buffer, commandId: number, outLength: number, inLength: number): KeyedVqRequest {
    const rest = msg.length - COMMAND_SIZE;
    if (rest % KEYED_DESCRIPTOR_SIZE !== 0) {
      return new KeyedVqRequest(commandId, outLength, inLength, [], `${rest} bytes after the command are not whole keyed descriptors`, this);
    }
    const descriptors = decodeKeyedDescriptors(msg, COMMAND_SIZE);
    const p = validateKeyedDescriptors(descriptors, outLength, inLength, this.maxKeyedDescriptors);
    const problem = p === 'none' ? null : `${p} (${descriptors.length} descriptors, limit ${this.maxKeyedDescriptors})`;
    return new KeyedVqRequest(commandId, outLength, inLength, descriptors, problem, this);
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
      this.connectCommandId = command.readUInt16LE(2);
      this.reserveMemory(command);
      this.handler.onCommand(command, rest === 0 ? EMPTY : Buffer.from(msg.subarray(COMMAND_SIZE)));
      return;
    }
    if (opcode === Opcode.Vq) {
      const commandId = command.readUInt16LE(2);
      const outLength = command.readUInt32LE(8);
      const inLength = command.readUInt32LE(12);
      // Each command's memory belongs to its own request object, never to its id: a reused id
      // (which the session refuses by closing the queue) cannot touch another's buffers.
      const req = carriesInline(this.inlineSize, outLength) ? this.inlineVqRequest(msg, commandId, outLength, inLength) : this.keyedVqRequest(msg, commandId, outLength, inLength);
      this.handler.onCommand(command, req);
      return;
    }
    if (rest !== 0) return this.violation(`${opcodeLabel(opcode)} carries ${rest} unexpected bytes`);
    this.handler.onCommand(command, EMPTY);
  }

  private violation(why: string): void {
    this.log.warn(`${this.peer}: closing: ${why}`);
    this.close();
  }

  /**
   * A virtqueue Connect: the device pools grow by this queue's share now (registration at
   * queue setup, never on the data path). Once per connection, whatever the Connect's outcome.
   */
  private reserveMemory(command: Buffer): void {
    if (this.reservation || command.readUInt16LE(4) === CONTROL_QUEUE_INSTANCE_ID) return;
    const queueSize = command.readUInt16LE(12) || this.options.recvDepth;
    this.reservation = this.memory.reserve(Math.min(queueSize, this.options.recvDepth));
  }

  /** Pool memory for one request: waits while the device's pools are short, never registers. */
  acquire(size: number): Promise<RegisteredBuffer> {
    return this.memory.acquire(Math.max(size, 1), this.gone.signal);
  }

  /** A request whose descriptors or lengths this target cannot serve never takes memory. */
  checkSizes(req: KeyedVqRequest, direction: 'out' | 'in'): void {
    if (req.problem) throw new VqTransferError(direction, req.problem);
    if (req.outLength > this.options.maxVqPayload) {
      throw new VqTransferError(direction, `device-readable length ${req.outLength} exceeds the ${this.options.maxVqPayload}-byte limit`);
    }
    if (req.outLength + req.inLength > this.memory.largestBuffer) {
      throw new VqTransferError(direction, `${req.outLength}+${req.inLength} bytes exceed the largest target buffer (${this.memory.largestBuffer} bytes)`);
    }
  }

  async readOut(req: KeyedVqRequest): Promise<Buffer> {
    this.checkSizes(req, 'out');
    if (req.inline) return req.inline;
    if (req.outLength === 0) return EMPTY;
    const data = await req.buffer('out');
    const wrs: SendWr[] = [];
    let at = 0;
    for (const d of req.descriptors) {
      if (at >= req.outLength) break;
      if (d.length === 0) continue; // legal, moves nothing (DECISIONS.md item 4)
      wrs.push({ wrId: 0, opcode: WrOpcode.Read, signaled: false, sg: [data.mr, data.offset + at, d.length], remoteAddr: d.addr, rkey: d.key });
      at += d.length;
    }
    if (wrs.length > 0) this.transferCounts.rdmaReads++;
    try {
      await this.rc.sendQueue.post(wrs, `RDMA READ of command ${req.commandId}`);
    } catch (err) {
      throw new VqTransferError('out', (err as Error).message, { cause: err });
    }
    return data.view.subarray(0, req.outLength);
  }

  sendCompletion(completion: Buffer, payload?: Buffer): void {
    if (this.state !== 'open' && this.state !== 'closing') return;
    if (this.connectCommandId !== null && completion.readUInt16LE(2) === this.connectCommandId) {
      this.connectCommandId = null;
      // A successful Connect: the full receive ring, before the answer leaves (the peer may send
      // its next commands as soon as it has it). A refused Connect leaves the connection unbound
      // with its small ring.
      if (completion.readUInt16LE(0) === Status.SUCCESS) {
        try {
          this.rc.growReceives();
        } catch (err) {
          this.log.warn(`${this.peer}: cannot register the queue's receive buffers (${(err as Error).message}): closing`);
          this.close();
          return;
        }
      }
    }
    this.rc.send(payload ? [completion, payload] : [completion], 'completion').catch((err: Error) => this.log.debug(`${this.peer}: completion not sent: ${err.message}`));
  }

  /**
   * Posts the RDMA WRITEs and the completion SEND as one chain and returns at once: the
   * initiator may send its next command as soon as the completion lands, before our own send
   * completion is polled, so the command must stop counting as in flight now. If the chain
   * fails the queue pair is in the error state and no status could reach the initiator anyway;
   * the connection closes through onBroken.
   */
  async completeVq(request: VqRequestData, completion: Buffer, written: number): Promise<void> {
    if (!(request instanceof KeyedVqRequest) || request.connection !== this) {
      throw new TypeError(`${this.peer}: completeVq for a request this connection did not deliver`);
    }
    const req = request;
    if (this.state === 'closed') return;
    const wrs: SendWr[] = [];
    if (written > 0) {
      if (written > req.inLength) throw new RangeError(`${this.peer}: ${written} bytes written into ${req.inLength} device-writable bytes`);
      // The device filled the writable part of the request's own buffer: the WRITEs go out
      // from there, no staging copy.
      const staging = await req.buffer('in');
      if (this.closed) return;
      const base = req.outLength;
      // Fill the device-writable descriptors (those past out_length) in order.
      let pos = 0;
      let left = written;
      for (const d of req.descriptors) {
        if (left === 0) break;
        pos += d.length;
        if (pos <= req.describedReadable) continue;
        const n = Math.min(d.length, left);
        if (n === 0) continue;
        wrs.push({ wrId: 0, opcode: WrOpcode.Write, signaled: false, sg: [staging.mr, staging.offset + base + (written - left), n], remoteAddr: d.addr, rkey: d.key });
        left -= n;
      }
    }
    // vof remote invalidation: the completion ends the initiator's key of desc[0] on arrival
    // (after the WRITEs before it, which the QP executes first), so the initiator posts no
    // LOCAL_INV for it. Never for a request whose descriptors were refused.
    const invalidate = this.remoteInvalidation && req.problem === null && req.descriptors.length > 0 ? req.descriptors[0]!.key : null;
    if (invalidate !== null) this.transferCounts.remoteInvalidations++;
    // The request's memory stays taken until the chain has completed (see KeyedVqRequest.release).
    req.sending = this.rc
      .send([completion], `RDMA WRITE and completion of command ${req.commandId}`, wrs, invalidate)
      .catch((err: Error) => this.log.debug(`${this.peer}: ${err.message}`));
  }

  private get closed(): boolean {
    return this.state === 'closed';
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
    this.gone.abort(new Error('the connection closed'));
    // The QP goes first: no RDMA READ can still land in a buffer given back to the shared
    // pools below. rc.destroy() also releases this connection's hold on the device memory.
    this.reservation?.release();
    // Requests still in flight give their memory back when the session releases them (onClose).
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
