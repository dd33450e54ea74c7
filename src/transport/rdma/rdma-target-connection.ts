import { COMMAND_SIZE, COMPLETION_SIZE, CONNECT_BODY_SIZE, CONTROL_QUEUE_INSTANCE_ID, KEYED_DESCRIPTOR_SIZE, Opcode, Status } from '../../protocol/constants.js';
import { REDIRECT_RECORD_SIZE } from '../../protocol/redirect-record.js';
import { carriesInline, inlineRequestMessageSize } from '../../protocol/inline-data.js';
import { validateKeyedDescriptorBytes } from '../../protocol/keyed-descriptor.js';
import { setMaxListeners } from 'node:events';
import type { Logger } from '../../util/log.js';
import { VqTransferError, type TargetCapabilities, type TargetConnection, type TargetConnectionHandler, type VqBufferSink, type VqRequestData } from '../transport.js';
import type { CmEvent, CmId, MemoryRegion, NativeBinding, SendWr } from './native-binding.js';
import { WrOpcode } from './native-binding.js';
import { HOLD_RECEIVE, RcConnection } from './rc-connection.js';
import { formatRdmaPeer } from '../address.js';
import { copyBytes } from '../../util/bytes.js';
import { DATA_SKEW } from '../../util/aligned-buffer.js';
import { RdmaWorkError, WC_WR_FLUSH_ERR, type SendChain, type SendQueue } from './send-queue.js';
import type { RegisteredPool } from './registered-pool.js';
import type { RegisteredBuffer } from './registered-pool.js';
import { targetConnParam } from './rdma-limits.js';
import { nicMemories, type NicMemory, type NicMemoryLease, type MemoryReservation } from './nic-memory.js';
import { CONNECT_COMMAND, VQ_COMMAND } from '../../protocol/command.js';
import { getLE16, getLE32 } from '../../protocol/fields.js';
import { COMMAND_HEADER, COMPLETION_HEADER } from '../../protocol/header.js';
import { descriptorAddrHigh, descriptorAddrLow, descriptorKey, descriptorLength } from '../../protocol/keyed-descriptor.js';

export interface RdmaTargetOptions {
  readonly maxVqPayload: number;
  /** Keyed descriptors accepted per VQ command (answer to Get Keyed Number Descriptors). */
  readonly maxKeyedDescriptors: number;
  readonly recvDepth: number;
  readonly sendDepth: number;
  /** Registered bytes of the device's shared data pools at most (nic-memory.ts). */
  readonly deviceMemoryBytes: number;
  /** Close the connection when its sends make no progress for this long (ms; 0: never). */
  readonly sendStallTimeoutMs: number;
  /** Completion chains allowed to wait for room in the send queue. */
  readonly maxSendBacklog: number;
  /** Inline size offered with VOF_F_INLINE_DATA (receive buffers hold it); 0 offers none. */
  readonly inlineDataBytes: number;
}

/** Receive buffers never held for inline data: posted for the commands that keep coming. */
const HELD_RECEIVE_MARGIN = 32;

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
 * One request slot of an RDMA target connection: a VQ command's transport part from its
 * arrival until it has left, reused for later commands (the connection keeps its free slots).
 * It holds the command's keyed descriptors (copied from the message and validated on arrival),
 * the one registered buffer the command uses — device-readable bytes at [0, out_length),
 * device-writable at [out_length, +in_length): the RDMA READ lands there, the device fills the
 * writable part in place and the RDMA WRITE sends from it; inline readable bytes stay in their
 * receive buffer, which the slot holds meanwhile, and the pool buffer is the writable part — and the work
 * requests of its completion chain (RDMA WRITEs, then the completion SEND from the slot's own
 * registered 16 bytes), posted as this slot itself: in steady state a command allocates no
 * request object, descriptor object, promise or work request. The target's request for the
 * command releases it when the request ends; the slot is free again once nothing posted or
 * waited for still uses it (see `pending`).
 */
class KeyedVqRequest implements VqRequestData, SendChain {
  commandId = 0;
  outLength = 0;
  inLength = 0;
  /** Why the command's descriptors or lengths cannot be served (answered EOUTVQBUF/EINVQBUF), or null. */
  problem: string | null = null;
  /** vof inline data: the readable bytes came in the SEND; the descriptors are the writable part's. */
  inline = false;
  /** Keyed descriptors as they came (16 bytes each; `descriptorCount` of them). */
  readonly descriptors: Buffer;
  descriptorCount = 0;
  /** The command's registered buffer, once taken from the device's pools. */
  data: RegisteredBuffer | null = null;
  /**
   * vof inline data: the readable part where it arrived, in the receive buffer `recvSlot`, which
   * the request holds (not posted again) until the device is done with it; -1: none held.
   */
  private inlineView: Buffer = EMPTY;
  private recvSlot = -1;
  /** A wait for pool memory is under way (fetch): its answer comes to onMemory / onMemoryFailed. */
  private waitingForMemory = false;
  /** Where fetch() reports, and for which command (generation) it was asked. */
  private sink: VqBufferSink | null = null;
  private fetchGeneration = -1;
  /** The RDMA READ of the readable part: a chain of its own, reposted for every command that needs one. */
  private readonly readChain: ReadChain;
  /** Released by its request (or never given out): serving no command. */
  private released = true;
  /** Back in its connection's free slots (until start()). */
  private recycled = true;
  /** Bumped for every command: a wait that ends after its command has left must not see the next one's buffer. */
  private generation = 0;
  /** Work that still uses the slot's buffers: a wait for pool memory, an RDMA READ, the completion chain. */
  private pending = 0;
  // Views of `data`, kept while the next command of the slot gets the same buffer and lengths.
  private viewMr: MemoryRegion | null = null;
  private viewOffset = -1;
  private viewOut = -1;
  private viewIn = -1;
  private readView: Buffer = EMPTY;
  private writeView: Buffer = EMPTY;

  // SendChain: the completion chain (RDMA WRITEs, then the SEND), reposted for every command.
  readonly wrs: SendWr[] = [];
  readonly what = 'RDMA WRITE and completion of a VQ command';
  id = 0;
  /** WRITE templates, as many as the slot's commands have needed so far. */
  private readonly writes: SendWr[] = [];
  /** READ templates, likewise. */
  private readonly reads: SendWr[] = [];
  /** The completion SEND, from the slot's registered completion buffer (both made with the slot's first completion). */
  private send: SendWr | null = null;
  private completionBuffer: RegisteredBuffer | null = null;

  constructor(
    readonly connection: RdmaTargetConnection,
    maxDescriptors: number,
  ) {
    this.descriptors = Buffer.alloc(maxDescriptors * KEYED_DESCRIPTOR_SIZE);
    this.readChain = new ReadChain(this);
    this.onMemory = (b) => this.memoryArrived(b);
    this.onMemoryFailed = (err) => this.memoryFailed(err);
  }

  /** A wait for pool memory settled (bound once per slot). */
  private readonly onMemory: (b: RegisteredBuffer) => void;
  private readonly onMemoryFailed: (err: unknown) => void;

  /** Take the slot for a command. */
  start(commandId: number, outLength: number, inLength: number, inline: boolean): void {
    this.commandId = commandId;
    this.outLength = outLength;
    this.inLength = inLength;
    this.inline = inline;
    this.problem = null;
    this.descriptorCount = 0;
    this.inlineView = EMPTY;
    this.recvSlot = -1;
    this.released = false;
    this.recycled = false;
    this.generation++;
  }

  /** Bytes of the readable part the descriptors describe (none when it came inline). */
  get describedReadable(): number {
    return this.inline ? 0 : this.outLength;
  }

  /** The key of descriptor `i`. */
  key(i: number): number {
    return descriptorKey(this.descriptors, i * KEYED_DESCRIPTOR_SIZE);
  }

  /** The length of descriptor `i`. */
  length(i: number): number {
    return descriptorLength(this.descriptors, i * KEYED_DESCRIPTOR_SIZE);
  }

  /**
   * Where the writable part starts in the pool buffer: after the readable part, which the RDMA
   * READ lands in; when the readable bytes came inline (they stay where they arrived) after the
   * place of their first DATA_SKEW bytes only, so that a read's data still follows its 16-byte
   * header's place and stays page-aligned for O_DIRECT (see nic-memory.ts), while an inline
   * write takes a buffer the size of its status byte and that place, not of its data.
   */
  private get pooledOut(): number {
    return this.inline ? Math.min(this.outLength, DATA_SKEW) : this.outLength;
  }

  /** The pool buffer now, when one is free and none was asked for yet (never waits). */
  takeNow(): void {
    if (this.data || this.waitingForMemory) return;
    this.data = this.connection.tryAcquire(this.pooledOut + this.inLength);
  }

  /** The inline readable part, `view` of receive buffer `slot`: used in place, the buffer held until the device is done. */
  holdInline(view: Buffer, slot: number): void {
    this.inlineView = view;
    this.recvSlot = slot;
  }

  /** The receive buffer of inline data goes back to the ring (once: the device is done with it). */
  private releaseReceive(): void {
    const slot = this.recvSlot;
    if (slot < 0) return;
    this.recvSlot = -1;
    this.inlineView = EMPTY;
    this.connection.releaseReceive(slot);
  }

  private views(): void {
    const d = this.data!;
    const out = this.pooledOut;
    if (d.mr === this.viewMr && d.offset === this.viewOffset && out === this.viewOut && this.inLength === this.viewIn) return;
    const base = d.offset;
    this.readView = d.mr.buffer.subarray(base, base + out);
    this.writeView = d.mr.buffer.subarray(base + out, base + out + this.inLength);
    this.viewMr = d.mr;
    this.viewOffset = base;
    this.viewOut = out;
    this.viewIn = this.inLength;
  }

  /** The readable bytes when they came inline (or there are none) and the sizes are servable. */
  readOutNow(): Buffer | undefined {
    if (!this.connection.servable(this)) return undefined;
    if (this.inline) return this.inlineView;
    return this.outLength === 0 ? EMPTY : undefined;
  }

  /** The device-writable part of this request's buffer when a pool buffer is at hand. */
  writableNow(): Buffer | undefined {
    if (!this.connection.servable(this)) return undefined;
    this.takeNow();
    if (!this.data) return undefined;
    this.views();
    return this.writeView;
  }

  /**
   * fetch(): a command's buffers as a state machine over the slot, each step driven by what it
   * waited for (no promise of ours, nothing allocated in steady state):
   *   NEED_BUFFER — a pool buffer now (tryAcquire), else wait for one (the pools are short);
   *   TRANSFERRING_OUT — the RDMA READ of the readable part into it, unless it came inline;
   *   READY — the sink (the core's request slot) gets both parts; or FAILED — it gets why.
   * The slot is not released while a fetch is under way (the core ends its request only after
   * the sink has been answered); the generation check guards the sink should that change.
   */
  fetch(sink: VqBufferSink): void {
    this.sink = sink;
    this.fetchGeneration = this.generation;
    const why = this.connection.refusal(this);
    // The readable side is the first asked for: a request that cannot be served is EOUTVQBUF.
    if (why !== null) return this.fetchFailed('out', why);
    this.takeNow();
    if (this.data) return this.bufferHeld();
    this.waitingForMemory = true;
    this.pending++;
    this.connection.acquire(this.pooledOut + this.inLength).then(this.onMemory, this.onMemoryFailed);
  }

  private memoryArrived(b: RegisteredBuffer): void {
    this.waitingForMemory = false;
    this.pending--;
    // Released while waiting: give it straight back.
    if (this.released || this.generation !== this.fetchGeneration) {
      b.release();
      this.recycle();
      return;
    }
    this.data = b;
    this.bufferHeld();
  }

  private memoryFailed(err: unknown): void {
    this.waitingForMemory = false;
    this.pending--;
    // Which side was waiting: the readable one when it must still travel, else the writable one.
    const side = this.inline || this.outLength === 0 ? 'in' : 'out';
    if (!this.released && this.generation === this.fetchGeneration) this.fetchFailed(side, `no target memory: ${(err as Error).message}`, err);
    this.recycle();
  }

  /** NEED_BUFFER done: the readable part comes by RDMA READ unless it is here already. */
  private bufferHeld(): void {
    if (this.inline || this.outLength === 0) return this.ready();
    const data = this.data!;
    const wrs = this.readChain.wrs;
    let count = 0;
    let at = 0;
    for (let i = 0; i < this.descriptorCount; i++) {
      if (at >= this.outLength) break;
      const length = this.length(i);
      if (length === 0) continue; // legal, moves nothing (DECISIONS.md item 4)
      const wr = this.reads[count] ?? this.newRead();
      const sg = wr.sg;
      sg[0] = data.mr;
      sg[1] = data.offset + at;
      sg[2] = length;
      wr.remoteAddrLow = descriptorAddrLow(this.descriptors, i * KEYED_DESCRIPTOR_SIZE);
      wr.remoteAddrHigh = descriptorAddrHigh(this.descriptors, i * KEYED_DESCRIPTOR_SIZE);
      wr.rkey = this.key(i);
      wrs[count++] = wr;
      at += length;
    }
    if (wrs.length !== count) wrs.length = count; // in place, as in postCompletion
    if (count === 0) return this.ready();
    this.connection.transferCounts.rdmaReads++;
    // TRANSFERRING_OUT: the READ lands in the slot's buffer, which stays taken until it settles.
    this.pending++;
    this.connection.postRead(this.readChain);
  }

  /** The READ chain settled (ReadChain.done). */
  readDone(err: Error | null): void {
    this.pending--;
    if (!this.released && this.generation === this.fetchGeneration) {
      if (err) this.fetchFailed('out', err.message, err);
      else this.ready();
    }
    this.recycle();
  }

  /** READY: both parts to the sink. */
  private ready(): void {
    const sink = this.sink!;
    this.sink = null;
    this.views();
    const readable = this.inline ? this.inlineView : this.outLength === 0 ? EMPTY : this.readView;
    sink.buffersReady(readable, this.inLength === 0 ? EMPTY : this.writeView);
  }

  private fetchFailed(side: 'out' | 'in', why: string, cause?: unknown): void {
    const sink = this.sink!;
    this.sink = null;
    sink.buffersFailed(new VqTransferError(side, why, cause === undefined ? undefined : { cause }));
  }

  private newRead(): SendWr {
    const wr: SendWr = { wrId: 0, opcode: WrOpcode.Read, signaled: false, sg: [this.data!.mr, 0, 0], remoteAddrLow: 0, remoteAddrHigh: 0, rkey: 0 };
    this.reads.push(wr);
    return wr;
  }

  /**
   * The completion chain: WRITEs of the first `written` bytes of the writable part to the
   * writable descriptors in order, then the completion SEND (with Invalidate of `invalidate`
   * unless null), posted as one chain. The buffer stays taken until the chain has completed.
   */
  postCompletion(completion: Buffer, written: number, invalidate: number | null, queue: SendQueue): void {
    // The device is done with the readable part: inline data's receive buffer goes back to the
    // ring before the completion can make the initiator send its next command.
    this.releaseReceive();
    // Filled in place and cut to length at the end: `length = 0` would drop the array's
    // storage and make push allocate it again for every command.
    const wrs = this.wrs;
    let count = 0;
    if (written > 0) {
      const data = this.data!;
      const base = data.offset + this.pooledOut;
      const readable = this.describedReadable;
      let pos = 0;
      let left = written;
      for (let i = 0; i < this.descriptorCount && left > 0; i++) {
        const length = this.length(i);
        pos += length;
        if (pos <= readable) continue;
        const n = Math.min(length, left);
        if (n === 0) continue;
        const wr = this.writes[count] ?? this.newWrite();
        const sg = wr.sg;
        sg[0] = data.mr;
        sg[1] = base + (written - left);
        sg[2] = n;
        wr.remoteAddrLow = descriptorAddrLow(this.descriptors, i * KEYED_DESCRIPTOR_SIZE);
        wr.remoteAddrHigh = descriptorAddrHigh(this.descriptors, i * KEYED_DESCRIPTOR_SIZE);
        wr.rkey = this.key(i);
        wrs[count++] = wr;
        left -= n;
      }
    }
    if (!this.send) {
      const b = (this.completionBuffer = this.connection.completionBuffer());
      this.send = { wrId: 0, opcode: WrOpcode.Send, signaled: true, sg: [b.mr, b.offset, COMPLETION_SIZE], rkey: 0 };
    }
    copyBytes(completion, 0, COMPLETION_SIZE, this.completionBuffer!.view, 0);
    this.send.opcode = invalidate === null ? WrOpcode.Send : WrOpcode.SendWithInvalidate;
    this.send.rkey = invalidate ?? 0;
    wrs[count++] = this.send;
    if (wrs.length !== count) wrs.length = count;
    this.pending++;
    queue.postChain(this);
  }

  private newWrite(): SendWr {
    const wr: SendWr = { wrId: 0, opcode: WrOpcode.Write, signaled: false, sg: [this.data!.mr, 0, 0], remoteAddrLow: 0, remoteAddrHigh: 0, rkey: 0 };
    this.writes.push(wr);
    return wr;
  }

  /** SendChain: the completion chain has completed, or failed (the QP is in error; the connection closes through onBroken). */
  done(err: Error | null): void {
    this.pending--;
    if (err) this.connection.chainFailed(this, err);
    this.recycle();
  }

  /**
   * The core is done with the request (its device work has ended). The buffer goes back to the
   * device's pools once no WRITE, READ or wait uses it either: a pool shared by several
   * connections never hands out memory that is still in use.
   */
  release(): void {
    if (this.released) return;
    this.released = true;
    this.releaseReceive();
    this.recycle();
  }

  /** Released and nothing pending: the buffer goes back, and the slot to its connection. */
  private recycle(): void {
    if (!this.released || this.pending > 0 || this.recycled) return;
    this.recycled = true;
    this.data?.release();
    this.data = null;
    this.sink = null;
    this.releaseReceive();
    this.connection.slotFree(this);
  }
}

/** A slot's RDMA READ chain (a SendChain of its own beside the slot's completion chain). */
class ReadChain implements SendChain {
  readonly wrs: SendWr[] = [];
  id = 0;
  constructor(private readonly slot: KeyedVqRequest) {}
  /** Read only when the chain fails (the error names the command). */
  get what(): string {
    return `RDMA READ of command ${this.slot.commandId}`;
  }
  done(err: Error | null): void {
    this.slot.readDone(err);
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
  readonly capabilities: TargetCapabilities;
  readonly peer: string;
  readonly maxKeyedDescriptors: number;
  private readonly rc: RcConnection;
  private handler: TargetConnectionHandler | null = null;
  private state: State = 'accepting';
  private readonly memoryLease: NicMemoryLease;
  private readonly memory: NicMemory;
  private reservation: MemoryReservation | null = null;
  /** Aborted at teardown: requests still waiting for pool memory stop waiting. */
  private readonly gone = new AbortController();
  private closeTimer: NodeJS.Timeout | null = null;
  private closeReason: Error | undefined;
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
  /** Request slots serving no command (see KeyedVqRequest): made when none is free, kept for the connection's life. */
  private readonly freeSlots: KeyedVqRequest[] = [];
  /** The slots' registered completion buffers (one each, for the slot's life), registered with the first slot. */
  private completionPool: RegisteredPool | null = null;
  /** Views of inline readable parts, by receive buffer (see inlineView). */
  private readonly inlineViews: Buffer[] = [];
  /** Receive buffers requests hold for their inline data, and at most how many: the rest of the ring stays posted. */
  private heldReceives = 0;
  private readonly maxHeldReceives: number;
  /** The command of the message being delivered: onCommand's `command` is valid during the call only. */
  private readonly command = Buffer.alloc(COMMAND_SIZE);

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
    // Every RDMA connection can send a SEND with Invalidate; inline data as the target offers it.
    this.capabilities = { keyed: true, inlineDataBytes: options.inlineDataBytes, remoteInvalidation: true };
    this.maxHeldReceives = Math.max(0, options.recvDepth - HELD_RECEIVE_MARGIN);
    // Every request waiting for pool memory listens on it (up to the queue size at once).
    setMaxListeners(0, this.gone.signal);
    // The device's shared PD and pools; released by the RcConnection, last of all.
    this.memoryLease = nicMemories.lease(
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
          memory: this.memoryLease,
          sendLimits: { maxBacklog: options.maxSendBacklog, stallTimeoutMs: options.sendStallTimeoutMs },
        },
        { onMessage: (m, _invalidated, slot) => this.onMessage(m, slot), onBroken: (err) => this.onBroken(err) },
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
    this.inlineSize = Math.min(size, this.capabilities.inlineDataBytes);
  }

  enableRemoteInvalidation(): void {
    this.remoteInvalidation = true;
  }

  /** A free request slot for a VQ command. */
  private takeSlot(): KeyedVqRequest {
    return this.freeSlots.pop() ?? new KeyedVqRequest(this, this.maxKeyedDescriptors);
  }

  /**
   * A slot's registered completion buffer, taken with its first VQ completion and kept for the
   * slot's life. The pool is registered with the full receive ring, when a Connect succeeds (a
   * peer that never gets there registers none of it; never on the data path), sized for
   * every slot the connection can have: commands in the target queue (at most the receive depth) plus
   * completions still being sent (the send queue's depth and backlog), so the data path never
   * registers memory.
   */
  completionBuffer(): RegisteredBuffer {
    return this.registerCompletionPool().acquire(COMPLETION_SIZE);
  }

  private registerCompletionPool(): RegisteredPool {
    this.completionPool ??= this.rc.createPool(COMPLETION_SIZE, this.options.recvDepth + this.options.sendDepth + this.options.maxSendBacklog, 0);
    return this.completionPool;
  }

  /** A slot has ended its command and nothing uses its buffers any more. */
  slotFree(slot: KeyedVqRequest): void {
    if (this.state !== 'closed') this.freeSlots.push(slot);
  }

  /**
   * vof inline data: [command][N writable descriptors][out_length readable bytes]. The readable
   * bytes are used where they arrived: the request holds the receive buffer (true: not posted
   * again when this returns) until the device is done with them, and its pool buffer holds only
   * the writable part. A request gives its buffer back before its completion leaves, so held
   * buffers never outnumber the commands in flight, and at most the ring less
   * HELD_RECEIVE_MARGIN are held (past that, copied aside). N =
   * (length − 16 − out_length) / 16 must be whole, at most the limit, and the descriptor lengths
   * must add up to in_length.
   */
  private inlineVqRequest(msg: Buffer, req: KeyedVqRequest, slot: number): boolean {
    this.transferCounts.inlineRequests++;
    const after = msg.length - COMMAND_SIZE;
    if (after < req.outLength) {
      req.problem = `inline request carries ${after} bytes after the command, fewer than out_length ${req.outLength}`;
      return false;
    }
    const descBytes = after - req.outLength;
    if (descBytes % KEYED_DESCRIPTOR_SIZE !== 0) {
      req.problem = `${descBytes} bytes between the command and the inline data are not whole keyed descriptors`;
      return false;
    }
    const n = descBytes / KEYED_DESCRIPTOR_SIZE;
    if (n > this.maxKeyedDescriptors) {
      req.problem = `too many descriptors (${n}, limit ${this.maxKeyedDescriptors})`;
      return false;
    }
    copyBytes(msg, COMMAND_SIZE, descBytes, req.descriptors, 0);
    req.descriptorCount = n;
    let sum = 0;
    for (let i = 0; i < n; i++) sum += req.length(i);
    if (sum !== req.inLength) {
      req.problem = `descriptor lengths add up to ${sum}, not in_length ${req.inLength}`;
      return false;
    }
    if (!this.servable(req)) return false;
    req.takeNow();
    if (req.outLength === 0) return false;
    const view = this.inlineView(msg, slot, COMMAND_SIZE + descBytes, req.outLength);
    if (this.heldReceives >= this.maxHeldReceives) {
      // A queue deeper than the receive ring: copied aside, so that enough receive buffers stay
      // posted for the commands still coming (rare; allocates).
      req.holdInline(Buffer.from(view), -1);
      return false;
    }
    this.heldReceives++;
    req.holdInline(view, slot);
    return true;
  }

  /** msg[at, at + length) of receive buffer `slot`: made once per slot while its layout recurs. */
  private inlineView(msg: Buffer, slot: number, at: number, length: number): Buffer {
    let v = this.inlineViews[slot];
    if (v === undefined || v.buffer !== msg.buffer || v.byteOffset !== msg.byteOffset + at || v.length !== length) {
      v = msg.subarray(at, at + length);
      this.inlineViews[slot] = v;
    }
    return v;
  }

  /** A request is done with the inline data in receive buffer `slot`. */
  releaseReceive(slot: number): void {
    this.heldReceives--;
    this.rc.releaseReceive(slot);
  }


  /**
   * The seed's layout: N keyed descriptors after the command (DECISIONS.md item 4), copied
   * into the slot and validated once here.
   */
  private keyedVqRequest(msg: Buffer, req: KeyedVqRequest): void {
    const rest = msg.length - COMMAND_SIZE;
    if (rest % KEYED_DESCRIPTOR_SIZE !== 0) {
      req.problem = `${rest} bytes after the command are not whole keyed descriptors`;
      return;
    }
    const n = rest / KEYED_DESCRIPTOR_SIZE;
    const limit = this.maxKeyedDescriptors;
    const p = validateKeyedDescriptorBytes(msg, COMMAND_SIZE, n, req.outLength, req.inLength, limit);
    if (n <= limit) {
      copyBytes(msg, COMMAND_SIZE, rest, req.descriptors, 0);
      req.descriptorCount = n;
    }
    if (p !== 'none') req.problem = `${p} (${n} descriptors, limit ${limit})`;
  }

  /** HOLD_RECEIVE when a request keeps the message's receive buffer (inline data used in place). */
  private onMessage(msg: Buffer, slot: number): void | typeof HOLD_RECEIVE {
    this.establish();
    if (this.state !== 'open' || !this.handler) return;
    if (msg.length < COMMAND_SIZE) return this.violation(`${msg.length}-byte message is shorter than a command`);
    const command = this.command;
    copyBytes(msg, 0, COMMAND_SIZE, command, 0);
    const opcode = getLE16(command, COMMAND_HEADER.opcode);
    const rest = msg.length - COMMAND_SIZE;
    if (opcode === Opcode.Connect) {
      const announced = getLE32(command, CONNECT_COMMAND.length);
      if (rest !== announced || (rest !== 0 && rest !== CONNECT_BODY_SIZE)) {
        return this.violation(`Connect announces a ${announced}-byte body and carries ${rest} bytes (0 or ${CONNECT_BODY_SIZE} are valid)`);
      }
      this.connectCommandId = getLE16(command, COMMAND_HEADER.commandId);
      this.reserveMemory(command);
      this.handler.onCommand(command, rest === 0 ? EMPTY : Buffer.from(msg.subarray(COMMAND_SIZE)));
      return;
    }
    if (opcode === Opcode.Vq) {
      const outLength = getLE32(command, VQ_COMMAND.outLength);
      // Each command's memory belongs to its own request slot, never to its id: a reused id
      // (which the target queue refuses by closing the queue) cannot touch another's buffers.
      const req = this.takeSlot();
      const inline = carriesInline(this.inlineSize, outLength);
      req.start(getLE16(command, COMMAND_HEADER.commandId), outLength, getLE32(command, VQ_COMMAND.inLength), inline);
      const held = inline ? this.inlineVqRequest(msg, req, slot) : (this.keyedVqRequest(msg, req), false);
      this.handler.onCommand(command, req);
      // Held: the request posts the buffer again when it is done with it (possibly already, if
      // the target queue refused the command during onCommand).
      return held ? HOLD_RECEIVE : undefined;
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
    if (this.reservation || getLE16(command, CONNECT_COMMAND.deviceInstanceId) === CONTROL_QUEUE_INSTANCE_ID) return;
    const queueSize = getLE16(command, CONNECT_COMMAND.queueSize) || this.options.recvDepth;
    this.reservation = this.memory.reserve(Math.min(queueSize, this.options.recvDepth));
  }

  /** Pool memory for one request: waits while the device's pools are short, never registers. */
  acquire(size: number): Promise<RegisteredBuffer> {
    return this.memory.acquire(Math.max(size, 1), this.gone.signal);
  }

  /** Pool memory for one request if some is free now (never waits); the sizes must be servable. */
  tryAcquire(size: number): RegisteredBuffer | null {
    return this.memory.tryAcquire(Math.max(size, 1));
  }

  /** Why this target cannot serve the request's descriptors or lengths, or null. */
  refusal(req: KeyedVqRequest): string | null {
    if (req.problem) return req.problem;
    if (req.outLength > this.options.maxVqPayload) return `device-readable length ${req.outLength} exceeds the ${this.options.maxVqPayload}-byte limit`;
    if (req.outLength + req.inLength > this.memory.largestBuffer) {
      return `${req.outLength}+${req.inLength} bytes exceed the largest target buffer (${this.memory.largestBuffer} bytes)`;
    }
    return null;
  }

  /** Whether the request can be served (readOut/writable say why not). */
  servable(req: KeyedVqRequest): boolean {
    return req.problem === null && req.outLength <= this.options.maxVqPayload && req.outLength + req.inLength <= this.memory.largestBuffer;
  }

  /** A slot's RDMA READ chain (its done() reports). */
  postRead(chain: SendChain): void {
    this.rc.sendQueue.postChain(chain);
  }

  sendCompletion(completion: Buffer, payload?: Buffer): void {
    if (this.state !== 'open' && this.state !== 'closing') return;
    if (this.connectCommandId !== null && getLE16(completion, COMPLETION_HEADER.commandId) === this.connectCommandId) {
      this.connectCommandId = null;
      // A successful Connect: the full receive ring, before the answer leaves (the peer may send
      // its next commands as soon as it has it). A refused Connect leaves the connection unbound
      // with its small ring.
      if (getLE16(completion, COMPLETION_HEADER.status) === Status.SUCCESS) {
        try {
          this.rc.growReceives();
          // A virtqueue's (the control queue sends no VQ completions).
          if (this.reservation) this.registerCompletionPool();
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
   * Posts the RDMA WRITEs and the completion SEND as one chain (the request slot's own) and
   * calls `done` at once: the initiator may send its next command as soon as the completion
   * lands, before our own send completion is polled, so the command must stop counting as in
   * flight now. If the chain fails the queue pair is in the error state and no status could
   * reach the initiator anyway; the connection closes through onBroken.
   */
  completeVq(request: VqRequestData, completion: Buffer, written: number, done: (err: Error | null) => void): void {
    if (!(request instanceof KeyedVqRequest) || request.connection !== this) {
      return done(new TypeError(`${this.peer}: completeVq for a request this connection did not deliver`));
    }
    const req = request;
    if (this.state === 'closed') return done(null);
    if (written > 0) {
      if (written > req.inLength) return done(new RangeError(`${this.peer}: ${written} bytes written into ${req.inLength} device-writable bytes`));
      // The device filled the writable part of the request's own buffer (writable() took it):
      // the WRITEs go out from there, no staging copy.
      if (!req.data) return done(new RangeError(`${this.peer}: ${written} bytes written into a request whose writable buffer was never taken`));
    }
    // vof remote invalidation: the completion ends the initiator's key of desc[0] on arrival
    // (after the WRITEs before it, which the QP executes first), so the initiator posts no
    // LOCAL_INV for it. Never for a request whose descriptors were refused.
    const invalidate = this.remoteInvalidation && req.problem === null && req.descriptorCount > 0 ? req.key(0) : null;
    if (invalidate !== null) this.transferCounts.remoteInvalidations++;
    req.postCompletion(completion, written, invalidate, this.rc.sendQueue);
    done(null);
  }

  /** A slot's completion chain failed: the queue pair is in error and onBroken closes the connection. */
  chainFailed(req: KeyedVqRequest, err: Error): void {
    this.log.debug(`${this.peer}: command ${req.commandId}: ${err.message}`);
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
    // Requests still in flight give their memory back when the target queue releases them (onClose).
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
