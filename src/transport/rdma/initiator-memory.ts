import type { CmId, MemoryRegion, NativeBinding, ProtectionDomain } from './native-binding.js';
import { RangeAllocator, type Range } from './range-allocator.js';
import type { PinnedMemory } from '../pinned-memory.js';
import { PinnedRegistrations } from './memory-registration-cache.js';
import { WaiterQueue } from '../../util/waiter-queue.js';

/** Regions that windows bind to: local access for the NIC, MW_BIND, and no remote access at all. */
export function windowedAccess(binding: NativeBinding): number {
  return binding.access.LOCAL_WRITE | binding.access.MW_BIND;
}

/** Registered memory a caller fills in place (allocateBuffer): a slice of a slab. */
interface Slab {
  readonly region: MemoryRegion;
  readonly allocator: RangeAllocator;
  /** Live allocations by their offset in the slab. */
  readonly live: Map<number, Range>;
}

/** Smallest slab allocateBuffer registers: many small buffers share one registration. */
const SLAB_MIN = 4 * 1024 * 1024;

const byDevice = new Map<string, InitiatorNicMemory>();

/**
 * What an initiator's RDMA connections share per RDMA device: one protection domain (so that a
 * buffer registered once works on every queue of every device reached through that NIC), and
 * the registered slabs behind allocateBuffer. Its regions grant no remote access: the target
 * reaches them only through memory windows bound per command. Kept while a connection uses it
 * or a caller holds an allocated buffer; then everything is deregistered.
 */
export class InitiatorNicMemory {
  readonly pd: ProtectionDomain;
  private connections = 0;
  private readonly slabs: Slab[] = [];
  private readonly byBacking = new Map<ArrayBufferLike, Slab>();
  /** Each PinnedMemory's registrations in this PD, while a connection carrying it uses the PD. */
  private readonly pins = new Map<PinnedMemory, { readonly regs: PinnedRegistrations; readonly leave: () => void; connections: number }>();

  private constructor(
    private readonly binding: NativeBinding,
    private readonly device: string,
    cmId: CmId,
  ) {
    this.pd = new binding.ProtectionDomain(cmId);
  }

  /** The memory of the RDMA device `cmId` is resolved to; attach() it for the connection's lifetime. */
  static of(binding: NativeBinding, cmId: CmId): InitiatorNicMemory {
    const device = cmId.deviceName() ?? '?';
    let m = byDevice.get(device);
    if (!m) {
      m = new InitiatorNicMemory(binding, device, cmId);
      byDevice.set(device, m);
    }
    return m;
  }

  /**
   * The device went away: connections made from now on get a new memory (on the device that
   * may come back under the same name); this one goes with its last user.
   */
  forget(): void {
    if (byDevice.get(this.device) === this) byDevice.delete(this.device);
  }

  attach(): void {
    this.connections++;
  }

  detach(): void {
    this.connections--;
    this.releaseIfIdle();
  }

  /**
   * A connection carries `pinned`'s buffers: they are registered in this PD once (the first
   * such connection), for as long as one of them lasts (detachPins).
   */
  attachPins(pinned: PinnedMemory): PinnedRegistrations {
    let p = this.pins.get(pinned);
    if (!p) {
      const regs = new PinnedRegistrations(this.pd, windowedAccess(this.binding));
      p = { regs, leave: pinned.attach(regs), connections: 0 };
      this.pins.set(pinned, p);
    }
    p.connections++;
    return p.regs;
  }

  /** Such a connection is gone (with its commands): the last one deregisters the buffers here. */
  detachPins(pinned: PinnedMemory): void {
    const p = this.pins.get(pinned);
    if (!p || --p.connections > 0) return;
    this.pins.delete(pinned);
    p.leave();
    p.regs.clear();
  }

  private releaseIfIdle(): void {
    if (this.connections > 0 || this.slabs.some((s) => s.live.size > 0)) return;
    for (const s of this.slabs) s.region.deregister();
    this.slabs.length = 0;
    this.byBacking.clear();
    this.pd.dealloc();
    if (byDevice.get(this.device) === this) byDevice.delete(this.device);
  }

  /**
   * `size` bytes of registered memory for the caller to fill and pass to sendVq: moved with no
   * copy. Registers a new slab only when no existing one has room (never on the data path).
   */
  allocateBuffer(size: number): Buffer {
    if (!Number.isSafeInteger(size) || size <= 0) throw new RangeError(`allocateBuffer(${size}): size must be a positive integer`);
    for (const slab of this.slabs) {
      const r = slab.allocator.allocate(size);
      if (r) return this.hand(slab, r, size);
    }
    const bytes = Math.max(SLAB_MIN, Math.ceil(size / 4096) * 4096);
    const region = this.pd.registerMemory(Buffer.allocUnsafeSlow(bytes), windowedAccess(this.binding));
    const slab: Slab = { region, allocator: new RangeAllocator(bytes, 4096), live: new Map() };
    this.slabs.push(slab);
    this.byBacking.set(region.buffer.buffer, slab);
    return this.hand(slab, slab.allocator.allocate(size)!, size);
  }

  private hand(slab: Slab, r: Range, size: number): Buffer {
    slab.live.set(r.offset, r);
    return slab.region.buffer.subarray(r.offset, r.offset + size);
  }

  /** Give back a buffer from allocateBuffer (not a slice of it); using it afterwards is a bug. */
  freeBuffer(buf: Buffer): void {
    const slab = this.byBacking.get(buf.buffer);
    const at = buf.byteOffset - (slab?.region.buffer.byteOffset ?? 0);
    const r = slab?.live.get(at);
    if (!slab || !r) throw new Error('freeBuffer: not a buffer from allocateBuffer (or freed already)');
    slab.live.delete(at);
    slab.allocator.release(r);
    this.releaseIfIdle();
  }

  /**
   * The region `buf` lies in, when it is (part of) an allocateBuffer buffer; its offset there is
   * `buf.byteOffset - region.buffer.byteOffset`. (No object per call: asked per command.)
   */
  regionOf(buf: Buffer): MemoryRegion | null {
    const slab = this.byBacking.get(buf.buffer);
    if (!slab) return null;
    const offset = buf.byteOffset - slab.region.buffer.byteOffset;
    if (offset < 0 || offset + buf.length > slab.region.length) return null;
    return slab.region;
  }
}

/** Bytes of one command in the bounce arena. */
export interface BounceSlice {
  readonly mr: MemoryRegion;
  readonly offset: number;
  readonly view: Buffer;
  /** Its range of the arena; null for a command larger than the arena (its own registration). */
  readonly range: Range | null;
}

/**
 * One connection's bounce memory: a single region registered when the connection is set up,
 * sized from its queue size, from which each command takes one slice for all of its copied
 * bytes. When the arena is short a command waits (first come, first served) instead of
 * registering memory. A command larger than the whole arena is the one exception: it gets a
 * registration of its own, deregistered when it completes (counted in `oversized`).
 */
export class BounceArena {
  readonly region: MemoryRegion;
  private readonly allocator: RangeAllocator;
  /** Commands waiting for a slice; at most the connection's queue size (one slice per command). */
  private readonly waiting = new WaiterQueue<{ readonly size: number; readonly ready: (s: BounceSlice) => void }>(Number.POSITIVE_INFINITY);
  /** Registrations of oversized commands still in flight. */
  private readonly dedicated = new Set<MemoryRegion>();
  /** Commands that needed a registration of their own (larger than the arena). */
  oversized = 0;
  private destroyed = false;

  constructor(
    private readonly pd: ProtectionDomain,
    readonly size: number,
    private readonly access: number,
  ) {
    this.region = pd.registerMemory(Buffer.allocUnsafeSlow(size), access);
    this.allocator = new RangeAllocator(size);
  }

  get waiters(): number {
    return this.waiting.length;
  }

  /** Calls `ready` with a slice of `size` bytes now or, when short, once earlier waiters are served. */
  acquire(size: number, ready: (s: BounceSlice) => void): void {
    if (this.destroyed) return;
    if (!this.allocator.fits(size)) {
      this.oversized++;
      const mr = this.pd.registerMemory(Buffer.allocUnsafeSlow(size), this.access);
      const slice: BounceSlice = { mr, offset: 0, view: mr.buffer.subarray(0, size), range: null };
      this.dedicated.add(mr);
      ready(slice);
      return;
    }
    if (this.waiting.length === 0) {
      const slice = this.take(size);
      if (slice) return ready(slice);
    }
    this.waiting.push({ size, ready });
  }

  private take(size: number): BounceSlice | null {
    const r = this.allocator.allocate(size);
    if (!r) return null;
    return { mr: this.region, offset: r.offset, view: this.region.buffer.subarray(r.offset, r.offset + size), range: r };
  }

  /** Give back a slice from acquire (exactly once). */
  release(slice: BounceSlice): void {
    if (this.destroyed) return;
    if (!slice.range) {
      if (this.dedicated.delete(slice.mr)) slice.mr.deregister();
      return;
    }
    this.allocator.release(slice.range);
    while (!this.destroyed && this.waiting.length > 0) {
      const next = this.take(this.waiting.peek()!.size);
      if (!next) break;
      this.waiting.shift()!.ready(next);
    }
  }

  /** Deregister everything; waiters are dropped (their connection is gone). */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.waiting.drain();
    for (const mr of this.dedicated) mr.deregister();
    this.dedicated.clear();
    this.region.deregister();
  }
}
