/** Which free id take() hands out: the one freed longest ago, or the one freed last. */
export type SlotOrder = 'oldest-freed' | 'last-freed';

/**
 * The one table of slots with integer ids (command ids, io_uring operation slots, work
 * request ids, registered chunks): take() gives a free id, release() gives it back, and each
 * taken id may carry a value (what occupies it) that get() finds by id.
 *
 * Ids are 0..capacity-1, and a fresh table hands them out lowest first. Afterwards the order
 * is the owner's choice: 'last-freed' (a stack: the id just freed is taken next, so what it
 * indexes is still warm in the cache) or 'oldest-freed' (a ring: an id just freed is taken
 * again only after every other free id, so a late or duplicated answer for it is less likely
 * to meet a new user).
 *
 * Storage is made when the table is made (or resized): take() and release() allocate nothing.
 * The capacity changes only through resize() (a negotiated queue size), never on its own.
 * Releasing an id that is not taken throws: the owner has lost track of a slot, which would
 * otherwise hand one id to two users.
 */
export class SlotTable<T = null> {
  /** The free ids: a stack (top at `freeCount - 1`) or a ring (oldest at `head`). */
  private freeIds: Int32Array;
  private head = 0;
  private freeCount = 0;
  /** 1 where the id is taken. */
  private taken: Uint8Array;
  private values: Array<T | null>;
  private takenCount = 0;
  private size = 0;

  constructor(
    capacity: number,
    readonly order: SlotOrder,
  ) {
    this.freeIds = new Int32Array(0);
    this.taken = new Uint8Array(0);
    this.values = [];
    this.resize(capacity);
  }

  /** Ids take() can hand out: 0..capacity-1. */
  get capacity(): number {
    return this.size;
  }

  /** Ids taken now (including ids at or beyond a capacity that shrank, until released). */
  get inUse(): number {
    return this.takenCount;
  }

  /** Ids take() can hand out now. */
  get free(): number {
    return this.freeCount;
  }

  /**
   * Ids 0..capacity-1 from now on, and the free ones lowest first again. An id taken now keeps
   * its value when it is at or beyond the new capacity, until release(), which then retires it
   * (it is not handed out again while the capacity stays below it). Growing makes new storage:
   * a rare call (a queue size negotiated at connect), not one for the data path.
   */
  resize(capacity: number): void {
    if (!(Number.isInteger(capacity) && capacity >= 0)) throw new RangeError(`a slot table's capacity is a count (got ${capacity})`);
    if (capacity > this.taken.length) {
      const taken = new Uint8Array(capacity);
      taken.set(this.taken);
      this.taken = taken;
      for (let id = this.values.length; id < capacity; id++) this.values.push(null);
    }
    if (capacity !== this.freeIds.length) this.freeIds = new Int32Array(capacity);
    this.size = capacity;
    this.head = 0;
    this.freeCount = 0;
    // Lowest first: the ring's head, or the stack's top.
    if (this.order === 'oldest-freed') {
      for (let id = 0; id < capacity; id++) if (this.taken[id] === 0) this.freeIds[this.freeCount++] = id;
    } else {
      for (let id = capacity - 1; id >= 0; id--) if (this.taken[id] === 0) this.freeIds[this.freeCount++] = id;
    }
  }

  /** A free id, now taken and holding `value`; -1 (nothing taken) when none is free. */
  take(value: T | null = null): number {
    if (this.freeCount === 0) return -1;
    let id: number;
    if (this.order === 'oldest-freed') {
      id = this.freeIds[this.head]!;
      this.head = this.head + 1 === this.size ? 0 : this.head + 1;
    } else {
      id = this.freeIds[this.freeCount - 1]!;
    }
    this.freeCount--;
    this.taken[id] = 1;
    this.values[id] = value;
    this.takenCount++;
    return id;
  }

  /** Give `id` back; returns the value it held. Throws when `id` is not taken. */
  release(id: number): T | null {
    if (!this.isTaken(id)) throw new Error(`slot ${id} released but not taken`);
    const value = this.values[id]!;
    // Cleared so that a free slot does not keep what it held alive.
    this.values[id] = null;
    this.taken[id] = 0;
    this.takenCount--;
    if (id < this.size) {
      if (this.order === 'oldest-freed') {
        const tail = this.head + this.freeCount;
        this.freeIds[tail >= this.size ? tail - this.size : tail] = id;
      } else {
        this.freeIds[this.freeCount] = id;
      }
      this.freeCount++;
    }
    return value;
  }

  isTaken(id: number): boolean {
    return id >= 0 && id < this.taken.length && this.taken[id] === 1;
  }

  /** The value taken `id` holds; null when `id` is free, out of range, or holds null. */
  get(id: number): T | null {
    return this.isTaken(id) ? this.values[id]! : null;
  }

  /** Replace the value taken `id` holds. Throws when `id` is not taken. */
  set(id: number, value: T | null): void {
    if (!this.isTaken(id)) throw new Error(`slot ${id} set but not taken`);
    this.values[id] = value;
  }

  /**
   * The taken id after `id` (pass -1 to start), or -1 when there is none: walks every taken
   * id, in ascending order, allocating nothing. Releasing the id just returned is allowed.
   */
  nextTaken(id: number): number {
    const taken = this.taken;
    for (let i = id + 1; i < taken.length; i++) if (taken[i] === 1) return i;
    return -1;
  }

  /**
   * Release every taken id, in ascending order; returns the values they held that are not null
   * (a teardown: what was in the slots, to fail it).
   */
  releaseAll(): T[] {
    const out: T[] = [];
    for (let id = this.nextTaken(-1); id >= 0; id = this.nextTaken(id)) {
      const value = this.release(id);
      if (value !== null) out.push(value);
    }
    return out;
  }
}
