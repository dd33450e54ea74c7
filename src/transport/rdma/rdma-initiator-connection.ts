import { COMMAND_SIZE, COMPLETION_SIZE, CONNECT_BODY_SIZE } from '../../protocol/constants.js';
import { REDIRECT_RECORD_SIZE, VOF_STATUS_EREDIRECT } from '../../protocol/redirect-record.js';
import { encodeKeyedDescriptor, type KeyedDescriptor } from '../../protocol/keyed-descriptor.js';
import { KEYED_DESCRIPTOR_SIZE } from '../../protocol/constants.js';
import { carriesInline, inlineRequestMessageSize, inlineRequestParts } from '../../protocol/inline-data.js';
import type { Logger } from '../../util/log.js';
import { formatRdmaPeer, numericHost } from '../address.js';
import type { ConnectOptions, Endpoint, InitiatorConnection, InitiatorConnectionHandler } from '../transport.js';
import { deviceOf, followDeviceRemoval } from './device-removal.js';
import { MemoryRegistrationCache } from './memory-registration-cache.js';
import type { CmEvent, CmId, EventChannel, MemoryRegion, MemoryWindow, NativeBinding, SendWr } from './native-binding.js';
import { WrOpcode } from './native-binding.js';
import { BounceArena, InitiatorDeviceMemory, windowedAccess, type BounceSlice } from './initiator-memory.js';
import { RcConnection } from './rc-connection.js';
import { initiatorConnParam } from './rdma-limits.js';

/** With the opt-in registration cache, caller buffers at least this large are registered in place. */
const DIRECT_MIN = 16 * 1024;
const RECV_SIZE = 64;
/** A control queue may receive an EREDIRECT completion with its redirect record in one SEND. */
const CONTROL_RECV_SIZE = COMPLETION_SIZE + REDIRECT_RECORD_SIZE;
const DEFAULT_QUEUE_SIZE = 256;
/** Default bounce memory: this much per queue slot, within [BOUNCE_MIN, BOUNCE_MAX]. */
const BOUNCE_PER_SLOT = 32 * 1024;
const BOUNCE_MIN = 2 * 1024 * 1024;
const BOUNCE_MAX = 16 * 1024 * 1024;

/** One caller buffer of a VQ command and where the NIC finds it. */
interface Piece {
  readonly buf: Buffer;
  /** Registered memory the bytes are moved from/to in place; null: copied through the bounce slice. */
  readonly at: { readonly mr: MemoryRegion; readonly offset: number } | null;
}

/**
 * Transport state of one command id (ids are below the queue size, so this lives in an array
 * indexed by id). Its windows are allocated on first use and kept for the connection's life;
 * while the command is in flight the first `bound` of them expose its bytes to the target.
 */
interface CommandSlot {
  busy: boolean;
  /** Its completion arrived; its windows are being invalidated. */
  completing: boolean;
  readonly windows: MemoryWindow[];
  bound: number;
  slice: BounceSlice | null;
  /** Device-writable bytes to copy from the bounce slice to the caller, in in-stream order. */
  readonly copyBack: Array<{ readonly to: Buffer; readonly from: Buffer; readonly at: number }>;
  /** Registration cache entries to release (opt-in cache only). */
  readonly cached: Array<() => void>;
}

/**
 * Initiator end of one RDMA CM connection. Commands go out as one SEND each. A VQ command's
 * bytes sit in registered memory that grants the target nothing by itself: a slice of this
 * connection's bounce arena (copied), a buffer from allocateBuffer, or (opt-in) a cached
 * registration of the caller's buffer. Each keyed descriptor is a type 2 memory window bound
 * over exactly that command's bytes with exactly the access the direction needs (device-readable:
 * REMOTE_READ, device-writable: REMOTE_WRITE), chained before the SEND, and invalidated when the
 * completion arrives, before the caller sees it, or when the connection closes.
 */
export class RdmaInitiatorConnection implements InitiatorConnection {
  readonly kind = 'keyed' as const;
  maxKeyedDescriptors = 1;
  private handler: InitiatorConnectionHandler | null = null;
  private readonly rc: RcConnection;
  readonly memory: InitiatorDeviceMemory;
  private readonly arena: BounceArena | null;
  private readonly registrations: MemoryRegistrationCache | null;
  private readonly slots: CommandSlot[];
  private closed = false;
  private disconnected: (() => void) | null = null;
  /** vof inline data: readable parts up to this size go in the SEND (0: seed layout only). */
  private readonly inlineDataBytes: number;

  private constructor(
    private readonly binding: NativeBinding,
    private readonly channel: EventChannel,
    private readonly cmId: CmId,
    readonly peer: string,
    options: ConnectOptions,
    private readonly log: Logger,
  ) {
    const controlQueue = options.controlQueue === true;
    // A control queue holds at most 32 commands (VIRTIO_OF_CONTROL_QUEUE_SIZE) plus events.
    const queueSize = controlQueue ? 64 : Math.max(1, options.queueSize ?? DEFAULT_QUEUE_SIZE);
    // Per command: its window binds and the SEND, then the invalidations.
    const wanted = controlQueue ? queueSize + 16 : queueSize * 4 + 32;
    const sendDepth = Math.min(wanted, cmId.maxReadDepth().maxQpWr);
    this.inlineDataBytes = options.inlineData?.bytes ?? 0;
    const sendSize = Math.max(COMMAND_SIZE + CONNECT_BODY_SIZE, options.inlineData ? inlineRequestMessageSize(options.inlineData.maxDescriptors, options.inlineData.bytes) : 0);
    this.memory = InitiatorDeviceMemory.of(binding, cmId);
    this.memory.attach();
    try {
      this.rc = new RcConnection(
        binding,
        cmId,
        { recvDepth: queueSize + 64, recvSize: controlQueue ? CONTROL_RECV_SIZE : RECV_SIZE, sendDepth, sendSize, protectionDomain: { pd: this.memory.pd, release: () => {} } }, // the PD is the connection memory's: it deallocates it after the QP is gone
        { onMessage: (m, invalidated) => this.onMessage(m, invalidated), onBroken: (err) => this.teardown(err) },
      );
    } catch (err) {
      this.memory.detach();
      throw err;
    }
    this.slots = [];
    if (controlQueue) {
      this.arena = null;
      this.registrations = null;
      return;
    }
    for (let i = 0; i < queueSize; i++) this.slots.push({ busy: false, completing: false, windows: [], bound: 0, slice: null, copyBack: [], cached: [] });
    const bounceBytes = options.keyedMemory?.bounceBytes ?? Math.min(BOUNCE_MAX, Math.max(BOUNCE_MIN, queueSize * BOUNCE_PER_SLOT));
    try {
      this.arena = new BounceArena(this.memory.pd, bounceBytes, windowedAccess(binding));
    } catch (err) {
      this.rc.destroy();
      this.memory.detach();
      throw err;
    }
    this.registrations = options.keyedMemory?.registrationCache ? new MemoryRegistrationCache(this.memory.pd, 64) : null;
  }

  static async connect(binding: NativeBinding, endpoint: Endpoint, options: ConnectOptions, log: Logger): Promise<RdmaInitiatorConnection> {
    const host = await numericHost(endpoint.host);
    const peer = formatRdmaPeer(endpoint.host, endpoint.port);
    const events: CmEvent[] = [];
    let wake: (() => void) | null = null;
    let conn: RdmaInitiatorConnection | null = null;
    const channel = new binding.EventChannel((ev) => {
      if (ev.type === 'DEVICE_REMOVAL') {
        // Before the teardown destroys the id (which the device's release waits for).
        followDeviceRemoval(binding, deviceOf(cmId));
        conn?.memory.forget();
      }
      if (conn && conn.established) return conn.onCmEvent(ev);
      events.push(ev);
      wake?.();
    });
    const cmId = new binding.CmId(channel);
    const deadline = Date.now() + options.timeoutMs;
    const expect = async (type: string, what: string): Promise<CmEvent> => {
      for (;;) {
        const ev = events.shift();
        if (ev) {
          if (ev.type === type) return ev;
          const reason = ev.type === 'REJECTED' ? 'connection refused (no Virtio-oF target listening there?)' : `${ev.type} (status ${ev.status})`;
          throw new Error(`${what} ${peer} failed: ${reason}`);
        }
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`${what} ${peer} timed out after ${options.timeoutMs} ms`);
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, left);
          wake = () => {
            clearTimeout(t);
            wake = null;
            resolve();
          };
        });
      }
    };
    try {
      const timeout = Math.max(1, Math.min(options.timeoutMs, 2000));
      cmId.resolveAddr(host, endpoint.port, timeout);
      await expect('ADDR_RESOLVED', 'resolving the RDMA address of');
      cmId.resolveRoute(timeout);
      await expect('ROUTE_RESOLVED', 'resolving the route to');
      conn = new RdmaInitiatorConnection(binding, channel, cmId, peer, options, log);
      cmId.connect(initiatorConnParam(cmId));
      await expect('ESTABLISHED', 'connecting to');
      conn.established = true;
      return conn;
    } catch (err) {
      if (conn) conn.teardown();
      else {
        cmId.destroy();
        channel.close();
      }
      throw err;
    }
  }

  private established = false;

  private onCmEvent(ev: CmEvent): void {
    if (ev.type === 'DISCONNECTED' || ev.type === 'DEVICE_REMOVAL') {
      if (this.disconnected) this.disconnected();
      else this.teardown(new Error(`${this.peer}: target disconnected`));
    }
  }

  start(handler: InitiatorConnectionHandler): void {
    this.handler = handler;
  }

  private onMessage(msg: Buffer, invalidatedKey: number | null): void {
    if (this.closed) return;
    if (msg.length === CONTROL_RECV_SIZE && msg.readUInt16LE(0) === VOF_STATUS_EREDIRECT) {
      // vof redirect: the record rides in the completion's SEND (docs/PROTOCOL.md "Redirect").
      // QueueClient checks that it answers a Connect that announced redirect support.
      const completion = Buffer.from(msg.subarray(0, COMPLETION_SIZE));
      const problem = this.handler?.expectedPayload(completion);
      if (typeof problem === 'string') {
        this.teardown(new Error(`${this.peer}: ${problem}`));
        return;
      }
      // Delivered like a stream payload: into the buffers the queue client hands out for it.
      let at = COMPLETION_SIZE;
      for (const into of this.handler?.payloadBuffers(completion) ?? []) at += msg.copy(into, 0, at);
      this.handler?.onCompletion(completion);
      return;
    }
    if (msg.length !== COMPLETION_SIZE) {
      this.log.warn(`${this.peer}: ${msg.length}-byte completion message (expected ${COMPLETION_SIZE}): closing`);
      this.teardown(new Error(`malformed completion from ${this.peer}`));
      return;
    }
    const completion = Buffer.from(msg);
    const id = completion.readUInt16LE(2);
    const slot = id < this.slots.length ? this.slots[id]! : null;
    if (invalidatedKey !== null && !(slot?.busy && !slot.completing && slot.bound > 0 && slot.windows[0]!.rkey === invalidatedKey)) {
      // vof remote invalidation ends exactly the completed command's first key; a target that
      // ends any other key of ours (another command's, a stale one) is not to be trusted.
      this.log.warn(`${this.peer}: the completion of command ${id} invalidated key 0x${invalidatedKey.toString(16)}, not that command's first keyed descriptor's: closing`);
      this.teardown(new Error(`${this.peer}: a completion invalidated a key it does not own`));
      return;
    }
    if (!slot?.busy) {
      // Not a VQ command of ours (a non-VQ command, an event, or a bogus id the queue client rejects).
      this.handler?.onCompletion(completion);
      return;
    }
    if (slot.completing) {
      // Delivering it would tell the caller the command is over while its keys still work.
      this.teardown(new Error(`${this.peer}: a second completion for command ${id}`));
      return;
    }
    slot.completing = true;
    // The target's keys die before the caller hears of the completion: the first one may have
    // died with the completion's arrival already (vof remote invalidation), the rest here.
    const first = invalidatedKey === null ? 0 : 1;
    if (first === 1) this.keyStats.remoteInvalidations++;
    if (slot.bound === first) {
      slot.bound = 0;
      this.finish(slot, completion);
      return;
    }
    const wrs: SendWr[] = [];
    for (let i = first; i < slot.bound; i++) wrs.push({ wrId: 0, opcode: WrOpcode.LocalInvalidate, signaled: false, sg: [], window: slot.windows[i]! });
    this.keyStats.localInvalidations += wrs.length;
    this.rc.sendQueue.post(wrs, `invalidating the keys of command ${id}`).then(
      () => {
        slot.bound = 0;
        if (!this.closed) this.finish(slot, completion);
      },
      (err: Error) => this.teardown(err),
    );
  }

  /** Deliver a VQ completion whose keys are dead: copy device-written bytes back, free the slot. */
  private finish(slot: CommandSlot, completion: Buffer): void {
    if (completion.readUInt16LE(0) === 0) {
      const written = completion.readUInt32LE(4);
      for (const c of slot.copyBack) {
        if (c.at >= written) break;
        c.from.copy(c.to, 0, 0, Math.min(c.from.length, written - c.at));
      }
    }
    this.releaseSlot(slot);
    this.handler?.onCompletion(completion);
  }

  private releaseSlot(slot: CommandSlot): void {
    const slice = clearSlot(slot);
    if (slice) this.arena?.release(slice);
  }

  sendCommand(command: Buffer, body?: Buffer): void {
    const parts = body && body.length > 0 ? [command, body] : [command];
    this.rc.send(parts, 'command').catch((err: Error) => this.teardown(err));
  }

  sendVq(command: Buffer, out: readonly Buffer[], inBuffers: readonly Buffer[]): void {
    if (this.closed) return;
    const id = command.readUInt16LE(2);
    const slot = id < this.slots.length ? this.slots[id]! : null;
    if (!slot || slot.busy || !this.arena) {
      // The queue client keeps command ids below the queue size and unique in flight.
      this.teardown(new Error(`VQ command id ${id} is ${slot ? 'already in flight' : `not below the queue size ${this.slots.length}`}`));
      return;
    }
    slot.busy = true;
    // vof inline data: the readable bytes ride in the SEND; descriptors describe the writable part only.
    const inlineOut = carriesInline(this.inlineDataBytes, command.readUInt32LE(8)) ? out : null;
    const placeOut = inlineOut ? [] : out;
    let outPieces: Piece[];
    let inPieces: Piece[];
    try {
      outPieces = this.pieces(placeOut, slot, false);
      inPieces = this.pieces(inBuffers, slot, false);
      if (descriptorCount(outPieces) + descriptorCount(inPieces) > this.maxKeyedDescriptors) {
        // Too many pieces for the target: everything through one bounce run per direction.
        for (const r of slot.cached.splice(0)) r();
        outPieces = this.pieces(placeOut, slot, true);
        inPieces = this.pieces(inBuffers, slot, true);
        const n = descriptorCount(outPieces) + descriptorCount(inPieces);
        if (n > this.maxKeyedDescriptors) throw new Error(`a VQ command needs ${n} keyed descriptors; the target allows ${this.maxKeyedDescriptors}`);
      }
    } catch (err) {
      this.releaseSlot(slot);
      this.teardown(err as Error);
      return;
    }
    const bounced = bounceBytes(outPieces) + bounceBytes(inPieces);
    const post = (slice: BounceSlice | null) => {
      if (this.closed) return;
      slot.slice = slice;
      try {
        this.post(slot, command, outPieces, inPieces, inlineOut);
      } catch (err) {
        this.teardown(err as Error);
      }
    };
    if (bounced === 0) post(null);
    else this.arena.acquire(bounced, post);
  }

  /** Where each buffer of one direction moves from: in place when registered, else bounced. */
  private pieces(bufs: readonly Buffer[], slot: CommandSlot, coalesce: boolean): Piece[] {
    const pieces: Piece[] = [];
    for (const buf of bufs) {
      if (buf.length === 0) continue;
      let at: Piece['at'] = null;
      if (!coalesce) {
        at = this.memory.locate(buf);
        if (!at && this.registrations && buf.length >= DIRECT_MIN) {
          const reg = this.registrations.acquire(buf, windowedAccess(this.binding));
          slot.cached.push(reg.release);
          at = { mr: reg.mr, offset: reg.offset };
        }
      }
      pieces.push({ buf, at });
    }
    return pieces;
  }

  /**
   * Bind one window per keyed descriptor over exactly its bytes and post the binds chained
   * before the command's SEND (the QP executes them in order, so the keys work by the time
   * the target has the command).
   */
  private post(slot: CommandSlot, command: Buffer, outPieces: Piece[], inPieces: Piece[], inlineOut: readonly Buffer[] | null): void {
    const { REMOTE_READ, REMOTE_WRITE } = this.binding.access;
    const descs: KeyedDescriptor[] = [];
    const binds: SendWr[] = [];
    let sliceAt = 0;
    const describe = (pieces: Piece[], access: number, isIn: boolean) => {
      let run: { mr: MemoryRegion; offset: number; length: number } | null = null;
      let streamAt = 0;
      const flush = () => {
        if (run) this.bind(slot, run.mr, run.offset, run.length, access, descs, binds);
        run = null;
      };
      for (const p of pieces) {
        if (p.at) {
          flush();
          this.bind(slot, p.at.mr, p.at.offset, p.buf.length, access, descs, binds);
        } else {
          const slice = slot.slice!;
          const view = slice.view.subarray(sliceAt, sliceAt + p.buf.length);
          if (isIn) slot.copyBack.push({ to: p.buf, from: view, at: streamAt });
          else p.buf.copy(view);
          if (run) run.length += p.buf.length;
          else run = { mr: slice.mr, offset: slice.offset + sliceAt, length: p.buf.length };
          sliceAt += p.buf.length;
        }
        streamAt += p.buf.length;
      }
      flush();
    };
    describe(outPieces, REMOTE_READ, false);
    describe(inPieces, REMOTE_WRITE, true);
    if (inlineOut) {
      this.rc.send(inlineRequestParts(command, descs, inlineOut), 'VQ command', binds).catch((err: Error) => this.teardown(err));
      return;
    }
    const body = Buffer.allocUnsafe(descs.length * KEYED_DESCRIPTOR_SIZE);
    descs.forEach((d, i) => encodeKeyedDescriptor(d, body, i * KEYED_DESCRIPTOR_SIZE));
    this.rc.send([command, body], 'VQ command', binds).catch((err: Error) => this.teardown(err));
  }

  /** The next window of `slot` over (mr, offset, length): its descriptor and its bind request. */
  private bind(slot: CommandSlot, mr: MemoryRegion, offset: number, length: number, access: number, descs: KeyedDescriptor[], binds: SendWr[]): void {
    if (slot.bound === slot.windows.length) slot.windows.push(new this.binding.MemoryWindow(this.memory.pd));
    const window = slot.windows[slot.bound++]!;
    descs.push({ addr: mr.address + BigInt(offset), length, key: window.nextRkey });
    binds.push({ wrId: 0, opcode: WrOpcode.BindWindow, signaled: false, sg: [mr, offset, length], window, access });
  }

  /** allocateBuffer: registered memory (of this RDMA device) that sendVq moves with no copy. */
  allocateBuffer(size: number): Buffer {
    return this.memory.allocateBuffer(size);
  }

  freeBuffer(buffer: Buffer): void {
    this.memory.freeBuffer(buffer);
  }

  /**
   * Keys ended by this side's LOCAL_INV work requests, and by the target's SEND with Invalidate
   * (vof remote invalidation), since the connection opened (tests and benchmarks).
   */
  readonly keyStats = { localInvalidations: 0, remoteInvalidations: 0 };

  /** Bounce arena statistics (tests and benchmarks). */
  get bounceStats(): { bytes: number; waiters: number; oversized: number } {
    return { bytes: this.arena?.size ?? 0, waiters: this.arena?.waiters ?? 0, oversized: this.arena?.oversized ?? 0 };
  }

  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = setTimeout(done, 2000);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.disconnected = () => {
        this.teardown();
        done();
      };
      try {
        this.cmId.disconnect();
      } catch {
        this.teardown();
        done();
      }
    }).then(() => this.teardown());
  }

  /** Release everything once; the handler hears about it exactly once. */
  teardown(reason?: Error): void {
    if (this.closed) return;
    this.closed = true;
    // Keys die first: a deallocated window is invalid at once, bound or not.
    for (const slot of this.slots) {
      for (const w of slot.windows) w.dealloc();
      slot.windows.length = 0;
      slot.bound = 0;
      clearSlot(slot); // its bounce slice goes with the arena, destroyed below
    }
    this.registrations?.clear();
    // Every verbs object before the CM id: the last CM id on a removed device lets librdmacm
    // close its verbs context, and the shared PD (memory.detach) must be gone by then.
    this.rc.releaseVerbs();
    this.arena?.destroy();
    this.memory.detach();
    this.cmId.destroy();
    this.channel.close();
    const h = this.handler;
    this.handler = null;
    h?.onClose(reason);
  }
}

/** A slot's command is over: free it, release its cached registrations, and hand back its bounce slice. */
function clearSlot(slot: CommandSlot): BounceSlice | null {
  slot.busy = false;
  slot.completing = false;
  slot.copyBack.length = 0;
  for (const r of slot.cached.splice(0)) r();
  const slice = slot.slice;
  slot.slice = null;
  return slice;
}

/** Keyed descriptors a direction needs: one per in-place buffer, one per run of bounced ones. */
function descriptorCount(pieces: readonly Piece[]): number {
  let n = 0;
  let inRun = false;
  for (const p of pieces) {
    if (p.at) {
      n++;
      inRun = false;
    } else if (!inRun) {
      n++;
      inRun = true;
    }
  }
  return n;
}

function bounceBytes(pieces: readonly Piece[]): number {
  let n = 0;
  for (const p of pieces) if (!p.at) n += p.buf.length;
  return n;
}
