import type { MemoryRegion, ProtectionDomain } from './native-binding.js';
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
 * Fixed-size chunks carved from one registration, SPDK-style: the data path takes and returns
 * chunks instead of registering memory per request. A request larger than a chunk, or one that
 * arrives when all chunks are taken, gets a dedicated registration released with it, so the
 * pool never blocks and never grows.
 */
export class RegisteredPool {
  private readonly region: MemoryRegion;
  /** Chunk indexes; the chunk freed last is taken next (any chunk does, and it is likely cached). */
  private readonly chunks: SlotTable;
  private readonly dedicated = new Set<MemoryRegion>();
  private destroyed = false;

  constructor(
    private readonly pd: ProtectionDomain,
    readonly chunkSize: number,
    readonly chunkCount: number,
    private readonly access: number,
  ) {
    this.region = pd.registerMemory(Buffer.allocUnsafeSlow(chunkSize * chunkCount), access);
    this.chunks = new SlotTable(chunkCount, 'last-freed');
  }

  /** Chunks and dedicated registrations currently handed out. */
  get inUse(): number {
    return this.chunks.inUse + this.dedicated.size;
  }

  acquire(size: number): RegisteredBuffer {
    if (size <= this.chunkSize) {
      const chunk = this.chunks.take();
      if (chunk >= 0) {
        const offset = chunk * this.chunkSize;
        return new Chunk(this, chunk, this.region, offset, this.region.buffer.subarray(offset, offset + size));
      }
    }
    const mr = this.pd.registerMemory(Buffer.allocUnsafeSlow(Math.max(size, 1)), this.access);
    this.dedicated.add(mr);
    return {
      mr,
      offset: 0,
      view: mr.buffer.subarray(0, size),
      release: () => {
        if (this.dedicated.delete(mr)) mr.deregister();
      },
    };
  }

  /** (Chunk) A chunk is free again. */
  releaseChunk(chunk: number): void {
    this.chunks.release(chunk);
  }

  /** Deregister everything, including buffers still handed out (their release is then a no-op). */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const mr of this.dedicated) mr.deregister();
    this.dedicated.clear();
    this.region.deregister();
  }
}
