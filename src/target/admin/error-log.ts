import type { ErrorLogEntry, ErrorLogPage } from '../../protocol/admin-records.js';

export const ERROR_LOG_CAPACITY = 256;

/**
 * The error log of one exported device, shared by all its instances: bounded (the oldest entries
 * go first, counted as lost), read newest first.
 *
 * Every entry belongs to the instance it happened on (its `owner`, a number this log hands out
 * once per instance: wire instance ids are reused after an instance goes, owners never are, so a
 * new initiator that draws an old id does not inherit the old one's entries). An instance reads
 * its own entries; the whole log is for an instance holding the export's admin grant
 * (docs/PROTOCOL.md "Admin grants"). An entry recorded without owner belongs to no instance and
 * shows only in the whole log.
 */
export class DeviceErrorLog {
  private entries: Array<{ readonly entry: ErrorLogEntry; readonly owner: number | undefined }> = [];
  private lost = 0;
  /** Entries of each live owner dropped because the log was full (its view's `lost`); bounded by the live instances. */
  private readonly lostByOwner = new Map<number, number>();
  private nextOwner = 1;

  constructor(private readonly capacity = ERROR_LOG_CAPACITY) {}

  /** A new owner for one instance's entries. */
  newOwner(): number {
    const owner = this.nextOwner++;
    this.lostByOwner.set(owner, 0);
    return owner;
  }

  /** The instance is gone: its entries stay for the whole log, its lost count goes. */
  forget(owner: number): void {
    this.lostByOwner.delete(owner);
  }

  record(entry: Omit<ErrorLogEntry, 'timestampMs'>, owner?: number): void {
    this.entries.push({ entry: { timestampMs: Date.now(), ...entry }, owner });
    if (this.entries.length > this.capacity) {
      const dropped = this.entries.shift()!;
      this.lost++;
      const ownerLost = dropped.owner === undefined ? undefined : this.lostByOwner.get(dropped.owner);
      if (ownerLost !== undefined) this.lostByOwner.set(dropped.owner!, ownerLost + 1);
    }
  }

  /** Newest first; `owner` undefined reads the whole log, else that owner's entries only. */
  page(skip: number, max: number, owner?: number): ErrorLogPage {
    const held = owner === undefined ? this.entries : this.entries.filter((e) => e.owner === owner);
    const newestFirst = held.map((e) => e.entry).reverse().slice(skip);
    return {
      total: held.length,
      lost: owner === undefined ? this.lost : (this.lostByOwner.get(owner) ?? 0),
      entries: max > 0 ? newestFirst.slice(0, max) : newestFirst,
    };
  }

  clear(): void {
    this.entries = [];
    this.lost = 0;
    for (const owner of this.lostByOwner.keys()) this.lostByOwner.set(owner, 0);
  }
}
