import { allocAligned, DATA_SKEW, DIRECT_IO_ALIGN } from '../../util/aligned-buffer.js';

/** Smallest power of two of data a frame is sized for: a completion header and a few hundred device-written bytes. */
const MIN_CLASS = 512;
/** Frames for more data than this are allocated for their request and not kept (rare, large I/O). */
const MAX_CLASS = 8 * 1024 * 1024;
/**
 * A frame is a power of two of data plus this much: the 16-byte header before the data (a
 * completion header, or a gathered payload's virtio-blk request header) and the bytes a request
 * carries after its blocks (virtio-blk's status byte), rounded up. With bare powers of two a
 * 4 KiB read or write (4113 or 4112 bytes) took an 8 KiB frame, and the budgets count that.
 */
const FRAME_OVERHEAD = 64;

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
 * Frames come in size classes of a power of two of data plus FRAME_OVERHEAD. What is handed out is bounded by the queue's
 * budget (the target queue admits a command only while its buffers fit); what is kept for reuse
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
    if (size > MAX_CLASS + FRAME_OVERHEAD) return allocFrame(size);
    const cls = sizeClass(size);
    const frame = this.free[cls]?.pop();
    if (frame) {
      this.kept -= frame.length;
      this.retention.kept -= frame.length;
      return frame;
    }
    return allocFrame(classBytes(cls));
  }

  /**
   * The memory a frame from take(size) keeps alive: its size class and the alignment slack of
   * its allocation (allocFrame), whether it comes from the free list or is allocated now. An
   * upper bound: without the addon no slack is allocated.
   */
  static heldBytes(size: number): number {
    const frame = size > MAX_CLASS + FRAME_OVERHEAD ? size : classBytes(sizeClass(size));
    return frame + alignmentSlack(frame);
  }

  /** Give back a frame from take() once nothing reads it any more. */
  give(frame: Buffer): void {
    const len = frame.length;
    const data = len - FRAME_OVERHEAD;
    // Only whole frames of a class come back here; anything else is left to the GC.
    if (data > MAX_CLASS || data < MIN_CLASS || (data & (data - 1)) !== 0) return;
    if (this.kept + len > this.maxKept || this.retention.kept + len > this.retention.limit) return;
    const cls = 31 - Math.clz32(data);
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

/** The class of a frame of `size` bytes: log2 of the smallest power of two ≥ max(size - FRAME_OVERHEAD, MIN_CLASS). */
function sizeClass(size: number): number {
  const n = Math.max(size - FRAME_OVERHEAD, MIN_CLASS);
  return 32 - Math.clz32(n - 1);
}

/** The length of the frames of class `cls`. */
function classBytes(cls: number): number {
  return (1 << cls) + FRAME_OVERHEAD;
}

/**
 * A new frame whose data (after its 16-byte header) starts on an aligned address, so a block
 * export opened with direct I/O reads and writes it without a bounce buffer: a page for frames
 * that can carry 4096-byte blocks, 512 bytes below that (a 512-byte block is the smallest
 * direct I/O).
 */
function allocFrame(size: number): Buffer {
  return allocAligned(size, DATA_SKEW, frameAlignment(size));
}

function frameAlignment(size: number): number {
  return size - FRAME_OVERHEAD >= DIRECT_IO_ALIGN ? DIRECT_IO_ALIGN : MIN_CLASS;
}

/** The bytes allocAligned adds to a frame of `size` (at most; see FramePool.heldBytes). */
function alignmentSlack(size: number): number {
  return frameAlignment(size);
}
