import { ByteBudget } from '../util/byte-budget.js';
import { WaiterQueue } from '../util/waiter-queue.js';

/**
 * Data buffers kept between requests, all connections together: enough for 32 × 128 KiB or
 * 8 × 1 MiB in flight with room to spare, and what an idle bridge may hold at most.
 */
export const KEPT_PER_BRIDGE = 16 * 1024 * 1024;

/** A connection that waits for room in the budget; woken (its pump run again) when it may look. */
export interface BudgetWaiter {
  budgetWake(): void;
}

/**
 * The NBD bridge's memory budget, one for all its connections: bytes of read data and write
 * payload held by requests in flight, counted from admission until the reply has been handed
 * to the kernel (so replies waiting for a slow client count too). When a request does not fit,
 * its connection stops reading its socket and queues here.
 *
 * Waiters are served first come, first served: while anyone waits, only the head of the queue
 * may take bytes, so a busy connection that gives bytes back cannot take them again at once and
 * starve the others, and a large request is not overtaken forever by small ones. Bytes held by a
 * client that never reads its replies come back when the bridge disconnects it (the send
 * timeout), so every wait ends.
 */
export class BridgeBudget {
  private readonly bytes: ByteBudget;
  /** A connection waits here once at most (tryTake checks): bounded by the bridge's connections. */
  private readonly queue = new WaiterQueue<BudgetWaiter>(Number.POSITIVE_INFINITY);
  private wakeScheduled = false;
  /** Data buffers that finished requests keep for the next ones, all connections together (see keep()). */
  private keptBytes = 0;
  /** At most this many kept bytes: KEPT_PER_BRIDGE, or the budget if that is smaller. */
  readonly keptLimit: number;

  constructor(readonly limit: number) {
    this.bytes = new ByteBudget(limit);
    this.keptLimit = Math.min(KEPT_PER_BRIDGE, limit);
  }

  /** Bytes of data buffers kept for reuse now, across all connections. */
  get kept(): number {
    return this.keptBytes;
  }

  /**
   * A connection's request would keep `delta` more bytes of data buffer between requests
   * (negative: gives them up): whether it may. What requests keep is memory the bridge holds
   * while idle, outside the in-flight budget, so it has a bridge-wide cap of its own.
   */
  keep(delta: number): boolean {
    if (delta > 0 && this.keptBytes + delta > this.keptLimit) return false;
    this.keptBytes += delta;
    return true;
  }

  /** Bytes held now, across all connections. */
  get used(): number {
    return this.bytes.used;
  }

  /** Connections waiting for room. */
  get waiting(): number {
    return this.queue.length;
  }

  /**
   * Take n bytes for `who` when they fit and nobody waits ahead of it; otherwise queue `who`
   * (once) and return false: it is woken when it should look again. With nothing held anything
   * fits (ByteBudget), so a request larger than the whole budget still runs, alone.
   */
  tryTake(who: BudgetWaiter, n: number): boolean {
    if (n === 0) {
      this.leave(who);
      return true;
    }
    const head = this.queue.peek();
    if ((head === undefined || head === who) && this.bytes.fits(n)) {
      this.bytes.take(n);
      if (head === who) {
        this.queue.shift();
        // The next in line may fit in what is left.
        if (this.queue.length > 0) this.scheduleWake();
      }
      return true;
    }
    if (!this.queue.includes(who)) this.queue.push(who);
    return false;
  }

  give(n: number): void {
    if (n === 0) return;
    this.bytes.give(n);
    if (this.queue.length > 0) this.scheduleWake();
  }

  /** `who` no longer waits (it closed, or its request needs no bytes after all). */
  leave(who: BudgetWaiter): void {
    const wasHead = this.queue.peek() === who;
    if (!this.queue.remove(who)) return;
    if (wasHead && this.queue.length > 0) this.scheduleWake();
  }

  /**
   * Wake the head on a later turn, never inside the caller's stack: the caller is usually
   * another connection in the middle of its own pump.
   */
  private scheduleWake(): void {
    if (this.wakeScheduled) return;
    this.wakeScheduled = true;
    setImmediate(() => {
      this.wakeScheduled = false;
      this.queue.peek()?.budgetWake();
    });
  }
}
