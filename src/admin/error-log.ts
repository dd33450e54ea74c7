import type { ErrorLogEntry, ErrorLogPage } from '../protocol/admin-records.js';

export const ERROR_LOG_CAPACITY = 256;

/**
 * The error log of one exported device, shared by all its instances: bounded (the oldest entries
 * go first, counted as lost), read newest first.
 */
export class DeviceErrorLog {
  private entries: ErrorLogEntry[] = [];
  private lost = 0;
  private lastConfigGeneration = -1;

  constructor(private readonly capacity = ERROR_LOG_CAPACITY) {}

  record(entry: Omit<ErrorLogEntry, 'timestampMs'>): void {
    this.entries.push({ timestampMs: Date.now(), ...entry });
    if (this.entries.length > this.capacity) {
      this.entries.shift();
      this.lost++;
    }
  }

  /** Each instance hears the export's config changes: one entry per generation, not per instance. */
  recordConfigChange(generation: number, entry: Omit<ErrorLogEntry, 'timestampMs'>): void {
    if (generation === this.lastConfigGeneration) return;
    this.lastConfigGeneration = generation;
    this.record(entry);
  }

  page(skip: number, max: number): ErrorLogPage {
    const newestFirst = this.entries.slice().reverse().slice(skip);
    return { total: this.entries.length, lost: this.lost, entries: max > 0 ? newestFirst.slice(0, max) : newestFirst };
  }

  clear(): void {
    this.entries = [];
    this.lost = 0;
  }
}
