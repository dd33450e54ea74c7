import type { MemoryRegion, ProtectionDomain } from './native-binding.js';
import type { PinDomain } from '../pinned-memory.js';

interface Entry {
  readonly offset: number;
  readonly length: number;
  readonly access: number;
  readonly mr: MemoryRegion;
  users: number;
  lastUse: number;
}

/**
 * Registrations of caller Buffers, so that a buffer used again (a read target, a write source)
 * moves with zero copies and no new registration. Each entry covers exactly the bytes of the
 * Buffer it was made for, with exactly the access asked for, never its neighbours. The cache is
 * bounded: the least recently used idle entry is deregistered first. An entry keeps its Buffer
 * alive until deregistered, so the NIC never targets memory the JS heap has reused.
 *
 * The RDMA initiator uses it only when asked to (KeyedMemoryOptions.registrationCache), with
 * LOCAL_WRITE | MW_BIND access: a cached registration grants the target nothing by itself; each
 * command binds a memory window over its bytes and invalidates it on completion, so a cached
 * buffer's keys die with the request like every other key. A first use of a buffer registers
 * it on the data path, which is why this is opt-in.
 */
export class MemoryRegistrationCache {
  private readonly byBacking = new Map<ArrayBufferLike, Entry[]>();
  private size = 0;
  private clock = 0;

  constructor(
    private readonly pd: ProtectionDomain,
    readonly capacity: number,
  ) {}

  /** A registration covering `buf` with `access`; call the returned release when the transfer is over. */
  acquire(buf: Buffer, access: number): { mr: MemoryRegion; offset: number; release: () => void } {
    const list = this.byBacking.get(buf.buffer) ?? [];
    let entry = list.find(
      (e) => e.access === access && e.offset <= buf.byteOffset && buf.byteOffset + buf.length <= e.offset + e.length,
    );
    if (!entry) {
      this.evict();
      entry = { offset: buf.byteOffset, length: buf.length, access, mr: this.pd.registerMemory(buf, access), users: 0, lastUse: 0 };
      list.push(entry);
      this.byBacking.set(buf.buffer, list);
      this.size++;
    }
    const e = entry;
    e.users++;
    e.lastUse = ++this.clock;
    let released = false;
    return {
      mr: e.mr,
      offset: buf.byteOffset - e.offset,
      release: () => {
        if (released) return;
        released = true;
        e.users--;
      },
    };
  }

  private evict(): void {
    while (this.size >= this.capacity) {
      let victim: { backing: ArrayBufferLike; entry: Entry } | null = null;
      for (const [backing, list] of this.byBacking) {
        for (const entry of list) {
          if (entry.users === 0 && (!victim || entry.lastUse < victim.entry.lastUse)) victim = { backing, entry };
        }
      }
      if (!victim) return; // everything is in use: grow past capacity rather than fail a transfer
      this.remove(victim.backing, victim.entry);
    }
  }

  private remove(backing: ArrayBufferLike, entry: Entry): void {
    const list = this.byBacking.get(backing)!;
    list.splice(list.indexOf(entry), 1);
    if (list.length === 0) this.byBacking.delete(backing);
    this.size--;
    entry.mr.deregister();
  }

  /** Deregister everything (the connection is gone, so no transfer can still use them). */
  clear(): void {
    for (const list of this.byBacking.values()) for (const e of list) e.mr.deregister();
    this.byBacking.clear();
    this.size = 0;
  }
}

/** A pinned buffer's registration in one protection domain, and the commands using it now. */
export interface PinEntry {
  readonly buffer: Buffer;
  readonly mr: MemoryRegion;
  readonly owner: PinnedRegistrations;
  /** Commands whose windows may be bound over it: deregistration waits for them. */
  users: number;
  /** Released by its owner (or the domain is going): deregistered when `users` reaches 0. */
  released: boolean;
}

/**
 * The registrations of one PinnedMemory's buffers in one protection domain (its PinDomain):
 * made when the buffer is pinned or the domain joins, never on the data path, never evicted;
 * deregistered when the buffer is released, but not while a command may still have a window
 * bound over it (ibv_dereg_mr of a region with bound windows fails). Same access as the cache's
 * entries (LOCAL_WRITE | MW_BIND): the target reaches a pinned buffer only through the
 * per-command windows.
 */
export class PinnedRegistrations implements PinDomain {
  private readonly byBacking = new Map<ArrayBufferLike, PinEntry[]>();

  constructor(
    private readonly pd: ProtectionDomain,
    private readonly access: number,
  ) {}

  add(buf: Buffer): void {
    const entry: PinEntry = { buffer: buf, mr: this.pd.registerMemory(buf, this.access), owner: this, users: 0, released: false };
    const list = this.byBacking.get(buf.buffer);
    if (list) list.push(entry);
    else this.byBacking.set(buf.buffer, [entry]);
  }

  remove(buf: Buffer): void {
    const list = this.byBacking.get(buf.buffer);
    const at = list ? list.findIndex((e) => e.buffer === buf) : -1;
    if (!list || at < 0) return; // its registration had failed: nothing to undo
    const entry = list[at]!;
    list.splice(at, 1);
    if (list.length === 0) this.byBacking.delete(buf.buffer);
    entry.released = true;
    if (entry.users === 0) entry.mr.deregister();
  }

  /**
   * The registration holding every byte of `view` (a pinned buffer or any slice of one), or
   * null: a view straddling a pinned buffer's end, or outside all of them, is not in place.
   */
  find(view: Buffer): PinEntry | null {
    const list = this.byBacking.get(view.buffer);
    if (!list) return null;
    for (let i = 0; i < list.length; i++) {
      const e = list[i]!;
      const offset = view.byteOffset - e.buffer.byteOffset;
      if (offset >= 0 && offset + view.length <= e.buffer.length) return e;
    }
    return null;
  }

  /** A command binds windows over `entry`: keep it registered until done(). */
  use(entry: PinEntry): void {
    entry.users++;
  }

  /** That command is over (its windows invalidated, or its connection gone). */
  done(entry: PinEntry): void {
    entry.users--;
    if (entry.released && entry.users === 0) entry.mr.deregister();
  }

  /** The domain goes (its last connection on this PD closed, every command over): deregister all. */
  clear(): void {
    for (const list of this.byBacking.values()) {
      for (const e of list) {
        e.released = true;
        if (e.users === 0) e.mr.deregister();
      }
    }
    this.byBacking.clear();
  }
}
