import type { MemoryRegion, NativeBinding } from './native-binding.js';
import { RangeAllocator, type Range } from './range-allocator.js';
import type { NicMemory } from './nic-memory.js';
import { WaiterQueue } from '../../util/waiter-queue.js';

/** Regions that windows bind to: local access for the NIC, MW_BIND, and no remote access at all. */
export function windowedAccess(binding: NativeBinding): number {
  return binding.access.LOCAL_WRITE | binding.access.MW_BIND;
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
 * One connection's bounce memory: one registration of its NIC memory (through the NIC's one
 * registration path, never shared with another connection), made when the connection is set
 * up, sized from its queue size, from which each command takes one slice
 * for all of its copied bytes. When the arena is short a command waits (first come, first
 * served) instead of registering memory. A command larger than the whole arena is the one
 * exception: it gets a registration of its own, deregistered when it completes (counted in
 * `oversized`).
 */
export class BounceArena {
  /**
   * The arena's own region. Not a range of the NIC's shared range slabs: soft-RoCE checks a
   * window's accesses against its whole region, not the bound range, so there a live window
   * into a shared slab would also reach other connections' bounce bytes and allocateBuffer
   * buffers. A region per connection keeps that reach to this connection's own arena.
   */
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
    private readonly memory: NicMemory,
    readonly size: number,
    private readonly access: number,
  ) {
    this.region = memory.register(size, access);
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
      const mr = this.memory.register(size, this.access);
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
      if (this.dedicated.delete(slice.mr)) this.memory.deregister(slice.mr);
      return;
    }
    this.allocator.release(slice.range);
    while (!this.destroyed && this.waiting.length > 0) {
      const next = this.take(this.waiting.peek()!.size);
      if (!next) break;
      this.waiting.shift()!.ready(next);
    }
  }

  /** Deregister the arena and the oversized registrations; waiters are dropped (their connection is gone). */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.waiting.drain();
    for (const mr of this.dedicated) this.memory.deregister(mr);
    this.dedicated.clear();
    this.memory.deregister(this.region);
  }
}
