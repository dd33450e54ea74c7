/**
 * The IOVA regions a VDUSE device's driver hands out (VDUSE_IOTLB_GET_FD + mmap), each a Buffer
 * over the caller's mapping. Every address the kernel's driver writes into a virtqueue is
 * translated here, and only here: a range that does not lie wholly inside one mapped region
 * has no view, so nothing the driver writes can make vof read or write outside a mapping.
 *
 * The caller owns the mappings: it adds a region once mapped, and munmaps what remove() gives
 * back (on VDUSE_UPDATE_IOTLB, or at reset). A view handed out before a remove() points into
 * memory the caller is about to unmap: the caller must not remove a region that a chain in
 * flight still uses, or must finish those chains first. `generation` changes at every add and
 * remove so that holders of long-lived views (SplitRing's ring areas) take them anew.
 */

interface Region {
  start: number;
  last: number;
  mapping: Buffer;
}

export interface IovaMemoryOptions {
  /**
   * Called when view() finds no region for `iova`, once per view() call: the caller may map the
   * region holding it (VDUSE_IOTLB_GET_FD, as libvduse does on a miss), add() it and return true;
   * view() then looks again. Returns false when there is nothing to map. It runs in the middle
   * of SplitRing.pop(): if it removes a region (one the kernel replaced), that region's
   * mapping must stay valid until no view of it is in use (e.g. unmapped by a finalizer).
   */
  resolve?: (iova: number) => boolean;
}

export class IovaMemory {
  /** Sorted by start; never overlapping. */
  private readonly regions: Region[] = [];
  private readonly resolve: ((iova: number) => boolean) | undefined;
  /** Bumped by every add() and remove(): a view taken under another generation may be stale. */
  generation = 0;

  constructor(opts: IovaMemoryOptions = {}) {
    this.resolve = opts.resolve;
  }

  /** Adds a mapped region [start, last] (inclusive, as VDUSE reports). Overlaps are refused (throws). */
  add(start: number, last: number, mapping: Buffer): void {
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(last) || start < 0 || last < start) {
      throw new RangeError(`IOVA region [${start}, ${last}]: start and last must be integers, 0 <= start <= last <= 2^53 - 1`);
    }
    // last - start + 1 is exact: both are safe integers and last >= start.
    const size = last - start + 1;
    if (mapping.length !== size) {
      throw new RangeError(`IOVA region [${hex(start)}, ${hex(last)}] is ${size} bytes but its mapping is ${mapping.length}`);
    }
    const at = this.indexAfter(start);
    const before = at > 0 ? this.regions[at - 1] : undefined;
    const after = this.regions[at];
    if ((before !== undefined && before.last >= start) || (after !== undefined && after.start <= last)) {
      const other = before !== undefined && before.last >= start ? before : after!;
      throw new Error(`IOVA region [${hex(start)}, ${hex(last)}] overlaps the mapped region [${hex(other.start)}, ${hex(other.last)}]`);
    }
    this.regions.splice(at, 0, { start, last, mapping });
    this.generation++;
  }

  /** Drops every region overlapping [start, last]; returns the removed mappings so the caller can munmap. */
  remove(start: number, last: number): Buffer[] {
    const removed: Buffer[] = [];
    for (let i = this.regions.length - 1; i >= 0; i--) {
      const r = this.regions[i]!;
      if (r.start <= last && r.last >= start) {
        removed.push(r.mapping);
        this.regions.splice(i, 1);
      }
    }
    // Even when nothing matched: a caller that asked to invalidate expects fresh views.
    this.generation++;
    return removed.reverse();
  }

  /** A view of [iova, iova+length) if it lies wholly inside ONE region, else null. Never throws on peer input. */
  view(iova: number, length: number): Buffer | null {
    if (!Number.isSafeInteger(iova) || !Number.isSafeInteger(length) || iova < 0 || length < 0) return null;
    let r = this.find(iova);
    if (r === undefined && this.resolve !== undefined && this.resolve(iova)) r = this.find(iova);
    if (r === undefined) return null;
    // Compared as offsets inside the region, never as iova + length (which could pass 2^53 and round).
    const offset = iova - r.start;
    if (length > r.last - iova + 1) return null;
    return r.mapping.subarray(offset, offset + length);
  }

  /** Number of mapped regions. */
  get size(): number {
    return this.regions.length;
  }

  /** The region holding iova, by binary search. */
  private find(iova: number): Region | undefined {
    const at = this.indexAfter(iova) - 1;
    if (at < 0) return undefined;
    const r = this.regions[at]!;
    return iova <= r.last ? r : undefined;
  }

  /** Index of the first region whose start is above iova. */
  private indexAfter(iova: number): number {
    let lo = 0;
    let hi = this.regions.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.regions[mid]!.start <= iova) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}
