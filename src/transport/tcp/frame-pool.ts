import { allocAligned, DATA_SKEW, DIRECT_IO_ALIGN } from '../../util/aligned-buffer.js';

/** Smallest frame handed out: a completion header and a few hundred device-written bytes. */
const MIN_CLASS = 512;
/** Frames larger than this are allocated for their request and not kept (rare, large I/O). */
const MAX_CLASS = 8 * 1024 * 1024;

/** Bytes kept for reuse by many pools together, and their limit. */
export class FrameRetention {
  kept = 0;
  constructor(readonly limit: number) {}
}

/**
 * Reusable buffers for one stream connection's VQ completion frames: the 16-byte completion
 * header followed by the device-writable bytes, which the device fills in place, so a
 * completion and its data leave in one write without being gathered first.
 *
 * Frames come in power-of-two size classes. What is handed out is bounded by the queue's
 * budget (the session admits a command only while its buffers fit); what is kept for reuse
 * is bounded by `maxKept` bytes per pool and by the shared `retention` for all pools, so idle
 * connections hold little, however many there are.
 */
export class FramePool {
  /** Free frames by size class (index: log2 of the class). */
  private readonly free: Buffer[][] = [];
  private kept = 0;

  constructor(
    private maxKept: number,
    private readonly retention: FrameRetention,
  ) {}

  /** Bytes held for reuse now. */
  get keptBytes(): number {
    return this.kept;
  }

  /** A frame of at least `size` bytes (its contents are whatever the last user left). */
  take(size: number): Buffer {
    if (size > MAX_CLASS) return allocFrame(size);
    const cls = sizeClass(size);
    const frame = this.free[cls]?.pop();
    if (frame) {
      this.kept -= frame.length;
      this.retention.kept -= frame.length;
      return frame;
    }
    return allocFrame(1 << cls);
  }

  /**
   * The memory a frame from take(size) keeps alive: its size class and the alignment slack of
   * its allocation (allocFrame), whether it comes from the free list or is allocated now. An
   * upper bound: without the addon no slack is allocated.
   */
  static heldBytes(size: number): number {
    const frame = size > MAX_CLASS ? size : 1 << sizeClass(size);
    return frame + alignmentSlack(frame);
  }

  /** Give back a frame from take() once nothing reads it any more. */
  give(frame: Buffer): void {
    const len = frame.length;
    // Only whole frames of a class come back here; anything else is left to the GC.
    if (len > MAX_CLASS || len < MIN_CLASS || (len & (len - 1)) !== 0) return;
    if (this.kept + len > this.maxKept || this.retention.kept + len > this.retention.limit) return;
    const cls = 31 - Math.clz32(len);
    (this.free[cls] ??= []).push(frame);
    this.kept += len;
    this.retention.kept += len;
  }

  /** The connection is gone: drop every kept frame and keep none given back later. */
  close(): void {
    this.free.length = 0;
    this.retention.kept -= this.kept;
    this.kept = 0;
    this.maxKept = 0;
  }
}

/** log2 of the smallest power of two ≥ max(size, MIN_CLASS). */
function sizeClass(size: number): number {
  const n = Math.max(size, MIN_CLASS);
  return 32 - Math.clz32(n - 1);
}

/**
 * A new frame whose data (after its 16-byte header) starts on an aligned address, so a block
 * export opened with direct I/O reads and writes it without a bounce buffer: a page for frames
 * that can carry 4096-byte blocks, 512 bytes below that (a 512-byte block is the smallest
 * direct I/O; a frame of 512 bytes cannot carry one after its header).
 */
function allocFrame(size: number): Buffer {
  if (size <= MIN_CLASS) return Buffer.allocUnsafeSlow(size);
  return allocAligned(size, DATA_SKEW, frameAlignment(size));
}

function frameAlignment(size: number): number {
  return size >= 2 * DIRECT_IO_ALIGN ? DIRECT_IO_ALIGN : MIN_CLASS;
}

/** The bytes allocAligned adds to a frame of `size` (at most; see FramePool.heldBytes). */
function alignmentSlack(size: number): number {
  return size <= MIN_CLASS ? 0 : frameAlignment(size);
}
