import type { MemoryRegion, ProtectionDomain } from './native-binding.js';

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
