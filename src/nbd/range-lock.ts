/**
 * Orders writes that touch the same device blocks when one of them is a read-modify-write.
 *
 * An unaligned NBD write is done as "read the edge blocks, patch them, write them back". If
 * another write to a different part of the same block ran between that read and that write,
 * its bytes would be lost, although the two client requests do not overlap. So a
 * read-modify-write holds its block-aligned range exclusively, and every other write, trim and
 * write-zeroes holds its range shared: shared holders run side by side, an exclusive holder
 * waits for every earlier overlapping holder and blocks every later one. Grants are in arrival
 * order among overlapping ranges, so a stream of aligned writes cannot starve a
 * read-modify-write. Reads take no lock: a read racing a write may see either content, which
 * NBD allows, and a read-modify-write writes unchanged bytes back unchanged.
 *
 * The number of entries is bounded by the requests in flight (capped per connection).
 */
export interface LockEntry {
  readonly start: number;
  readonly end: number;
  readonly exclusive: boolean;
  granted: boolean;
  /** Called once the range may be used (never inside enter()). */
  grant(): void;
}

export type Release = () => void;

export class RangeLock {
  private readonly entries: LockEntry[] = [];

  get size(): number {
    return this.entries.length;
  }

  /**
   * The callback form, for callers that reuse one entry per request (no allocation): true when
   * the range is granted at once (grant() is then not called), else grant() runs later.
   * `entry.start`, `end` and `exclusive` must not change until leave(entry).
   */
  enter(entry: LockEntry): boolean {
    entry.granted = false;
    this.entries.push(entry);
    if (this.blocked(this.entries.length - 1)) return false;
    entry.granted = true;
    return true;
  }

  /** The holder (or waiter) is done with its range; later entries it held up are granted. */
  leave(entry: LockEntry): void {
    const i = this.entries.indexOf(entry);
    if (i < 0) return;
    // By hand rather than splice, which returns a new array of what it removed.
    for (let k = i; k < this.entries.length - 1; k++) this.entries[k] = this.entries[k + 1]!;
    this.entries.pop();
    this.dispatch();
  }

  /** Resolves when [start, end) may be used; call the returned function when done. */
  acquire(start: number, end: number, exclusive: boolean): Promise<Release> {
    return new Promise((resolve) => {
      const entry: LockEntry = {
        start,
        end,
        exclusive,
        granted: false,
        grant: () => resolve(() => this.leave(entry)),
      };
      if (this.enter(entry)) entry.grant();
    });
  }

  /** Whether an earlier overlapping entry conflicts with entries[i]. */
  private blocked(i: number): boolean {
    const e = this.entries[i]!;
    for (let j = 0; j < i; j++) {
      const earlier = this.entries[j]!;
      if (earlier.start < e.end && e.start < earlier.end && (earlier.exclusive || e.exclusive)) return true;
    }
    return false;
  }

  /** Grant every waiting entry that no earlier overlapping entry conflicts with. */
  private dispatch(): void {
    for (let i = 0; i < this.entries.length; i++) {
      const e = this.entries[i]!;
      if (e.granted || this.blocked(i)) continue;
      e.granted = true;
      e.grant();
    }
  }
}
