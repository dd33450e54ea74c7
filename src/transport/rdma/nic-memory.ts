import { allocAligned, DATA_SKEW } from '../../util/aligned-buffer.js';
import type { Logger } from '../../util/log.js';
import { WaiterQueue } from '../../util/waiter-queue.js';
import type { PinnedMemory } from '../pinned-memory.js';
import { PinnedRegistrations } from './memory-registration-cache.js';
import type { MemoryRegion, ProtectionDomain } from './native-binding.js';
import { RangeAllocator, type Range } from './range-allocator.js';
import type { RegisteredBuffer } from './registered-pool.js';

/**
 * Registered memory of one RDMA device (NIC) for the whole process, both ends: one protection
 * domain, and every registration of pooled memory made through one method (register(), counted
 * in `registeredBytes`). The memory is carved from registered slabs of one access each, in two
 * ways:
 *
 * - equal chunks (ChunkPool): the target's request buffers in size classes, and every
 *   connection's send slots, receive ring and per-slot buffers (RegisteredPool: a reservation of
 *   N chunks, given back at the connection's teardown);
 * - ranges (RangeAllocator): the initiator's allocateBuffer buffers. (A bounce arena is a
 *   region of its own per connection, registered through register(): see BounceArena.)
 *
 * Memory is registered when a queue is set up (reserve(), a connection's pools), by
 * allocateBuffer, and for the documented oversized fallbacks; never otherwise on the data path.
 *
 * The target's request pools (NVMe-oF's and SPDK's shape): a request that finds its class empty
 * waits, in FIFO order, for a buffer another request gives back. Their registration is bounded
 * by `limitBytes`; when a queue goes, slabs beyond what the remaining queues reserved are
 * deregistered once all their buffers are back. A request takes exactly one buffer, big enough
 * for its device-readable and device-writable bytes together (out_length + in_length). Holding
 * one buffer while waiting for another is what deadlocks pools (reads hold headers and wait for
 * data, writes the reverse); with one buffer per request nobody waits while holding pool memory.
 */

/**
 * Sizes of the classes below the largest; the largest is the biggest request (out + in). Each
 * above 512 is a whole number of pages, so that with slabs aligned (see ChunkPool) every buffer's
 * data starts on a page: a block export opened with direct I/O reads into it straight from disk.
 */
export const SIZE_CLASSES: readonly number[] = [512, 16 * 1024 + 4096, 128 * 1024 + 4096, 1024 * 1024 + 4096];
/** What one queue of queue size Q adds to each class: this many bytes, at least 1, at most Q buffers. */
export const QUEUE_CLASS_BYTES = 8 * 1024 * 1024;
/** Default for `limitBytes`: registered bytes of one device's request pools at most. */
export const DEFAULT_NIC_MEMORY_BYTES = 256 * 1024 * 1024;
const PAGE = 4096;
/** Smallest range slab: many allocateBuffer buffers share one registration. */
const RANGE_SLAB_MIN = 4 * 1024 * 1024;

/** The target's request pools on this NIC. */
export interface NicMemoryOptions {
  /** The biggest buffer one request may need (out_length + in_length): the top size class. */
  readonly largestBuffer: number;
  /**
   * Registered bytes of this device's request pools at most. The first buffer of each class is
   * always registered (a request of any size can then always complete), even beyond this limit.
   */
  readonly limitBytes: number;
  /** ibv access flags of the pools; target memory is LOCAL_WRITE only (no remote key exists). */
  readonly access: number;
}

export interface NicMemoryStats {
  /** Every pooled registration of this NIC: request pools, connections' chunks, range slabs, oversized fallbacks. */
  readonly registeredBytes: number;
  /** The target's request pools (what `limitBytes` bounds). */
  readonly requestBytes: number;
  readonly limitBytes: number;
  /** ibv_reg_mr calls in this device's protection domain since it was allocated. */
  readonly registrations: number;
  /** Acquires that had to wait for a buffer (cumulative). */
  readonly waits: number;
  readonly classes: ReadonlyArray<{ readonly size: number; readonly buffers: number; readonly free: number; readonly waiting: number }>;
}

/** Given back by reserve(): the queue's share of the pools, dropped when the queue goes. */
export interface MemoryReservation {
  release(): void;
}

/** One registration carved into equal chunks. */
interface ChunkSlab {
  readonly mr: MemoryRegion;
  readonly count: number;
  /** Chunks of this slab on the free list; a slab all free may go when its pool shrinks. */
  free: number;
  /** A size class's first buffer, kept while the NIC memory lives. */
  readonly base: boolean;
}

/** Chunks per slab index stride: a slab never holds more than this many chunks. */
const SLAB_STRIDE = 1 << 20;

/**
 * Equal chunks of one size and access carved from slabs (one registration each), with a free
 * list of chunk ids (slab index × SLAB_STRIDE + chunk index). `wanted` is what its users asked
 * for: a slab all free is deregistered while the pool holds more than that. The one chunk
 * mechanism of the NIC: the target's size classes and the connections' RegisteredPools.
 */
export class ChunkPool {
  /** Indexed by the slab number in chunk ids; a deregistered slab leaves a hole. */
  readonly slabs: Array<ChunkSlab | null> = [];
  /** Free chunks; the chunk freed last is taken first. */
  readonly free: number[] = [];
  /** Chunks registered. */
  chunks = 0;
  /** Chunks the users ask for. */
  wanted = 0;

  constructor(
    private readonly memory: NicMemory,
    readonly size: number,
    readonly access: number,
    /** Slabs page-aligned after DATA_SKEW bytes (the target's request buffers: data after a 16-byte header). */
    private readonly aligned: boolean,
  ) {}

  /** Register a slab of `count` chunks (throws when the registration fails). */
  grow(count: number, base: boolean): void {
    const mr = this.memory.register(count * this.size, this.access, this.aligned);
    // A hole left by a deregistered slab is reused (none of its ids is held or free any more):
    // a process that sets up connections for years keeps as many entries as it has slabs.
    let slab = this.slabs.indexOf(null);
    if (slab < 0) slab = this.slabs.length;
    this.slabs[slab] = { mr, count, free: count, base };
    this.chunks += count;
    for (let i = count - 1; i >= 0; i--) this.free.push(slab * SLAB_STRIDE + i);
  }

  /** A free chunk's id, or -1. */
  take(): number {
    const id = this.free.pop();
    if (id === undefined) return -1;
    this.slabs[Math.floor(id / SLAB_STRIDE)]!.free--;
    return id;
  }

  slabOf(id: number): ChunkSlab {
    return this.slabs[Math.floor(id / SLAB_STRIDE)]!;
  }

  offsetOf(id: number): number {
    return (id % SLAB_STRIDE) * this.size;
  }

  /** A chunk is free again; its slab goes if all of it is free and the pool holds more than wanted. */
  give(id: number): void {
    if (this.memory.destroyed) return;
    this.free.push(id);
    const slab = this.slabOf(id);
    if (++slab.free === slab.count && this.chunks > this.wanted) this.trim();
  }

  /**
   * `count` chunks held by one user until unreserve() (a connection's pool): registered now when
   * fewer are free. Their ids are written to `ids`.
   */
  reserve(count: number, ids: number[]): void {
    if (this.free.length < count) this.grow(count - this.free.length, false);
    this.wanted += count;
    for (let i = 0; i < count; i++) ids.push(this.take());
  }

  /** Chunks from reserve() back; slabs all free beyond what others hold are deregistered. */
  unreserve(ids: readonly number[]): void {
    this.wanted -= ids.length;
    for (const id of ids) this.give(id);
  }

  /** Deregister slabs whose chunks are all free while the pool holds more than it is asked for. */
  trim(): void {
    if (this.memory.destroyed) return;
    for (let i = this.slabs.length - 1; i >= 0 && this.chunks > this.wanted; i--) {
      const slab = this.slabs[i];
      if (!slab || slab.base || slab.free !== slab.count || this.chunks - slab.count < this.wanted) continue;
      this.slabs[i] = null;
      this.memory.deregister(slab.mr);
      this.chunks -= slab.count;
      let w = 0;
      for (const id of this.free) if (Math.floor(id / SLAB_STRIDE) !== i) this.free[w++] = id;
      this.free.length = w;
    }
    while (this.slabs.length > 0 && this.slabs[this.slabs.length - 1] === null) this.slabs.pop();
  }

  /** (NicMemory.destroy) Every slab deregistered. */
  clear(): void {
    for (const s of this.slabs) s?.mr.deregister();
    this.slabs.length = 0;
    this.free.length = 0;
    this.chunks = 0;
  }
}

interface Waiter {
  readonly size: number;
  readonly resolve: (b: RegisteredBuffer) => void;
  readonly reject: (err: Error) => void;
  readonly signal: AbortSignal | undefined;
  readonly onAbort: () => void;
}

/** One size class of the target's request pools: a chunk pool and a FIFO of waiting requests. */
class SizeClass {
  /** Bounded by the requests in flight on the device's queues (each waits for one buffer at most). */
  readonly waiters = new WaiterQueue<Waiter>(Number.POSITIVE_INFINITY);

  constructor(readonly pool: ChunkPool) {
    // Buffers the live reservations ask for, plus the one every class keeps.
    pool.wanted = 1;
  }

  get size(): number {
    return this.pool.size;
  }
}

/**
 * One buffer handed out (a request's, until it releases it): a small object with its release
 * on the prototype and its view made only if asked for, since the target's request slots use
 * `mr` and `offset` directly (a closure, its context and a view per acquire were most of the
 * RDMA target's heap per command).
 */
class PoolBuffer implements RegisteredBuffer {
  readonly mr: MemoryRegion;
  readonly offset: number;
  private released = false;
  constructor(
    private readonly owner: NicMemory,
    readonly cls: SizeClass,
    readonly id: number,
    private readonly size: number,
  ) {
    this.mr = cls.pool.slabOf(id).mr;
    this.offset = cls.pool.offsetOf(id);
  }

  get view(): Buffer {
    return this.mr.buffer.subarray(this.offset, this.offset + this.size);
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    this.owner.give(this);
  }
}

/** One registration carved into ranges: allocateBuffer's buffers. */
interface RangeSlab {
  readonly mr: MemoryRegion;
  readonly access: number;
  readonly allocator: RangeAllocator;
  /** The live buffers by their offset in the slab. */
  readonly buffers: Map<number, Range>;
}

export class NicMemory {
  private readonly classes: SizeClass[] = [];
  /** The connections' chunk pools, by size and access. */
  private readonly chunkPools = new Map<string, ChunkPool>();
  private readonly rangeSlabs: RangeSlab[] = [];
  private readonly slabByBacking = new Map<ArrayBufferLike, RangeSlab>();
  /** Each PinnedMemory's registrations in this PD, while a connection carrying it uses the PD. */
  private readonly pins = new Map<PinnedMemory, { readonly regs: PinnedRegistrations; readonly leave: () => void; connections: number }>();
  private registeredBytes = 0;
  private waits = 0;
  private users = 0;
  private gone = false;
  private limitBytes = 0;
  private requestAccess = 0;
  /** Set by the table: the memory is gone (its last user left). */
  onDestroyed: (() => void) | null = null;

  /**
   * `options`: the target's request pools (none until a target connection brings them, adapt()).
   * A memory made here belongs to whoever made it (destroy()); the table's go with their last
   * user (lease()).
   */
  constructor(
    readonly pd: ProtectionDomain,
    options?: NicMemoryOptions,
    private log?: Logger,
  ) {
    if (options) this.adapt(options);
  }

  /** Destroyed: its registrations and PD are released; what is given back afterwards is dropped. */
  get destroyed(): boolean {
    return this.gone;
  }

  /** Bytes of the target's request pools registered now (what `limitBytes` bounds). */
  private get requestBytes(): number {
    let bytes = 0;
    for (const c of this.classes) bytes += c.pool.chunks * c.size;
    return bytes;
  }

  /** The biggest buffer a request can get (0 before a target's adapt()). */
  get largestBuffer(): number {
    return this.classes.length === 0 ? 0 : this.classes[this.classes.length - 1]!.size;
  }

  /**
   * A target connection's needs for the request pools: a bigger top class, a higher limit.
   * Called at connection setup (it may register the new classes' first buffers).
   */
  adapt(options: NicMemoryOptions, log?: Logger): void {
    this.log ??= log;
    this.limitBytes = Math.max(this.limitBytes, options.limitBytes);
    if (this.classes.length === 0) this.requestAccess = options.access;
    if (options.largestBuffer > this.largestBuffer) this.addClasses(options.largestBuffer);
  }

  /** The one registration path of this NIC's pooled memory (counted in `registeredBytes`). */
  register(bytes: number, access: number, aligned = false): MemoryRegion {
    // A request's data follows its 16-byte header (DATA_SKEW): aligned slabs put that byte on a page.
    const mr = this.pd.registerMemory(aligned ? allocAligned(bytes, DATA_SKEW) : Buffer.allocUnsafeSlow(Math.max(bytes, 1)), access);
    this.registeredBytes += mr.length;
    return mr;
  }

  /** A region from register() is done with. */
  deregister(mr: MemoryRegion): void {
    if (!this.destroyed) this.registeredBytes -= mr.length;
    mr.deregister();
  }

  /** One user's hold (a connection): the memory goes when the last user and the last range are gone. */
  lease(): NicMemoryLease {
    this.users++;
    let released = false;
    return {
      memory: this,
      release: () => {
        if (released) return;
        released = true;
        this.users--;
        this.releaseIfIdle();
      },
    };
  }

  private releaseIfIdle(): void {
    if (this.users > 0 || this.destroyed) return;
    for (const s of this.rangeSlabs) if (s.buffers.size > 0) return;
    this.destroy();
  }

  private addClasses(largest: number): void {
    const top = Math.ceil(Math.max(largest, 1) / PAGE) * PAGE;
    const sizes = [...SIZE_CLASSES.filter((s) => s < top), top];
    for (const size of sizes) {
      if (this.classes.some((c) => c.size === size)) continue;
      const c = new SizeClass(new ChunkPool(this, size, this.requestAccess, true));
      this.classes.push(c);
      this.classes.sort((a, b) => a.size - b.size);
      // Every class keeps one buffer regardless of the limit: any request can complete.
      this.grow(c, 1, true);
    }
  }

  /**
   * A queue of `queueSize` commands starts using the request pools: each class grows by
   * min(queueSize, QUEUE_CLASS_BYTES / class size) buffers (at least one), within the limit.
   * Registers now, at queue setup, so that the data path never does.
   */
  reserve(queueSize: number): MemoryReservation {
    const shares = this.classes.map((c) => ({ c, n: Math.max(1, Math.min(queueSize, Math.floor(QUEUE_CLASS_BYTES / c.size))) }));
    for (const { c, n } of shares) {
      c.pool.wanted += n;
      if (c.pool.chunks < c.pool.wanted) this.grow(c, c.pool.wanted - c.pool.chunks, false);
    }
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        // The classes shrink back to what the remaining queues asked for, as their buffers come back.
        for (const { c, n } of shares) {
          c.pool.wanted -= n;
          c.pool.trim();
        }
      },
    };
  }

  private grow(c: SizeClass, count: number, always: boolean): void {
    if (this.destroyed) return;
    const affordable = always ? count : Math.min(count, Math.floor((this.limitBytes - this.requestBytes) / c.size));
    if (affordable <= 0) return;
    try {
      c.pool.grow(affordable, always);
    } catch (err) {
      if (always) throw err;
      // Not fatal: requests wait for the buffers that exist (e.g. RLIMIT_MEMLOCK reached).
      this.log?.warn(`RDMA device memory: cannot register ${affordable} more ${c.size}-byte buffers: ${(err as Error).message}`);
      return;
    }
    while (c.waiters.length > 0 && c.pool.free.length > 0) this.serve(c, c.waiters.shift()!);
  }

  private classFor(size: number): SizeClass | undefined {
    for (const c of this.classes) if (c.size >= size) return c;
    return undefined;
  }

  /** A buffer now, or null when its class has none free (or others wait before this one). */
  tryAcquire(size: number): RegisteredBuffer | null {
    const c = this.classOrThrow(size);
    if (c.waiters.length > 0 || c.pool.free.length === 0) return null;
    return new PoolBuffer(this, c, c.pool.take(), size);
  }

  /**
   * A buffer of at least `size` bytes, registered in this device's PD. Waits (FIFO within its
   * class) while the class has none free; never registers memory. Rejects only when `signal`
   * aborts (the request's connection went away) or the device memory is destroyed.
   */
  acquire(size: number, signal?: AbortSignal): Promise<RegisteredBuffer> {
    const now = this.tryAcquire(size);
    if (now) return Promise.resolve(now);
    if (this.destroyed) return Promise.reject(new Error('RDMA device memory is released'));
    if (signal?.aborted) return Promise.reject(abortError(signal));
    const c = this.classFor(size)!;
    this.waits++;
    return new Promise<RegisteredBuffer>((resolve, reject) => {
      const waiter: Waiter = {
        size,
        resolve,
        reject,
        signal,
        onAbort: () => {
          c.waiters.remove(waiter);
          reject(abortError(signal!));
        },
      };
      signal?.addEventListener('abort', waiter.onAbort, { once: true });
      c.waiters.push(waiter);
    });
  }

  private classOrThrow(size: number): SizeClass {
    const c = this.classFor(size);
    if (!c) throw new RangeError(`a ${size}-byte buffer exceeds the largest RDMA buffer (${this.largestBuffer} bytes)`);
    return c;
  }

  private serve(c: SizeClass, w: Waiter): void {
    w.signal?.removeEventListener('abort', w.onAbort);
    w.resolve(new PoolBuffer(this, c, c.pool.take(), w.size));
  }

  /** A PoolBuffer's release(): to the class's first waiter, else back on its free list. */
  give(b: PoolBuffer): void {
    if (this.destroyed) return;
    const c = b.cls;
    const next = c.waiters.shift();
    if (next) {
      next.signal?.removeEventListener('abort', next.onAbort);
      next.resolve(new PoolBuffer(this, c, b.id, next.size));
    } else {
      c.pool.give(b.id);
    }
  }

  /** The connections' pool of `size`-byte chunks with `access` (RegisteredPool reserves from it). */
  chunkPool(size: number, access: number): ChunkPool {
    const key = `${size}/${access}`;
    let pool = this.chunkPools.get(key);
    if (!pool) {
      pool = new ChunkPool(this, size, access, false);
      this.chunkPools.set(key, pool);
    }
    return pool;
  }

  /**
   * `size` bytes of registered memory for the caller to fill and pass to sendVq: moved with no
   * copy. A range of a slab with `access`; a slab (RANGE_SLAB_MIN at least) is registered only
   * when none has room, never on the data path, and slabs stay until the memory goes (a buffer
   * freed and allocated again registers nothing).
   */
  allocateBuffer(size: number, access: number): Buffer {
    if (!Number.isSafeInteger(size) || size <= 0) throw new RangeError(`allocateBuffer(${size}): size must be a positive integer`);
    if (this.destroyed) throw new Error('RDMA device memory is released');
    let slab: RangeSlab | undefined;
    let r: Range | null = null;
    for (const s of this.rangeSlabs) {
      if (s.access !== access) continue;
      r = s.allocator.allocate(size);
      if (r) {
        slab = s;
        break;
      }
    }
    if (!slab || !r) {
      const bytes = Math.max(RANGE_SLAB_MIN, Math.ceil(size / PAGE) * PAGE);
      const mr = this.register(bytes, access);
      slab = { mr, access, allocator: new RangeAllocator(bytes, PAGE), buffers: new Map() };
      this.rangeSlabs.push(slab);
      this.slabByBacking.set(mr.buffer.buffer, slab);
      r = slab.allocator.allocate(size)!;
    }
    slab.buffers.set(r.offset, r);
    return slab.mr.buffer.subarray(r.offset, r.offset + size);
  }

  /** Give back a buffer from allocateBuffer (not a slice of it); using it afterwards is a bug. */
  freeBuffer(buf: Buffer): void {
    const slab = this.slabByBacking.get(buf.buffer);
    const at = buf.byteOffset - (slab?.mr.buffer.byteOffset ?? 0);
    const range = slab?.buffers.get(at);
    if (!slab || !range) throw new Error('freeBuffer: not a buffer from allocateBuffer (or freed already)');
    slab.buffers.delete(at);
    if (this.destroyed) return;
    slab.allocator.release(range);
    // The memory goes if nobody else uses it.
    this.releaseIfIdle();
  }

  /**
   * The region `buf` lies in, when it is (part of) a range slab (an allocateBuffer buffer); its
   * offset there is `buf.byteOffset - region.buffer.byteOffset`. (No object per call: asked per command.)
   */
  regionOf(buf: Buffer): MemoryRegion | null {
    const slab = this.slabByBacking.get(buf.buffer);
    if (!slab) return null;
    const offset = buf.byteOffset - slab.mr.buffer.byteOffset;
    if (offset < 0 || offset + buf.length > slab.mr.length) return null;
    return slab.mr;
  }

  /**
   * A connection carries `pinned`'s buffers: they are registered in this PD once (the first
   * such connection), with `access`, for as long as one of them lasts (detachPins).
   */
  attachPins(pinned: PinnedMemory, access: number): PinnedRegistrations {
    let p = this.pins.get(pinned);
    if (!p) {
      const regs = new PinnedRegistrations(this.pd, access);
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

  stats(): NicMemoryStats {
    return {
      registeredBytes: this.registeredBytes,
      requestBytes: this.requestBytes,
      limitBytes: this.limitBytes,
      registrations: this.pd.registrations(),
      waits: this.waits,
      classes: this.classes.map((c) => ({ size: c.size, buffers: c.pool.chunks, free: c.pool.free.length, waiting: c.waiters.length })),
    };
  }

  /** Deregister every slab and release the PD (once its queue pairs are gone). */
  destroy(): void {
    if (this.gone) return;
    this.gone = true;
    for (const c of this.classes) {
      for (const w of c.waiters.drain()) {
        w.signal?.removeEventListener('abort', w.onAbort);
        w.reject(new Error('RDMA device memory is released'));
      }
      c.pool.clear();
    }
    for (const pool of this.chunkPools.values()) pool.clear();
    this.chunkPools.clear();
    for (const s of this.rangeSlabs) s.mr.deregister();
    this.rangeSlabs.length = 0;
    this.slabByBacking.clear();
    for (const p of this.pins.values()) {
      p.leave();
      p.regs.clear();
    }
    this.pins.clear();
    this.registeredBytes = 0;
    this.pd.dealloc();
    this.onDestroyed?.();
  }
}

function abortError(signal: AbortSignal): Error {
  return signal.reason instanceof Error ? signal.reason : new Error('aborted');
}

/** One user's hold on a device's memory (a connection); release() exactly once, at its teardown. */
export interface NicMemoryLease {
  readonly memory: NicMemory;
  release(): void;
}

/**
 * The NIC memories of one process, by device name, for both ends: the first connection on a
 * device (target or initiator) allocates its PD, the last user to go (a connection's lease, an
 * allocateBuffer buffer) releases it (one owner, one path). rdma_cm opens each device once per
 * process, so a PD made from one CM id's verbs context serves the queue pairs of every CM id on
 * that device.
 */
export class NicMemoryTable {
  private readonly byDevice = new Map<string, NicMemory>();

  /** `options`: a target connection's request pools (an initiator's lease has none). */
  lease(device: string, createPd: () => ProtectionDomain, options?: NicMemoryOptions, log?: Logger): NicMemoryLease {
    let memory = this.byDevice.get(device);
    if (memory) {
      if (options) memory.adapt(options, log);
    } else {
      const pd = createPd();
      try {
        memory = new NicMemory(pd, options, log);
      } catch (err) {
        pd.dealloc();
        throw err;
      }
      const m = memory;
      m.onDestroyed = () => {
        if (this.byDevice.get(device) === m) this.byDevice.delete(device);
      };
      this.byDevice.set(device, memory);
    }
    return memory.lease();
  }

  /**
   * `device` went away: connections made from now on get a new memory (on the device that may
   * come back under the same name); the old one goes with its last user. `memory`: only if it
   * is still this one (a connection reporting its own device's removal).
   */
  forget(device: string, memory?: NicMemory): void {
    if (memory === undefined || this.byDevice.get(device) === memory) this.byDevice.delete(device);
  }

  /** The memory of `device` while some connection uses it (tests, `vof bench`). */
  get(device: string): NicMemory | undefined {
    return this.byDevice.get(device);
  }

  get devices(): string[] {
    return [...this.byDevice.keys()];
  }
}

/** The process's table: every RDMA connection of the process, target or initiator, shares it. */
export const nicMemories = new NicMemoryTable();
