import type { MemoryRegion } from './native-binding.js';
import type { ChunkPool, NicMemory } from './nic-memory.js';
import { SlotTable } from '../../util/slot-table.js';

/** A slice of registered memory: `view` is what JS reads and writes, (mr, offset) what the NIC uses. */
export interface RegisteredBuffer {
  readonly mr: MemoryRegion;
  readonly offset: number;
  readonly view: Buffer;
  release(): void;
}

/** A chunk handed out: its release() gives the chunk back once (a method, not a closure per acquire). */
class Chunk implements RegisteredBuffer {
  private released = false;
  constructor(
    private readonly pool: RegisteredPool,
    private readonly chunk: number,
    readonly mr: MemoryRegion,
    readonly offset: number,
    readonly view: Buffer,
  ) {}

  release(): void {
    if (this.released) return;
    this.released = true;
    this.pool.releaseChunk(this.chunk);
  }
}

/**
 * One connection's fixed-size chunks, SPDK-style: `chunkCount` chunks of its NIC's chunk pool
 * of this size and access (NicMemory.chunkPool), reserved when the connection is set up and
 * given back by destroy(), so the data path takes and returns chunks instead of registering
 * memory per request. A request larger than a chunk, or one that arrives when all chunks are
 * taken, gets a dedicated registration released with it, so the pool never blocks and never grows.
 */
export class RegisteredPool {
  private readonly source: ChunkPool;
  /** The NIC pool's ids of this pool's chunks, by chunk index. */
  private readonly ids: number[] = [];
  private readonly regions: MemoryRegion[] = [];
  private readonly offsets: number[] = [];
  /** Chunk indexes; the chunk freed last is taken next (any chunk does, and it is likely cached). */
  private readonly chunks: SlotTable;
  private readonly dedicated = new Set<MemoryRegion>();
  private destroyed = false;

  constructor(
    private readonly memory: NicMemory,
    readonly chunkSize: number,
    readonly chunkCount: number,
    private readonly access: number,
  ) {
    this.source = memory.chunkPool(chunkSize, access);
    this.source.reserve(chunkCount, this.ids);
    for (const id of this.ids) {
      this.regions.push(this.source.slabOf(id).mr);
      this.offsets.push(this.source.offsetOf(id));
    }
    this.chunks = new SlotTable(chunkCount, 'last-freed');
  }

  /** Chunks and dedicated registrations currently handed out. */
  get inUse(): number {
    return this.chunks.inUse + this.dedicated.size;
  }

  /** The region of chunk `i` (a receive ring posts its chunks by index, without acquire). */
  regionOf(i: number): MemoryRegion {
    return this.regions[i]!;
  }

  /** The offset of chunk `i` in regionOf(i). */
  offsetOf(i: number): number {
    return this.offsets[i]!;
  }

  acquire(size: number): RegisteredBuffer {
    if (size <= this.chunkSize) {
      const chunk = this.chunks.take();
      if (chunk >= 0) {
        const mr = this.regions[chunk]!;
        const offset = this.offsets[chunk]!;
        return new Chunk(this, chunk, mr, offset, mr.buffer.subarray(offset, offset + size));
      }
    }
    const mr = this.memory.register(size, this.access);
    this.dedicated.add(mr);
    return {
      mr,
      offset: 0,
      view: mr.buffer.subarray(0, size),
      release: () => {
        if (this.dedicated.delete(mr)) this.memory.deregister(mr);
      },
    };
  }

  /** (Chunk) A chunk is free again. */
  releaseChunk(chunk: number): void {
    this.chunks.release(chunk);
  }

  /**
   * Give the chunks back to the NIC and deregister the dedicated registrations, including
   * buffers still handed out (their release is then a no-op). Only once nothing posted uses them.
   */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const mr of this.dedicated) this.memory.deregister(mr);
    this.dedicated.clear();
    this.source.unreserve(this.ids);
    this.ids.length = 0;
  }
}
