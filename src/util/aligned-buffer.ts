import { loadNativeAddon } from './native-addon.js';

/**
 * The alignment pool buffers are given for direct I/O: a page, which is what any disk's
 * O_DIRECT asks of memory (a 4Kn disk's logical block; a 512e disk or a file system asks 512).
 */
export const DIRECT_IO_ALIGN = 4096;

/**
 * Where a request's data starts in its transport buffer: after the 16-byte virtio-blk request
 * header (the RDMA pool buffer holds header, data and status together; a TCP frame puts the
 * 16-byte completion header, or the request header of a gathered payload, first).
 */
export const DATA_SKEW = 16;

interface AlignmentAddon {
  addressRemainder(view: Uint8Array, align: number): number;
  directIoAlignment(fd: number): { memAlign: number; offsetAlign: number } | null;
}

let addon: AlignmentAddon | Error | null = null;

/** The addon's alignment functions, or why there are none (not built, no rdma-core, too old). */
export function alignmentAddon(): AlignmentAddon | Error {
  if (addon) return addon;
  try {
    const a = loadNativeAddon() as Partial<AlignmentAddon>;
    addon =
      typeof a.addressRemainder === 'function' && typeof a.directIoAlignment === 'function'
        ? (a as AlignmentAddon)
        : new Error("vof's native addon predates direct I/O support (rebuild it: npm rebuild vof)");
  } catch (err) {
    addon = new Error(`vof's native addon does not load (${(err as Error).message.split('\n')[0]})`);
  }
  return addon;
}

/** The address of view[0] modulo `align` (a power of two), or null when the addon cannot tell. */
export function addressRemainder(view: Uint8Array, align: number): number | null {
  const a = alignmentAddon();
  return a instanceof Error ? null : a.addressRemainder(view, align);
}

/**
 * `size` uninitialised bytes whose byte `skew` lies on an `align` boundary. Node does not align
 * ArrayBuffers (malloc's 16 bytes at best), so this takes `align` bytes more and starts the view
 * where the address works out. Without the addon the address is unknown and the buffer is
 * returned as allocated: alignment is an optimisation for direct I/O (which checks each buffer
 * and bounces the unaligned ones), never a correctness condition.
 */
export function allocAligned(size: number, skew = 0, align = DIRECT_IO_ALIGN): Buffer {
  const a = alignmentAddon();
  if (a instanceof Error) return Buffer.allocUnsafeSlow(size);
  const raw = Buffer.allocUnsafeSlow(size + align);
  const rem = a.addressRemainder(raw, align);
  const start = (((align - rem - skew) % align) + align) % align;
  return raw.subarray(start, start + size);
}
