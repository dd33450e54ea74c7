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
interface Entry {
  readonly start: number;
  readonly end: number;
  readonly exclusive: boolean;
  granted: boolean;
  readonly grant: () => void;
}

export type Release = () => void;

export class RangeLock {
  private readonly entries: Entry[] = [];

  get size(): number {
    return this.entries.length;
  }

  /** Resolves when [start, end) may be used; call the returned function when done. */
  acquire(start: number, end: number, exclusive: boolean): Promise<Release> {
    return new Promise((resolve) => {
      const entry: Entry = {
        start,
        end,
        exclusive,
        granted: false,
        grant: () => resolve(() => this.release(entry)),
      };
      this.entries.push(entry);
      this.dispatch();
    });
  }

  private release(entry: Entry): void {
    const i = this.entries.indexOf(entry);
    if (i >= 0) this.entries.splice(i, 1);
    this.dispatch();
  }

  /** Grant every waiting entry that no earlier overlapping entry conflicts with. */
  private dispatch(): void {
    for (let i = 0; i < this.entries.length; i++) {
      const e = this.entries[i]!;
      if (e.granted) continue;
      let blocked = false;
      for (let j = 0; j < i && !blocked; j++) {
        const earlier = this.entries[j]!;
        blocked = earlier.start < e.end && e.start < earlier.end && (earlier.exclusive || e.exclusive);
      }
      if (!blocked) {
        e.granted = true;
        e.grant();
      }
    }
  }
}
