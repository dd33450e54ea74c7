/**
 * The one FIFO of things waiting their turn (requests for a command id, chains for send queue
 * room, commands for registered memory, connections for budget bytes, readers for tokens).
 * A ring: push() and shift() are O(1) and allocate nothing once the ring has grown to the
 * deepest the queue has been, so a data path may wait here per command. remove() (a waiter
 * cancelled: its signal aborted, its connection closed) is O(n) but keeps the order; it is the
 * rare path.
 *
 * Bounded by design: every owner states how many may wait (`limit`). push() refuses one more
 * (returns false) and the owner decides what that means (SendQueue fails: the peer is not
 * keeping up). An owner whose waiters are bounded elsewhere (a queue's depth, a pool of
 * requests) says so where it passes Infinity. The ring never holds more slots than twice the
 * most that waited at once (it doubles when full), nor more than `limit`.
 */
export class WaiterQueue<T> {
  private items: Array<T | undefined>;
  private head = 0;
  private count = 0;

  constructor(readonly limit: number) {
    if (!(limit >= 0)) throw new RangeError(`a waiter queue's limit is a count (got ${limit})`);
    this.items = new Array<T | undefined>(Math.min(limit, 4));
  }

  get length(): number {
    return this.count;
  }

  /** Slots the ring holds now (for tests of its growth). */
  get capacity(): number {
    return this.items.length;
  }

  get full(): boolean {
    return this.count >= this.limit;
  }

  /** The oldest waiter, left in place. */
  peek(): T | undefined {
    return this.count === 0 ? undefined : this.items[this.head];
  }

  /** Queue `item` last; false (nothing queued) when `limit` wait already. */
  push(item: T): boolean {
    if (this.count >= this.limit) return false;
    if (this.count === this.items.length) this.grow();
    this.items[this.at(this.count)] = item;
    this.count++;
    return true;
  }

  /** Take the oldest waiter. */
  shift(): T | undefined {
    if (this.count === 0) return undefined;
    const item = this.items[this.head];
    // Cleared so that the ring does not keep a served waiter alive.
    this.items[this.head] = undefined;
    this.head = this.at(1);
    this.count--;
    return item;
  }

  includes(item: T): boolean {
    return this.indexOf(item) >= 0;
  }

  /** Take `item` out wherever it waits (it gave up); the others keep their order. */
  remove(item: T): boolean {
    const k = this.indexOf(item);
    if (k < 0) return false;
    for (let i = k; i < this.count - 1; i++) this.items[this.at(i)] = this.items[this.at(i + 1)];
    this.items[this.at(this.count - 1)] = undefined;
    this.count--;
    return true;
  }

  /**
   * Put `item` back among waiters kept in ascending `key` order (a request sent again goes
   * before those submitted after it): behind every waiter whose key is not greater.
   */
  insertByKey(item: T, key: (t: T) => number): boolean {
    if (!this.push(item)) return false;
    const k = key(item);
    let i = this.count - 1;
    while (i > 0 && key(this.items[this.at(i - 1)]!) > k) {
      this.items[this.at(i)] = this.items[this.at(i - 1)];
      i--;
    }
    this.items[this.at(i)] = item;
    return true;
  }

  /** Empty the queue; returns every waiter, oldest first (to fail them: a close path). */
  drain(): T[] {
    const out: T[] = [];
    while (this.count > 0) out.push(this.shift()!);
    this.head = 0;
    return out;
  }

  /** The ring slot of the waiter `k` places behind the head. */
  private at(k: number): number {
    const i = this.head + k;
    return i >= this.items.length ? i - this.items.length : i;
  }

  private indexOf(item: T): number {
    for (let k = 0; k < this.count; k++) if (this.items[this.at(k)] === item) return k;
    return -1;
  }

  private grow(): void {
    const next = new Array<T | undefined>(Math.min(this.limit, this.items.length * 2));
    for (let k = 0; k < this.count; k++) next[k] = this.items[this.at(k)];
    this.items = next;
    this.head = 0;
  }
}
