import { COMMAND_SIZE, COMPLETION_SIZE, CONNECT_BODY_SIZE } from '../../protocol/constants.js';
import { REDIRECT_RECORD_SIZE, VOF_STATUS_EREDIRECT } from '../../protocol/redirect-record.js';
import { encodeKeyedDescriptorWords } from '../../protocol/keyed-descriptor.js';
import { KEYED_DESCRIPTOR_SIZE } from '../../protocol/constants.js';
import { carriesInline, inlineRequestMessageSize } from '../../protocol/inline-data.js';
import type { Logger } from '../../util/log.js';
import { formatRdmaPeer, numericHost } from '../address.js';
import type { ConnectOptions, Endpoint, InitiatorCapabilities, InitiatorConnection, InitiatorConnectionHandler } from '../transport.js';
import { deviceOf, followDeviceRemoval } from './device-removal.js';
import { MemoryRegistrationCache, type PinEntry, type PinnedRegistrations } from './memory-registration-cache.js';
import type { PinnedMemory } from '../pinned-memory.js';
import type { CmEvent, CmId, EventChannel, MemoryRegion, MemoryWindow, NativeBinding, SendWr } from './native-binding.js';
import { WrOpcode } from './native-binding.js';
import { BounceArena, windowedAccess, type BounceSlice } from './initiator-memory.js';
import { nicMemories, type NicMemory, type NicMemoryLease } from './nic-memory.js';
import { RcConnection } from './rc-connection.js';
import type { RegisteredBuffer, RegisteredPool } from './registered-pool.js';
import type { SendChain } from './send-queue.js';
import { initiatorConnParam } from './rdma-limits.js';
import { VQ_COMMAND } from '../../protocol/command.js';
import { VQ_COMPLETION } from '../../protocol/completion.js';
import { getLE16, getLE32 } from '../../protocol/fields.js';
import { COMMAND_HEADER, COMPLETION_HEADER } from '../../protocol/header.js';

/** With the opt-in registration cache, caller buffers at least this large are registered in place. */
const DIRECT_MIN = 16 * 1024;
/** Inline bytes from registered memory below this are copied into the SEND anyway (a second SGE costs the NIC more than a copy this small). */
const INLINE_TAIL_MIN = 512;
const RECV_SIZE = 64;
/** A control queue may receive an EREDIRECT completion with its redirect record in one SEND. */
const CONTROL_RECV_SIZE = COMPLETION_SIZE + REDIRECT_RECORD_SIZE;
const DEFAULT_QUEUE_SIZE = 256;
/** Default bounce memory: this much per queue slot, within [BOUNCE_MIN, BOUNCE_MAX]. */
const BOUNCE_PER_SLOT = 32 * 1024;
const BOUNCE_MIN = 2 * 1024 * 1024;
const BOUNCE_MAX = 16 * 1024 * 1024;

/**
 * A virtqueue connection's pooled send slots: its VQ commands go out from their command slots'
 * own SEND buffers, so the pool serves only its few other messages (Connect, Disconnect).
 */
const NON_VQ_SEND_SLOTS = 8;
const NO_BUFFERS: readonly Buffer[] = [];
const EMPTY = Buffer.alloc(0);

/**
 * Bytes of a slot's own bounce area (a virtio-blk header or status byte needs no arena call).
 * They come from a pool of their own, not from the arena: kept for the connection's life, pieces
 * of the arena taken one by one as slots are first used would cut it into ranges too short for a
 * large command, which would then wait forever.
 */
const SLOT_BOUNCE = 256;

/**
 * A SendChain for one command's binds and SEND. Each slot has one; a command whose id is reused
 * before the previous command's send completion arrived (the target's answer may overtake it)
 * gets a new one, so the queue never sees one chain twice.
 */
class CommandChain implements SendChain {
  readonly wrs: SendWr[] = [];
  readonly what = 'VQ command';
  id = 0;
  inFlight = false;
  constructor(private readonly connection: RdmaInitiatorConnection) {}
  done(err: Error | null): void {
    this.inFlight = false;
    if (err) this.connection.teardown(err);
  }
}

/** A SendChain for the LOCAL_INVs that end a completed command's keys; then the caller hears of it. */
class InvalidationChain implements SendChain {
  readonly wrs: SendWr[] = [];
  readonly what = "invalidating a command's keys";
  id = 0;
  constructor(
    private readonly connection: RdmaInitiatorConnection,
    private readonly slot: CommandSlot,
  ) {}
  done(err: Error | null): void {
    if (err) return this.connection.teardown(err);
    this.slot.bound = 0;
    this.connection.keysDead(this.slot);
  }
}

/**
 * Transport state of one command id (ids are below the queue size, so this lives in an array
 * indexed by id), with everything a command needs made on first use and kept for the
 * connection's life: its windows and their bind and invalidate work requests, its registered
 * SEND buffer, a small bounce area, the arrays its buffers are sorted into. While the command
 * is in flight the first `bound` windows expose its bytes to the target. In steady state a
 * command allocates no object, array, closure or promise here.
 */
class CommandSlot {
  busy = false;
  /** Its completion arrived; its windows are being invalidated. */
  completing = false;
  readonly windows: MemoryWindow[] = [];
  /**
   * The key of each window's latest bind, kept in step with the addon (which gives every bind
   * ibv_inc_rkey of the window's key): reading `rkey`/`nextRkey` is a native call per command,
   * about a tenth of the initiator's CPU at 4 KiB in the soft-RoCE VM (profile, issue 18).
   */
  readonly keys: number[] = [];
  /** Bind and invalidate work requests, one each per window. */
  readonly binds: SendWr[] = [];
  readonly invalidates: SendWr[] = [];
  bound = 0;
  /** This slot's own bounce bytes (SLOT_BOUNCE, from the connection's small bounce pool, once). */
  own: RegisteredBuffer | null = null;
  /** The arena slice of a command whose bounced bytes do not fit `own`, released at the end. */
  slice: BounceSlice | null = null;
  /** Where this command's bounced bytes are: `own` or `slice`. */
  bounce: { readonly mr: MemoryRegion; readonly offset: number; readonly view: Buffer } | null = null;
  /** Device-writable bytes to copy back from the bounce area: caller buffer, bounce offset, in-stream offset. */
  readonly copyTo: Buffer[] = [];
  readonly copyFrom: number[] = [];
  readonly copyAt: number[] = [];
  copies = 0;
  /** Registration cache entries to release (opt-in cache only). */
  readonly cached: Array<() => void> = [];
  /** Pinned buffers (RemoteDevice.pinMemory) the command's windows are bound over. */
  readonly pinned: Array<PinEntry | null> = [];
  /** Entries of `pinned` in use (filled in place: emptying an array with length = 0 drops its storage, reallocated on the next push). */
  pinnedCount = 0;
  /** The command's buffers, readable ones first: region (null: bounced) and offset in it. */
  readonly bufs: Buffer[] = [];
  readonly regions: Array<MemoryRegion | null> = [];
  readonly offsets: number[] = [];
  readableCount = 0;
  count = 0;
  /** Keyed descriptors the command needs (descriptorCount, worked out once in sendVq). */
  descriptors = 0;
  /** The SEND's message buffer (command, descriptors, inline bytes) and its work request. */
  message: RegisteredBuffer | null = null;
  send: SendWr | null = null;
  /** The SEND with a second scatter-gather entry: inline bytes straight from registered memory. */
  sendWithTail: SendWr | null = null;
  chain: CommandChain;
  readonly invalidation: InvalidationChain;
  /** The completion, kept while the keys are being invalidated. */
  readonly completion = Buffer.alloc(COMPLETION_SIZE);
  /** The command waiting for an arena slice (bounce bytes beyond `own`). */
  pendingCommand: Buffer | null = null;
  pendingOut: readonly Buffer[] = NO_BUFFERS;
  pendingInline = false;
  /** acquire()'s callback, bound once. */
  readonly onBounce: (slice: BounceSlice) => void;

  constructor(connection: RdmaInitiatorConnection) {
    this.chain = new CommandChain(connection);
    this.invalidation = new InvalidationChain(connection, this);
    this.onBounce = (slice) => connection.bounceReady(this, slice);
  }
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
  readonly capabilities: InitiatorCapabilities = { keyed: true, registeredMemory: true };
  maxKeyedDescriptors = 1;
  private handler: InitiatorConnectionHandler | null = null;
  private readonly rc: RcConnection;
  /** The process's memory of this connection's NIC (shared with every connection on it, both ends). */
  readonly memory: NicMemory;
  private readonly memoryLease: NicMemoryLease;
  /** The NIC's name (the memory table's key), read once: a removed device may no longer say it. */
  private readonly nic: string;
  private readonly arena: BounceArena | null;
  private readonly registrations: MemoryRegistrationCache | null;
  /** The owner's pinned buffers and their registrations in this connection's PD. */
  private readonly pinnedMemory: PinnedMemory | null;
  private readonly pins: PinnedRegistrations | null;
  private readonly slots: CommandSlot[];
  private closed = false;
  private disconnected: (() => void) | null = null;
  /** vof inline data: readable parts up to this size go in the SEND (0: seed layout only). */
  private readonly inlineDataBytes: number;
  /** Where registered() left the offset of the buffer it found. */
  private registeredOffset = 0;

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
    this.nic = cmId.deviceName() ?? '?';
    this.memoryLease = nicMemories.lease(this.nic, () => new binding.ProtectionDomain(cmId));
    this.memory = this.memoryLease.memory;
    try {
      this.rc = new RcConnection(
        binding,
        cmId,
        { recvDepth: queueSize + 64, recvSize: controlQueue ? CONTROL_RECV_SIZE : RECV_SIZE, sendDepth, sendSize, sendSlots: controlQueue ? undefined : NON_VQ_SEND_SLOTS, memory: { memory: this.memory, release: () => {} } }, // the lease is released by teardown, after the arena and pins
        { onMessage: (m, invalidated) => this.onMessage(m, invalidated), onBroken: (err) => this.teardown(err) },
      );
    } catch (err) {
      this.memoryLease.release();
      throw err;
    }
    this.slots = [];
    if (controlQueue) {
      this.arena = null;
      this.registrations = null;
      this.pinnedMemory = null;
      this.pins = null;
      return;
    }
    for (let i = 0; i < queueSize; i++) this.slots.push(new CommandSlot(this));
    const bounceBytes = options.keyedMemory?.bounceBytes ?? Math.min(BOUNCE_MAX, Math.max(BOUNCE_MIN, queueSize * BOUNCE_PER_SLOT));
    try {
      this.arena = new BounceArena(this.memory, bounceBytes, windowedAccess(binding));
    } catch (err) {
      this.rc.destroy();
      this.memoryLease.release();
      throw err;
    }
    this.registrations = options.keyedMemory?.registrationCache ? new MemoryRegistrationCache(this.memory.pd, 64) : null;
    // One SEND buffer per slot, registered once with the rest of the connection's memory.
    this.sendSize = sendSize;
    try {
      this.messages = this.rc.createPool(sendSize, queueSize, 0);
      this.smallBounce = this.rc.createPool(SLOT_BOUNCE, queueSize, windowedAccess(binding));
    } catch (err) {
      // As for the arena above: what was set up goes, the pools with the connection's verbs.
      this.arena.destroy();
      this.rc.destroy();
      this.memoryLease.release();
      throw err;
    }
    // Last: nothing after it can fail, so teardown is the one place that detaches them.
    this.pinnedMemory = options.pinnedMemory ?? null;
    this.pins = this.pinnedMemory ? this.memory.attachPins(this.pinnedMemory, windowedAccess(binding)) : null;
  }

  private readonly smallBounce: RegisteredPool | null = null;

  private readonly sendSize: number = 0;
  private readonly messages: RegisteredPool | null = null;

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
        if (conn) nicMemories.forget(conn.nic, conn.memory);
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
    if (msg.length === CONTROL_RECV_SIZE && getLE16(msg, COMPLETION_HEADER.status) === VOF_STATUS_EREDIRECT) {
      // vof redirect: the record rides in the completion's SEND (docs/PROTOCOL.md "Redirect").
      // InitiatorQueue checks that it answers a Connect that announced redirect support.
      const completion = Buffer.from(msg.subarray(0, COMPLETION_SIZE));
      const problem = this.handler?.expectedPayload(completion);
      if (typeof problem === 'string') {
        this.teardown(new Error(`${this.peer}: ${problem}`));
        return;
      }
      // Delivered like a stream payload: into the buffers the initiator queue hands out for it.
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
    // The receive buffer, valid during this call only (the initiator queue reads it and keeps nothing).
    const completion = msg;
    const id = getLE16(completion, COMPLETION_HEADER.commandId);
    const slot = id < this.slots.length ? this.slots[id]! : null;
    if (invalidatedKey !== null && !(slot?.busy && !slot.completing && slot.bound > 0 && slot.keys[0] === invalidatedKey)) {
      // vof remote invalidation ends exactly the completed command's first key; a target that
      // ends any other key of ours (another command's, a stale one) is not to be trusted.
      this.log.warn(`${this.peer}: the completion of command ${id} invalidated key 0x${invalidatedKey.toString(16)}, not that command's first keyed descriptor's: closing`);
      this.teardown(new Error(`${this.peer}: a completion invalidated a key it does not own`));
      return;
    }
    if (!slot?.busy) {
      // Not a VQ command of ours (a non-VQ command, an event, or a bogus id the initiator queue rejects).
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
    completion.copy(slot.completion, 0, 0, COMPLETION_SIZE);
    const chain = slot.invalidation;
    setWrs(chain.wrs, slot.invalidates, first, slot.bound, null);
    this.keyStats.localInvalidations += chain.wrs.length;
    this.rc.sendQueue.postChain(chain);
  }

  /** The LOCAL_INVs of a slot's command have completed (InvalidationChain). */
  keysDead(slot: CommandSlot): void {
    if (!this.closed) this.finish(slot, slot.completion);
  }

  /** Deliver a VQ completion whose keys are dead: copy device-written bytes back, free the slot. */
  private finish(slot: CommandSlot, completion: Buffer): void {
    if (getLE16(completion, COMPLETION_HEADER.status) === 0 && slot.copies > 0) {
      const written = getLE32(completion, VQ_COMPLETION.length);
      const from = slot.bounce!.view;
      for (let k = 0; k < slot.copies; k++) {
        const at = slot.copyAt[k]!;
        if (at >= written) break;
        const to = slot.copyTo[k]!;
        const n = Math.min(to.length, written - at);
        const off = slot.copyFrom[k]!;
        // Byte by byte when few (a status byte): Buffer#copy from part of a buffer makes a view.
        if (n <= 64) for (let i = 0; i < n; i++) to[i] = from[off + i]!;
        else from.copy(to, 0, off, off + n);
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
    const id = getLE16(command, COMMAND_HEADER.commandId);
    const slot = id < this.slots.length ? this.slots[id]! : null;
    if (!slot || slot.busy || !this.arena) {
      // The initiator queue keeps command ids below the queue size and unique in flight.
      this.teardown(new Error(`VQ command id ${id} is ${slot ? 'already in flight' : `not below the queue size ${this.slots.length}`}`));
      return;
    }
    slot.busy = true;
    // vof inline data: the readable bytes ride in the SEND; descriptors describe the writable part only.
    const inline = carriesInline(this.inlineDataBytes, getLE32(command, VQ_COMMAND.outLength));
    let bounced: number;
    try {
      this.place(slot, inline ? NO_BUFFERS : out, inBuffers, false);
      slot.descriptors = this.descriptorCount(slot);
      if (slot.descriptors > this.maxKeyedDescriptors) {
        // Too many pieces for the target: everything through one bounce run per direction.
        for (const r of slot.cached.splice(0)) r();
        releasePins(slot);
        this.place(slot, inline ? NO_BUFFERS : out, inBuffers, true);
        slot.descriptors = this.descriptorCount(slot);
        if (slot.descriptors > this.maxKeyedDescriptors) throw new Error(`a VQ command needs ${slot.descriptors} keyed descriptors; the target allows ${this.maxKeyedDescriptors}`);
      }
      bounced = bounceBytes(slot);
      if (this.pinnedMemory) this.count(slot, inline ? getLE32(command, VQ_COMMAND.outLength) : 0, bounced);
    } catch (err) {
      this.releaseSlot(slot);
      this.teardown(err as Error);
      return;
    }
    if (bounced === 0) return this.postCommand(slot, command, inline ? out : null);
    if (bounced <= SLOT_BOUNCE) {
      slot.own ??= this.smallBounce!.acquire(SLOT_BOUNCE);
      slot.bounce = slot.own;
      return this.postCommand(slot, command, inline ? out : null);
    }
    // More than the slot's own area: a slice of the arena, now or when one is free. The
    // command and its readable buffers wait in the slot meanwhile (the caller keeps them).
    slot.pendingCommand = command;
    slot.pendingInline = inline;
    slot.pendingOut = out;
    this.arena.acquire(bounced, slot.onBounce);
  }

  /** How the command's bytes move (PinnedMemory.stats): every byte once, in place, bounced or inline. */
  private count(slot: CommandSlot, inlineBytes: number, bounced: number): void {
    const stats = this.pinnedMemory!.stats;
    let total = 0;
    for (let i = 0; i < slot.count; i++) total += slot.bufs[i]!.length;
    stats.inPlaceBytes += total - bounced;
    stats.bouncedBytes += bounced;
    stats.inlineBytes += inlineBytes;
    if (bounced > 0) stats.bouncedCommands++;
  }

  /** An arena slice for a slot's waiting command (BounceArena.acquire). */
  bounceReady(slot: CommandSlot, slice: BounceSlice): void {
    const command = slot.pendingCommand;
    const out = slot.pendingOut;
    slot.pendingCommand = null;
    slot.pendingOut = NO_BUFFERS;
    if (this.closed || command === null) return;
    slot.slice = slice;
    slot.bounce = slice;
    this.postCommand(slot, command, slot.pendingInline ? out : null);
  }

  private postCommand(slot: CommandSlot, command: Buffer, inlineOut: readonly Buffer[] | null): void {
    try {
      this.post(slot, command, inlineOut);
    } catch (err) {
      this.teardown(err as Error);
    }
  }

  /**
   * Sort a command's buffers into the slot: in place when registered (allocateBuffer, or the
   * opt-in cache), else bounced (region null). `coalesce`: bounce everything.
   */
  private place(slot: CommandSlot, out: readonly Buffer[], inBuffers: readonly Buffer[], coalesce: boolean): void {
    slot.count = 0;
    this.placeAll(slot, out, coalesce);
    slot.readableCount = slot.count;
    this.placeAll(slot, inBuffers, coalesce);
  }

  private placeAll(slot: CommandSlot, bufs: readonly Buffer[], coalesce: boolean): void {
    for (let k = 0; k < bufs.length; k++) {
      const buf = bufs[k]!;
      if (buf.length === 0) continue;
      let region: MemoryRegion | null = null;
      let offset = 0;
      if (!coalesce) {
        // allocateBuffer memory, or a pinned buffer (registered once): in place whatever its size.
        region = this.registered(slot, buf);
        if (region) offset = this.registeredOffset;
        else if (this.registrations && buf.length >= DIRECT_MIN) {
          const reg = this.registrations.acquire(buf, windowedAccess(this.binding));
          slot.cached.push(reg.release);
          region = reg.mr;
          offset = reg.offset;
        }
      }
      const i = slot.count++;
      slot.bufs[i] = buf;
      slot.regions[i] = region;
      slot.offsets[i] = offset;
    }
  }

  /**
   * The region `buf` already lies in, if any: allocateBuffer memory, or a pinned buffer
   * (RemoteDevice.pinMemory), which is then held for the slot's command (released when the slot
   * is cleared). Its offset in the region is left in `registeredOffset` (no object per lookup).
   */
  private registered(slot: CommandSlot, buf: Buffer): MemoryRegion | null {
    const region = this.memory.regionOf(buf);
    if (region !== null) {
      this.registeredOffset = buf.byteOffset - region.buffer.byteOffset;
      return region;
    }
    const pin = this.pins !== null ? this.pins.find(buf) : null;
    if (pin === null) return null;
    this.pins!.use(pin);
    slot.pinned[slot.pinnedCount++] = pin;
    this.registeredOffset = buf.byteOffset - pin.buffer.byteOffset;
    return pin.mr;
  }

  /** Keyed descriptors the slot's command needs: one per in-place buffer, one per run of bounced ones, per direction. */
  private descriptorCount(slot: CommandSlot): number {
    let n = 0;
    for (let dir = 0; dir < 2; dir++) {
      const from = dir === 0 ? 0 : slot.readableCount;
      const to = dir === 0 ? slot.readableCount : slot.count;
      let inRun = false;
      for (let i = from; i < to; i++) {
        if (slot.regions[i] !== null) {
          n++;
          inRun = false;
        } else if (!inRun) {
          n++;
          inRun = true;
        }
      }
    }
    return n;
  }

  /**
   * Write the SEND (command, descriptors, inline bytes) into the slot's registered buffer, bind
   * one window per keyed descriptor over exactly its bytes, and post the binds chained before
   * the SEND (the QP executes them in order, so the keys work by the time the target has the
   * command).
   */
  private post(slot: CommandSlot, command: Buffer, inlineOut: readonly Buffer[] | null): void {
    const message = (slot.message ??= this.messages!.acquire(this.sendSize));
    const view = message.view;
    const needed = COMMAND_SIZE + slot.descriptors * KEYED_DESCRIPTOR_SIZE + (inlineOut ? getLE32(command, VQ_COMMAND.outLength) : 0);
    if (needed > view.length) throw new Error(`a ${needed}-byte VQ command message exceeds the ${view.length}-byte send buffer`);
    command.copy(view, 0, 0, COMMAND_SIZE);
    let at = COMMAND_SIZE;
    slot.copies = 0;
    const { REMOTE_READ, REMOTE_WRITE } = this.binding.access;
    let bounceAt = 0;
    for (let dir = 0; dir < 2; dir++) {
      const from = dir === 0 ? 0 : slot.readableCount;
      const to = dir === 0 ? slot.readableCount : slot.count;
      const access = dir === 0 ? REMOTE_READ : REMOTE_WRITE;
      // A run of bounced buffers is one descriptor over their bytes in the bounce area.
      let runStart = -1;
      let streamAt = 0;
      for (let i = from; i < to; i++) {
        const buf = slot.bufs[i]!;
        const region = slot.regions[i] ?? null;
        if (region !== null) {
          if (runStart >= 0) {
            at = this.bind(slot, slot.bounce!.mr, slot.bounce!.offset + runStart, bounceAt - runStart, access, view, at);
            runStart = -1;
          }
          at = this.bind(slot, region, slot.offsets[i]!, buf.length, access, view, at);
        } else {
          const b = slot.bounce!;
          if (runStart < 0) runStart = bounceAt;
          if (dir === 1) {
            const k = slot.copies++;
            slot.copyTo[k] = buf;
            slot.copyFrom[k] = bounceAt;
            slot.copyAt[k] = streamAt;
          } else buf.copy(b.view, bounceAt);
          bounceAt += buf.length;
        }
        streamAt += buf.length;
      }
      if (runStart >= 0) at = this.bind(slot, slot.bounce!.mr, slot.bounce!.offset + runStart, bounceAt - runStart, access, view, at);
    }
    // Inline bytes follow the descriptors in the SEND. A last readable piece that is registered
    // memory (allocateBuffer, pinned) goes as the SEND's second scatter-gather entry, read by the NIC
    // where it is: the bytes on the wire are the same, with no copy. Small pieces (the request
    // header) and unregistered ones are copied.
    let tail: MemoryRegion | null = null;
    let tailOffset = 0;
    let tailLength = 0;
    if (inlineOut) {
      let copied = inlineOut.length;
      const last = copied > 0 ? inlineOut[copied - 1]! : null;
      if (last !== null && last.length >= INLINE_TAIL_MIN) {
        tail = this.registered(slot, last);
        if (tail !== null) {
          tailOffset = this.registeredOffset;
          tailLength = last.length;
          copied--;
          if (this.pinnedMemory) this.pinnedMemory.stats.inlineInPlaceBytes += tailLength;
        }
      }
      for (let k = 0; k < copied; k++) at += inlineOut[k]!.copy(view, at);
    }
    let chain = slot.chain;
    if (chain.inFlight) {
      // The previous command's send completion has not come back yet (its answer overtook it).
      chain = slot.chain = new CommandChain(this);
    }
    let send: SendWr;
    if (tail === null) {
      send = slot.send ??= { wrId: 0, opcode: WrOpcode.Send, signaled: true, sg: [message.mr, message.offset, 0] };
      send.sg[2] = at;
    } else {
      send = slot.sendWithTail ??= { wrId: 0, opcode: WrOpcode.Send, signaled: true, sg: [message.mr, message.offset, 0, tail, 0, 0] };
      send.sg[0] = message.mr;
      send.sg[1] = message.offset;
      send.sg[2] = at;
      send.sg[3] = tail;
      send.sg[4] = tailOffset;
      send.sg[5] = tailLength;
    }
    setWrs(chain.wrs, slot.binds, 0, slot.bound, send);
    chain.inFlight = true;
    this.rc.sendQueue.postChain(chain);
  }

  /**
   * The slot's next window over (region, offset, length): its bind work request, and its keyed
   * descriptor written into the message at `at`; returns where the next descriptor goes.
   */
  private bind(slot: CommandSlot, region: MemoryRegion, offset: number, length: number, access: number, message: Buffer, at: number): number {
    const i = slot.bound++;
    if (i === slot.windows.length) {
      const window = new this.binding.MemoryWindow(this.memory.pd);
      slot.windows.push(window);
      slot.keys.push(window.rkey);
      slot.binds.push({ wrId: 0, opcode: WrOpcode.BindWindow, signaled: false, sg: [region, 0, 0], window, access });
      slot.invalidates.push({ wrId: 0, opcode: WrOpcode.LocalInvalidate, signaled: false, sg: [], window });
    }
    const key = incRkey(slot.keys[i]!);
    slot.keys[i] = key;
    const wr = slot.binds[i]!;
    wr.sg[0] = region;
    wr.sg[1] = offset;
    wr.sg[2] = length;
    wr.access = access;
    const base = regionAddress(region);
    const low = base.low + offset;
    encodeKeyedDescriptorWords(message, at, low >>> 0, base.high + Math.floor(low / 0x1_0000_0000), length, key);
    return at + KEYED_DESCRIPTOR_SIZE;
  }

  /** allocateBuffer: registered memory (of this RDMA device) that sendVq moves with no copy. */
  allocateBuffer(size: number): Buffer {
    return this.memory.allocateBuffer(size, windowedAccess(this.binding));
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
      slot.keys.length = 0;
      slot.binds.length = 0;
      slot.invalidates.length = 0;
      slot.pendingCommand = null;
      slot.pendingOut = NO_BUFFERS;
      slot.bound = 0;
      clearSlot(slot); // its bounce slice goes with the arena, destroyed below
    }
    this.registrations?.clear();
    // Every slot released its pins above (clearSlot): the last connection of this PD deregisters them.
    if (this.pinnedMemory) this.memory.detachPins(this.pinnedMemory);
    // Every verbs object before the CM id: the last CM id on a removed device lets librdmacm
    // close its verbs context, and the shared PD (the lease's last release) must be gone by then.
    this.rc.releaseVerbs();
    this.arena?.destroy();
    this.memoryLease.release();
    this.cmId.destroy();
    this.channel.close();
    const h = this.handler;
    this.handler = null;
    h?.onClose(reason);
  }
}

/**
 * A slot's command is over: free it, release its cached registrations, and hand back its arena
 * slice (not its own bounce area, which it keeps).
 */
function clearSlot(slot: CommandSlot): BounceSlice | null {
  slot.busy = false;
  slot.completing = false;
  // The caller's buffers are not kept past their command.
  for (let i = 0; i < slot.count; i++) slot.bufs[i] = EMPTY;
  for (let k = 0; k < slot.copies; k++) slot.copyTo[k] = EMPTY;
  slot.copies = 0;
  slot.count = 0;
  // Guarded: splice makes a new array even when there is nothing to take (most commands).
  if (slot.cached.length > 0) for (const r of slot.cached.splice(0)) r();
  releasePins(slot);
  const slice = slot.slice;
  slot.slice = null;
  slot.bounce = null;
  return slice;
}

/** The slot's command no longer uses its pinned buffers' registrations. */
function releasePins(slot: CommandSlot): void {
  for (let i = 0; i < slot.pinnedCount; i++) {
    const e = slot.pinned[i]!;
    slot.pinned[i] = null;
    e.owner.done(e);
  }
  slot.pinnedCount = 0;
}

/** Bytes of the slot's command that go through bounce memory. */
function bounceBytes(slot: CommandSlot): number {
  let n = 0;
  for (let i = 0; i < slot.count; i++) if (slot.regions[i] === null) n += slot.bufs[i]!.length;
  return n;
}

/** ibv_inc_rkey: the key a window's next bind gets (the low byte, its tag, goes up by one). */
function incRkey(key: number): number {
  return ((key & 0xffffff00) | ((key + 1) & 0xff)) >>> 0;
}

/** A region's address as two 32-bit halves, worked out once per region (no BigInt per command). */
const regionAddresses = new WeakMap<MemoryRegion, { low: number; high: number }>();
function regionAddress(region: MemoryRegion): { low: number; high: number } {
  let a = regionAddresses.get(region);
  if (a === undefined) {
    a = { low: Number(region.address & 0xffff_ffffn), high: Number(region.address >> 32n) };
    regionAddresses.set(region, a);
  }
  return a;
}

/**
 * Sets `wrs` (a chain's work requests, posted as it is) to `from[start..end)` and then `last`
 * when given, in place: emptying it with `length = 0` and pushing again gives its storage back
 * and allocates it anew on every command (~150 bytes of heap per command, measured).
 */
function setWrs(wrs: SendWr[], from: readonly SendWr[], start: number, end: number, last: SendWr | null): void {
  let n = 0;
  for (let i = start; i < end; i++) wrs[n++] = from[i]!;
  if (last !== null) wrs[n++] = last;
  // Shrinking by a few entries keeps the storage (V8 trims only arrays far below capacity).
  if (wrs.length !== n) wrs.length = n;
}
