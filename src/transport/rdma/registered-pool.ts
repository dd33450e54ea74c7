import type { MemoryRegion, ProtectionDomain } from './native-binding.js';

/** A slice of registered memory: `view` is what JS reads and writes, (mr, offset) what the NIC uses. */
export interface RegisteredBuffer {
  readonly mr: MemoryRegion;
  readonly offset: number;
  readonly view: Buffer;
  release(): void;
}

/**
 * Fixed-size chunks carved from one registration, SPDK-style: the data path takes and returns
 * chunks instead of registering memory per request. A request larger than a chunk, or one that
 * arrives when all chunks are taken, gets a dedicated registration released with it, so the
 * pool never blocks and never grows.
 */
export class RegisteredPool {
  private readonly region: MemoryRegion;
  private readonly freeChunks: number[] = [];
  private readonly dedicated = new Set<MemoryRegion>();
  private destroyed = false;

  constructor(
    private readonly pd: ProtectionDomain,
    readonly chunkSize: number,
    readonly chunkCount: number,
    private readonly access: number,
  ) {
    this.region = pd.registerMemory(Buffer.allocUnsafeSlow(chunkSize * chunkCount), access);
    for (let i = chunkCount - 1; i >= 0; i--) this.freeChunks.push(i);
  }

  /** Chunks and dedicated registrations currently handed out. */
  get inUse(): number {
    return this.chunkCount - this.freeChunks.length + this.dedicated.size;
  }

  acquire(size: number): RegisteredBuffer {
    if (size <= this.chunkSize) {
      const chunk = this.freeChunks.pop();
      if (chunk !== undefined) {
        const offset = chunk * this.chunkSize;
        let released = false;
        return {
          mr: this.region,
          offset,
          view: this.region.buffer.subarray(offset, offset + size),
          release: () => {
            if (released) return;
            released = true;
            this.freeChunks.push(chunk);
          },
        };
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

  /** Deregister everything, including buffers still handed out (their release is then a no-op). */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const mr of this.dedicated) mr.deregister();
    this.dedicated.clear();
    this.region.deregister();
  }
}
