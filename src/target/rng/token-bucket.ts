import { WaiterQueue } from '../../util/waiter-queue.js';

interface Waiter {
  readonly bytes: number;
  readonly resolve: (granted: number) => void;
}

/**
 * A token bucket in bytes: `rate` bytes per second refill up to `burst`. take() waits (in
 * order of arrival) instead of failing; close() releases every waiter with 0 bytes.
 */
export class TokenBucket {
  private tokens: number;
  private last = performance.now();
  /** Bounded by the requests of the queues it paces (each takes once at a time). */
  private readonly waiters = new WaiterQueue<Waiter>(Number.POSITIVE_INFINITY);
  private timer: NodeJS.Timeout | null = null;
  private closed = false;

  constructor(
    readonly rate: number,
    readonly burst: number,
  ) {
    if (!(rate > 0) || !(burst >= 1)) throw new RangeError(`token bucket needs rate > 0 and burst >= 1 (got ${rate}, ${burst})`);
    this.tokens = burst;
  }

  /** Resolves with the bytes granted: min(bytes, burst), once that many tokens are there. */
  take(bytes: number): Promise<number> {
    const want = Math.min(bytes, this.burst);
    if (this.closed || want <= 0) return Promise.resolve(0);
    return new Promise((resolve) => {
      this.waiters.push({ bytes: want, resolve });
      this.serve();
    });
  }

  /**
   * take() when it would resolve at once: the bytes granted now (0 once closed), or -1 when the
   * caller must wait (take() then queues it behind those already waiting).
   */
  takeNow(bytes: number): number {
    const want = Math.min(bytes, this.burst);
    if (this.closed || want <= 0) return 0;
    if (this.waiters.length > 0 || this.timer) return -1;
    this.refill();
    if (this.tokens < want) return -1;
    this.tokens -= want;
    return want;
  }

  get waiting(): number {
    return this.waiters.length;
  }

  private refill(): void {
    const now = performance.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.rate);
    this.last = now;
  }

  private serve(): void {
    if (this.timer) return;
    this.refill();
    while (this.waiters.length > 0 && this.tokens >= this.waiters.peek()!.bytes) {
      const w = this.waiters.shift()!;
      this.tokens -= w.bytes;
      w.resolve(w.bytes);
    }
    const next = this.waiters.peek();
    if (!next) return;
    const waitMs = Math.max(1, Math.ceil(((next.bytes - this.tokens) / this.rate) * 1000));
    this.timer = setTimeout(() => {
      this.timer = null;
      this.serve();
    }, waitMs);
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    for (const w of this.waiters.drain()) w.resolve(0);
  }
}
