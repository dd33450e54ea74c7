import { performance } from 'node:perf_hooks';

/** Samples one HEALTH_TEST reads at most, whatever it asks for (virtio-blk: 4096 random block reads). */
export const HEALTH_TEST_MAX_SAMPLES = 4096;
/** Health tests an export runs back to back before the rate limit applies. */
export const DEFAULT_HEALTH_TEST_BURST = 4;
/** Then one more test per this many ms. */
export const DEFAULT_HEALTH_TEST_INTERVAL_MS = 15_000;

/**
 * How many health tests one export may run: a token bucket shared by its instances (a peer
 * that opens several instances gets no more), `burst` tests at once, then one per `intervalMs`
 * (0: no rate limit). Together with one test at a time per instance and the sample cap, this
 * bounds the I/O an admin queue can make the target do.
 */
export class HealthTestBudget {
  private tokens: number;
  private last = performance.now();

  constructor(
    readonly burst = DEFAULT_HEALTH_TEST_BURST,
    readonly intervalMs = DEFAULT_HEALTH_TEST_INTERVAL_MS,
  ) {
    if (!Number.isInteger(burst) || burst < 1) throw new RangeError(`healthTestBurst must be a positive integer, not ${burst}`);
    if (!Number.isFinite(intervalMs) || intervalMs < 0) throw new RangeError(`healthTestIntervalMs must be a non-negative number of ms, not ${intervalMs}`);
    this.tokens = burst;
  }

  /** Take one test's share; false when the export has used up its share for now. */
  take(): boolean {
    if (this.intervalMs === 0) return true;
    const now = performance.now();
    this.tokens = Math.min(this.burst, this.tokens + (now - this.last) / this.intervalMs);
    this.last = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}
