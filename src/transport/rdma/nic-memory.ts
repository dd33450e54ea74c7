import { allocAligned, DATA_SKEW } from '../../util/aligned-buffer.js';
import type { Logger } from '../../util/log.js';
import { WaiterQueue } from '../../util/waiter-queue.js';
import type { MemoryRegion, ProtectionDomain } from './native-binding.js';
import type { RegisteredBuffer } from './registered-pool.js';

/**
 * Registered memory of one RDMA device, shared by every target connection of the process on
 * that device (NVMe-oF's and SPDK's shape): one protection domain, and buffers in size classes
 * that requests take and give back. Memory is registered when a queue is set up (reserve()),
 * never on the data path: a request that finds its class empty waits, in FIFO order, for a
 * buffer another request gives back. Total registration is bounded by `limitBytes`; when a
 * queue goes, slabs beyond what the remaining queues reserved are deregistered once all their
 * buffers are back.
 *
 * A request takes exactly one buffer, big enough for its device-readable and device-writable
 * bytes together (out_length + in_length). Holding one buffer while waiting for another is what
 * deadlocks pools (reads hold headers and wait for data, writes the reverse); with one buffer
 * per request nobody waits while holding pool memory.
 */

/**
 * Sizes of the classes below the largest; the largest is the biggest request (out + in). Each
 * above 512 is a whole number of pages, so that with slabs aligned (see grow()) every buffer's
 * data starts on a page: a block export opened with direct I/O reads into it straight from disk.
 */
export const SIZE_CLASSES: readonly number[] = [512, 16 * 1024 + 4096, 128 * 1024 + 4096, 1024 * 1024 + 4096];
/** What one queue of queue size Q adds to each class: this many bytes, at least 1, at most Q buffers. */
export const QUEUE_CLASS_BYTES = 8 * 1024 * 1024;
/** Default for `limitBytes`: registered bytes of one device's pools at most. */
export const DEFAULT_NIC_MEMORY_BYTES = 256 * 1024 * 1024;
const PAGE = 4096;

export interface NicMemoryOptions {
  /** The biggest buffer one request may need (out_length + in_length): the top size class. */
  readonly largestBuffer: number;
  /**
   * Registered bytes of this device's pools at most. The first buffer of each class is always
   * registered (a request of any size can then always complete), even beyond this limit.
   */
  readonly limitBytes: number;
  /** ibv access flags of the pools; target memory is LOCAL_WRITE only (no remote key exists). */
  readonly access: number;
}

export interface NicMemoryStats {
  readonly registeredBytes: number;
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

interface Slab {
  readonly mr: MemoryRegion;
  readonly count: number;
  /** Buffers of this slab on the free list; a slab all free may go when its class shrinks. */
  free: number;
  /** The class's first buffer, kept while the device memory lives. */
  readonly base: boolean;
}

interface Waiter {
  readonly size: number;
  readonly resolve: (b: RegisteredBuffer) => void;
  readonly reject: (err: Error) => void;
  readonly signal: AbortSignal | undefined;
  readonly onAbort: () => void;
}

/** One size class: equal buffers carved from slabs (one registration each), a free list, a FIFO of waiters. */
class SizeClass {
  /** Indexed by the slab number in buffer ids; a deregistered slab leaves a hole. */
  readonly slabs: Array<Slab | null> = [];
  /** Free buffers as (slab index, buffer index) packed into one number. */
  readonly free: number[] = [];
  /** Bounded by the requests in flight on the device's queues (each waits for one buffer at most). */
  readonly waiters = new WaiterQueue<Waiter>(Number.POSITIVE_INFINITY);
  buffers = 0;
  /** Buffers the live reservations ask for (plus the one every class keeps). */
  wanted = 1;

  constructor(readonly size: number) {}
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
    readonly slab: Slab,
    readonly id: number,
    private readonly size: number,
  ) {
    this.mr = slab.mr;
    this.offset = (id % SLAB_STRIDE) * cls.size;
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

/** Buffers per slab index stride: a slab never holds more than this many buffers. */
const SLAB_STRIDE = 1 << 20;

export class NicMemory {
  private readonly classes: SizeClass[] = [];
  private registeredBytes = 0;
  private waits = 0;
  private destroyed = false;
  private limitBytes: number;

  constructor(
    readonly pd: ProtectionDomain,
    private readonly options: NicMemoryOptions,
    private readonly log?: Logger,
  ) {
    this.limitBytes = options.limitBytes;
    this.addClasses(options.largestBuffer);
  }

  /** The biggest buffer a request can get. */
  get largestBuffer(): number {
    return this.classes[this.classes.length - 1]!.size;
  }

  /**
   * A later user with other needs: a bigger top class, a higher limit. Called at connection
   * setup (it may register the new class's first buffer).
   */
  adapt(options: Pick<NicMemoryOptions, 'largestBuffer' | 'limitBytes'>): void {
    this.limitBytes = Math.max(this.limitBytes, options.limitBytes);
    if (options.largestBuffer > this.largestBuffer) this.addClasses(options.largestBuffer);
  }

  private addClasses(largest: number): void {
    const top = Math.ceil(Math.max(largest, 1) / PAGE) * PAGE;
    const sizes = [...SIZE_CLASSES.filter((s) => s < top), top];
    for (const size of sizes) {
      if (this.classes.some((c) => c.size === size)) continue;
      const c = new SizeClass(size);
      this.classes.push(c);
      this.classes.sort((a, b) => a.size - b.size);
      // Every class keeps one buffer regardless of the limit: any request can complete.
      this.grow(c, 1, true);
    }
  }

  /**
   * A queue of `queueSize` commands starts using this memory: each class grows by
   * min(queueSize, QUEUE_CLASS_BYTES / class size) buffers (at least one), within the limit.
   * Registers now, at queue setup, so that the data path never does.
   */
  reserve(queueSize: number): MemoryReservation {
    const shares = this.classes.map((c) => ({ c, n: Math.max(1, Math.min(queueSize, Math.floor(QUEUE_CLASS_BYTES / c.size))) }));
    for (const { c, n } of shares) {
      c.wanted += n;
      if (c.buffers < c.wanted) this.grow(c, c.wanted - c.buffers, false);
    }
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        // The classes shrink back to what the remaining queues asked for, as their buffers come back.
        for (const { c, n } of shares) {
          c.wanted -= n;
          this.trim(c);
        }
      },
    };
  }

  private grow(c: SizeClass, count: number, always: boolean): void {
    if (this.destroyed) return;
    const affordable = always ? count : Math.min(count, Math.floor((this.limitBytes - this.registeredBytes) / c.size));
    if (affordable <= 0) return;
    let mr: MemoryRegion;
    try {
      // A request's data follows its 16-byte header (DATA_SKEW): that byte is page-aligned.
      mr = this.pd.registerMemory(allocAligned(affordable * c.size, DATA_SKEW), this.options.access);
    } catch (err) {
      if (always) throw err;
      // Not fatal: requests wait for the buffers that exist (e.g. RLIMIT_MEMLOCK reached).
      this.log?.warn(`RDMA device memory: cannot register ${affordable} more ${c.size}-byte buffers: ${(err as Error).message}`);
      return;
    }
    const slab = c.slabs.length;
    c.slabs.push({ mr, count: affordable, free: affordable, base: always });
    c.buffers += affordable;
    this.registeredBytes += affordable * c.size;
    for (let i = affordable - 1; i >= 0; i--) c.free.push(slab * SLAB_STRIDE + i);
    while (c.waiters.length > 0 && c.free.length > 0) this.serve(c, c.waiters.shift()!);
  }

  private classFor(size: number): SizeClass | undefined {
    for (const c of this.classes) if (c.size >= size) return c;
    return undefined;
  }

  /** A buffer now, or null when its class has none free (or others wait before this one). */
  tryAcquire(size: number): RegisteredBuffer | null {
    const c = this.classOrThrow(size);
    if (c.waiters.length > 0 || c.free.length === 0) return null;
    return this.take(c, c.free.pop()!, size);
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
    w.resolve(this.take(c, c.free.pop()!, w.size));
  }

  /** Deregister slabs whose buffers are all free while the class holds more than it is asked for. */
  private trim(c: SizeClass): void {
    if (this.destroyed) return;
    for (let i = c.slabs.length - 1; i >= 0 && c.buffers > c.wanted; i--) {
      const slab = c.slabs[i];
      if (!slab || slab.base || slab.free !== slab.count || c.buffers - slab.count < c.wanted) continue;
      c.slabs[i] = null;
      slab.mr.deregister();
      c.buffers -= slab.count;
      this.registeredBytes -= slab.count * c.size;
      const gone = (id: number) => Math.floor(id / SLAB_STRIDE) === i;
      let w = 0;
      for (const id of c.free) if (!gone(id)) c.free[w++] = id;
      c.free.length = w;
    }
  }

  private take(c: SizeClass, id: number, size: number): RegisteredBuffer {
    const slab = c.slabs[Math.floor(id / SLAB_STRIDE)]!;
    slab.free--;
    return new PoolBuffer(this, c, slab, id, size);
  }

  /** A PoolBuffer's release(): to the class's first waiter, else back on its free list. */
  give(b: PoolBuffer): void {
    if (this.destroyed) return;
    const c = b.cls;
    const next = c.waiters.shift();
    if (next) {
      next.signal?.removeEventListener('abort', next.onAbort);
      b.slab.free++;
      next.resolve(this.take(c, b.id, next.size));
    } else {
      c.free.push(b.id);
      if (++b.slab.free === b.slab.count && c.buffers > c.wanted) this.trim(c);
    }
  }

  stats(): NicMemoryStats {
    return {
      registeredBytes: this.registeredBytes,
      limitBytes: this.limitBytes,
      registrations: this.pd.registrations(),
      waits: this.waits,
      classes: this.classes.map((c) => ({ size: c.size, buffers: c.buffers, free: c.free.length, waiting: c.waiters.length })),
    };
  }

  /** Deregister every slab and release the PD (once its queue pairs are gone). */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const c of this.classes) {
      for (const w of c.waiters.drain()) {
        w.signal?.removeEventListener('abort', w.onAbort);
        w.reject(new Error('RDMA device memory is released'));
      }
      for (const s of c.slabs) s?.mr.deregister();
      c.slabs.length = 0;
      c.free.length = 0;
    }
    this.registeredBytes = 0;
    this.pd.dealloc();
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
 * The device memories of one process, by device name: the first connection on a device
 * allocates its PD and base buffers, the last one to go releases them (one owner, one path).
 * rdma_cm opens each device once per process, so a PD made from one CM id's verbs context
 * serves the queue pairs of every CM id on that device.
 */
export class NicMemoryTable {
  private readonly byDevice = new Map<string, { memory: NicMemory; users: number }>();

  lease(device: string, createPd: () => ProtectionDomain, options: NicMemoryOptions, log?: Logger): NicMemoryLease {
    let entry = this.byDevice.get(device);
    if (entry) {
      entry.memory.adapt(options);
    } else {
      const pd = createPd();
      let memory: NicMemory;
      try {
        memory = new NicMemory(pd, options, log);
      } catch (err) {
        pd.dealloc();
        throw err;
      }
      entry = { memory, users: 0 };
      this.byDevice.set(device, entry);
    }
    entry.users++;
    const e = entry;
    let released = false;
    return {
      memory: e.memory,
      release: () => {
        if (released) return;
        released = true;
        if (--e.users > 0) return;
        if (this.byDevice.get(device) === e) this.byDevice.delete(device);
        e.memory.destroy();
      },
    };
  }

  /**
   * `device` went away: connections made from now on get a new memory (on the device that may
   * come back under the same name); the old one goes with its last lease.
   */
  forget(device: string): void {
    this.byDevice.delete(device);
  }

  /** The memory of `device` while some connection uses it (tests, `vof bench`). */
  get(device: string): NicMemory | undefined {
    return this.byDevice.get(device)?.memory;
  }

  get devices(): string[] {
    return [...this.byDevice.keys()];
  }
}

/** The process's table: every RDMA listener of the process shares it. */
export const nicMemories = new NicMemoryTable();
