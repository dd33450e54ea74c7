/**
 * The device side of a virtio split virtqueue (virtio 1.2, 2.7) in memory the kernel's virtio
 * driver fills: vof's VDUSE device takes each available descriptor chain (pop), turns it into
 * one Virtio-oF VQ command, and gives the head back with the bytes written (push).
 *
 * The driver is the peer and is not trusted. Every address it writes goes through
 * IovaMemory.view; every index is checked before it is used; every field of shared memory is
 * read once into a local and checked there (the driver may change it under us). What the spec
 * forbids the driver to write is a RingError naming it: the caller fails the device
 * (NEEDS_RESET), the process goes on.
 *
 * Memory ordering. The driver runs on other CPUs and pairs its accesses with barriers (Linux
 * virtio_ring.c: virtio_wmb before publishing avail->idx, virtio_rmb after reading used->idx,
 * virtio_mb before reading avail_event / after writing used_event). C devices (libvduse, vhost)
 * answer with smp_rmb after reading avail->idx, smp_wmb before publishing used->idx and
 * smp_mb between writing avail_event / used.flags and re-reading avail->idx, and between
 * publishing used->idx and reading used_event. JS has no fence instruction, and its memory
 * model orders Atomics only on a SharedArrayBuffer, which a Buffer over an external mmap is
 * not (Atomics do run on a plain ArrayBuffer, with no promise across agents). What this code
 * relies on instead, on x86-64 (the VDUSE hosts vof supports):
 *
 *  - Program order reaches the CPU. V8 keeps typed-array loads and stores on its effect chain
 *    in program order and emits each as one mov; it does not keep a shared field in a register
 *    across a function call, and every poll of avail->idx is a fresh call into this class.
 *  - x86-64 is TSO: the CPU keeps load→load (smp_rmb), store→store (smp_wmb) and load→store
 *    order; on x86 those C barriers are compiler barriers only. So reading avail->idx before
 *    the ring entries and descriptors, and writing the used element before used->idx, are
 *    ordered by program order alone.
 *  - The one order x86 does not keep is store→load (a store may sit in the store buffer while a
 *    later load completes). Where the protocol needs it (smp_mb) we execute a locked
 *    instruction: Atomics.add on a private SharedArrayBuffer word, which V8 runs as a locked
 *    read-modify-write (its AtomicsAdd builtin is a `lock cmpxchg` loop on x64; inlined, a
 *    `lock xadd`). Loads and stores are not reordered with locked instructions, whatever
 *    address those name (Intel SDM vol. 3A, "Memory Ordering in P6 and More Recent Processor
 *    Families"), so it is a full fence for the ring memory too.
 *  - No tearing. The fields both sides change while the queue runs (avail flags/idx/used_event,
 *    used flags/idx/avail_event) are read and written through naturally aligned Uint16Array
 *    views: one 16-bit access each, atomic on x86. Buffer.readUInt16LE/writeUInt16LE would do
 *    two byte accesses: the driver could see half an index. (Checked on Node 20 x64 with
 *    --print-opt-code and --print-builtin-code: the Uint16Array accesses are one movw /
 *    movzxwl each, kept in program order around the call to AtomicsAdd.) Descriptors and
 *    available-ring entries are read only after avail->idx published them and are not
 *    changed by a correct driver while the device owns them; a wrong driver gets values
 *    checked like any other.
 *
 * On a weakly ordered CPU (arm64) the second and third points do not hold: descriptors could
 * be read before the avail->idx that published them, and the driver would read stale used
 * elements. That needs native barriers, which this class does not have, so the constructor
 * refuses any host but x86-64 (little-endian, as the typed arrays need).
 */
import { endianness } from 'node:os';
import type { IovaMemory } from './iova-memory.js';
import {
  AVAIL_ALIGN,
  DESC_ADDR,
  DESC_ALIGN,
  DESC_BYTES,
  DESC_FLAGS,
  DESC_LEN,
  DESC_NEXT,
  MAX_QUEUE_SIZE,
  USED_ALIGN,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_USED_F_NO_NOTIFY,
  availRingBytes,
  descTableBytes,
  needEvent,
  usedRingBytes,
} from './ring-layout.js';

/** The driver broke the split-ring rules: the device needs a reset. */
export class RingError extends Error {
  override name = 'RingError';
}

/**
 * One descriptor chain as the device sees it: device-readable segments (the request) then
 * device-writable segments (the response). Reused by the caller: pop() resets it, so no
 * allocation per chain beyond the Buffer views themselves (views into the mapping, no copy).
 * The readable views are Buffers like the others, but the spec forbids the device to write
 * them (2.7.5: "A device MUST NOT write to a device-readable buffer").
 */
export class DescriptorChain {
  head = 0;
  readonly readable: Buffer[] = [];
  readonly writable: Buffer[] = [];
  readableBytes = 0;
  writableBytes = 0;
}

export interface SplitRingOptions {
  /** Queue size: a power of 2, at most 32768. */
  size: number;
  /** IOVA of the descriptor table. */
  descAddr: number;
  /** IOVA of the available ring (the driver area). */
  driverAddr: number;
  /** IOVA of the used ring (the device area). */
  deviceAddr: number;
  /** VIRTIO_F_EVENT_IDX was negotiated: used_event / avail_event instead of the flags. */
  eventIdx: boolean;
  /** Where to resume after a reset or a suspend (VDUSE_VQ_GET_INFO's split.avail_index); default 0. */
  availIdx?: number;
}

/**
 * A full memory fence: see the memory-ordering comment at the top. The word is private and
 * its value meaningless; only the locked instruction matters.
 */
const FENCE_WORD = new Int32Array(new SharedArrayBuffer(4));
function fullFence(): void {
  Atomics.add(FENCE_WORD, 0, 1);
}

/** Index of avail.idx / used.idx in a Uint16Array over the ring (byte offset 2). */
const IDX = 1;
/** Index of avail.flags / used.flags (byte offset 0). */
const FLAGS = 0;

export class SplitRing {
  private readonly memory: IovaMemory;
  private readonly size: number;
  private readonly mask: number;
  private readonly descAddr: number;
  private readonly driverAddr: number;
  private readonly deviceAddr: number;
  private readonly eventIdx: boolean;

  /** The ring areas, taken anew when the IOVA regions change (memory.generation). */
  private generation = -1;
  private descTable: Buffer = Buffer.alloc(0);
  private avail16: Uint16Array = new Uint16Array(0);
  private used16: Uint16Array = new Uint16Array(0);
  private used32: Uint32Array = new Uint32Array(0);

  /** Next available-ring entry to take (free-running 16-bit, like avail.idx). */
  private nextAvail: number;
  /** Our copy of used.idx: we are its only writer, so never read back from shared memory. */
  private usedIdx: number;
  /** Our copy of used.flags. */
  private usedFlags = 0;
  /** Heads popped and not yet pushed: a head is in flight at most once. */
  private readonly headInFlight: Uint8Array;
  private inFlightCount = 0;
  /** Notifications wanted: pop() keeps avail_event at the next entry (event idx). */
  private notifying = true;
  /** used.idx when we last decided about an interrupt (event idx), as in libvduse/QEMU. */
  private signalledUsed = 0;
  private signalledUsedValid = false;

  constructor(memory: IovaMemory, opts: SplitRingOptions) {
    if (process.arch !== 'x64' || endianness() !== 'LE') {
      throw new Error(`SplitRing's memory ordering holds on x86-64 only (this host: ${process.arch})`);
    }
    const { size, descAddr, driverAddr, deviceAddr, eventIdx } = opts;
    // The queue's geometry comes from the kernel (VDUSE_VQ_GET_INFO), which relays the driver.
    if (!Number.isInteger(size) || size < 1 || size > MAX_QUEUE_SIZE || (size & (size - 1)) !== 0) {
      throw new RingError(`queue size ${size} is not a power of 2 in 1..${MAX_QUEUE_SIZE}`);
    }
    checkAddr('descriptor table', descAddr, DESC_ALIGN);
    checkAddr('available ring', driverAddr, AVAIL_ALIGN);
    checkAddr('used ring', deviceAddr, USED_ALIGN);
    const availIdx = opts.availIdx ?? 0;
    if (!Number.isInteger(availIdx) || availIdx < 0 || availIdx > 0xffff) {
      throw new RingError(`avail index ${availIdx} is not a 16-bit value`);
    }
    this.memory = memory;
    this.size = size;
    this.mask = size - 1;
    this.descAddr = descAddr;
    this.driverAddr = driverAddr;
    this.deviceAddr = deviceAddr;
    this.eventIdx = eventIdx;
    this.headInFlight = new Uint8Array(size);
    // A queue (re)starts with nothing in flight, so the used index resumes where the
    // available one does (VDUSE's queue state carries one index, as vhost's split state).
    this.nextAvail = availIdx;
    this.usedIdx = availIdx;
    this.signalledUsed = availIdx;
    this.mapRing();
    // Memory agrees with our state from the start: notifications on. A ring taken over after
    // a reset or a suspend may still hold what an earlier SplitRing wrote there (NO_NOTIFY
    // left set would mean no kick ever comes), and under event idx the first buffer the
    // driver adds must kick us wherever a zeroed or restored avail_event pointed.
    this.used16[FLAGS] = this.usedFlags;
    if (eventIdx) this.used16[this.availEventIndex()] = this.nextAvail;
  }

  /** For VDUSE_GET_VQ_STATE: the next available-ring entry the device will take. */
  get lastAvailIdx(): number {
    return this.nextAvail;
  }

  /** Chains popped, not yet pushed. */
  get inFlight(): number {
    return this.inFlightCount;
  }

  /**
   * Takes the next available chain into `chain`; false when none. Throws RingError for a
   * malformed chain (nothing is consumed then: the caller fails the device).
   */
  pop(chain: DescriptorChain): boolean {
    this.refresh();
    // Read avail.idx once, before any entry it publishes (load→load order, see top).
    const availIdx = this.avail16[IDX]!;
    const pending = (availIdx - this.nextAvail) & 0xffff;
    if (pending === 0) return false;
    if (pending > this.size) {
      throw new RingError(
        `avail idx ${availIdx} is ${pending} entries ahead of the device's ${this.nextAvail}, more than the queue size ${this.size}`,
      );
    }
    const head = this.avail16[2 + (this.nextAvail & this.mask)]!;
    if (head >= this.size) {
      throw new RingError(`available ring entry ${this.nextAvail} names head ${head}, not below the queue size ${this.size}`);
    }
    if (this.headInFlight[head] !== 0) {
      throw new RingError(`available ring entry ${this.nextAvail} names head ${head}, which is already in flight`);
    }
    this.walk(head, chain);
    // The walk's translations may have mapped (or replaced) regions through resolve().
    this.refresh();
    this.headInFlight[head] = 1;
    this.inFlightCount++;
    this.nextAvail = (this.nextAvail + 1) & 0xffff;
    // Kick me when you add the entry after the ones I took (2.7.10): kept up to date at every
    // pop, so a caller that only drains the ring on each kick never misses one.
    if (this.eventIdx && this.notifying) this.used16[this.availEventIndex()] = this.nextAvail;
    return true;
  }

  /** Puts head with `written` bytes into the used ring and publishes used.idx. */
  push(head: number, written: number): void {
    if (!Number.isInteger(head) || head < 0 || head >= this.size || this.headInFlight[head] === 0) {
      throw new RangeError(`push of head ${head}, which is not in flight`);
    }
    if (!Number.isInteger(written) || written < 0 || written > 0xffffffff) {
      throw new RangeError(`push of head ${head} with ${written} bytes written: not a 32-bit length`);
    }
    this.refresh();
    // The element first, then the index (store→store order, see top): the driver reads the
    // element only after it sees the index.
    const slot = this.usedIdx & this.mask;
    this.used32[1 + 2 * slot] = head;
    this.used32[2 + 2 * slot] = written;
    const old = this.usedIdx;
    this.usedIdx = (old + 1) & 0xffff;
    this.used16[IDX] = this.usedIdx;
    this.headInFlight[head] = 0;
    this.inFlightCount--;
    // 2^15 pushes without a decision: signalledUsed could alias a later index (libvduse does
    // the same check); decide afresh then.
    if (((this.usedIdx - this.signalledUsed) & 0xffff) >= 0x8000) this.signalledUsedValid = false;
  }

  /** After pushes: true if the driver wants an interrupt (event idx or NO_INTERRUPT). */
  shouldNotify(): boolean {
    this.refresh();
    // used.idx is published (a store); used_event / avail.flags are loads that must see what
    // the driver wrote before it re-checked used.idx: store→load, a full fence.
    fullFence();
    if (!this.eventIdx) {
      return (this.avail16[FLAGS]! & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
    }
    const usedEvent = this.avail16[2 + this.size]!;
    const valid = this.signalledUsedValid;
    const old = this.signalledUsed;
    this.signalledUsedValid = true;
    this.signalledUsed = this.usedIdx;
    // The first decision has no "old": notify (a spurious interrupt is harmless, a lost one is not).
    return !valid || needEvent(usedEvent, this.usedIdx, old);
  }

  /**
   * Before sleeping on the kick fd: re-enables notifications (avail_event / NO_NOTIFY) and says
   * whether more became available meanwhile (then pop again instead of sleeping).
   */
  enableNotifications(): boolean {
    this.refresh();
    this.notifying = true;
    if (this.eventIdx) {
      this.used16[this.availEventIndex()] = this.nextAvail;
    } else {
      this.usedFlags &= ~VIRTQ_USED_F_NO_NOTIFY;
      this.used16[FLAGS] = this.usedFlags;
    }
    // The driver adds, fences, then reads our request; we write our request, fence, then read
    // avail.idx: one of us sees the other (store→load, a full fence).
    fullFence();
    return this.avail16[IDX]! !== this.nextAvail;
  }

  /** While draining: asks the driver not to kick (NO_NOTIFY, or avail_event left behind). */
  disableNotifications(): void {
    this.refresh();
    this.notifying = false;
    // Under event idx there is nothing to write: pop() stops moving avail_event, so once the
    // driver has added past it, it does not kick until enableNotifications() moves it again.
    if (!this.eventIdx) {
      this.usedFlags |= VIRTQ_USED_F_NO_NOTIFY;
      this.used16[FLAGS] = this.usedFlags;
    }
  }

  /** Collects the chain starting at `head` into `chain`, checking every rule of 2.7.5. */
  private walk(head: number, chain: DescriptorChain): void {
    chain.head = head;
    chain.readable.length = 0;
    chain.writable.length = 0;
    chain.readableBytes = 0;
    chain.writableBytes = 0;
    let table = this.descTable;
    // Descriptors a chain can reach in the current table; it visits each at most once, so
    // more visits than that is a loop.
    let max = this.size;
    let indirect = false;
    let seen = 0;
    let i = head;
    let sawWritable = false;
    for (;;) {
      seen++;
      if (seen > max) {
        throw new RingError(
          `chain at head ${head} is longer than ${indirect ? `its indirect table (${max} reachable descriptors)` : `the queue size ${max}`}: a loop`,
        );
      }
      const at = i * DESC_BYTES;
      // Each field read once; the checks below use these locals only.
      const addrLo = table.readUInt32LE(at + DESC_ADDR);
      const addrHi = table.readUInt32LE(at + DESC_ADDR + 4);
      const len = table.readUInt32LE(at + DESC_LEN);
      const flags = table.readUInt16LE(at + DESC_FLAGS);
      const next = table.readUInt16LE(at + DESC_NEXT);
      // Above 2^53 - 1 a JS number would round, maybe onto a mapped address: refuse first.
      if (addrHi > 0x1fffff) {
        throw new RingError(`${where(head, i, indirect)}: address 0x${addrHi.toString(16)}${addrLo.toString(16).padStart(8, '0')} is beyond 2^53`);
      }
      const addr = addrHi * 0x1_0000_0000 + addrLo;

      if ((flags & VIRTQ_DESC_F_INDIRECT) !== 0) {
        if (indirect) throw new RingError(`${where(head, i, indirect)}: an indirect table inside an indirect table`);
        if ((flags & VIRTQ_DESC_F_NEXT) !== 0) throw new RingError(`${where(head, i, indirect)}: both INDIRECT and NEXT`);
        if (len === 0 || len % DESC_BYTES !== 0) {
          throw new RingError(`${where(head, i, indirect)}: indirect table of ${len} bytes, not a non-zero multiple of ${DESC_BYTES}`);
        }
        const view = this.memory.view(addr, len);
        if (view === null) {
          throw new RingError(`${where(head, i, indirect)}: indirect table [0x${addr.toString(16)}, +${len}) is not inside one mapped region`);
        }
        table = view;
        // A u16 `next` reaches entries 0..65535 only: in a larger table a chain longer than
        // 65536 is a loop. Without this cap a looping table of up to 2^28 entries would be
        // walked (and its views collected) up to 2^28 times before the loop is noticed.
        max = Math.min(len / DESC_BYTES, 0x10000);
        indirect = true;
        seen = 0;
        i = 0;
        continue;
      }

      // A zero-length buffer carries nothing: skipped (its NEXT still counts).
      if (len !== 0) {
        const writable = (flags & VIRTQ_DESC_F_WRITE) !== 0;
        if (!writable && sawWritable) {
          throw new RingError(`${where(head, i, indirect)}: a device-readable buffer after a device-writable one`);
        }
        const view = this.memory.view(addr, len);
        if (view === null) {
          throw new RingError(`${where(head, i, indirect)}: buffer [0x${addr.toString(16)}, +${len}) is not inside one mapped region`);
        }
        if (writable) {
          sawWritable = true;
          chain.writable.push(view);
          chain.writableBytes += len;
        } else {
          chain.readable.push(view);
          chain.readableBytes += len;
        }
        // 2.7.5: "Drivers MUST NOT add a descriptor chain longer than 2^32 bytes in total" (the
        // used length is a le32). Checked at every addition, so the sum stays exact.
        if (chain.readableBytes + chain.writableBytes > 0x1_0000_0000) {
          throw new RingError(`${where(head, i, indirect)}: the chain is longer than 2^32 bytes in total`);
        }
      }

      if ((flags & VIRTQ_DESC_F_NEXT) === 0) return;
      if (next >= max) {
        throw new RingError(`${where(head, i, indirect)}: NEXT ${next} points past the ${indirect ? 'indirect ' : ''}table of ${max} descriptors`);
      }
      i = next;
    }
  }

  /** Takes the ring areas anew if the IOVA regions changed since. */
  private refresh(): void {
    if (this.generation !== this.memory.generation) this.mapRing();
  }

  private mapRing(): void {
    const generation = this.memory.generation;
    const desc = this.area('descriptor table', this.descAddr, descTableBytes(this.size), DESC_ALIGN);
    const avail = this.area('available ring', this.driverAddr, availRingBytes(this.size, this.eventIdx), AVAIL_ALIGN);
    const used = this.area('used ring', this.deviceAddr, usedRingBytes(this.size, this.eventIdx), USED_ALIGN);
    this.descTable = desc;
    this.avail16 = new Uint16Array(avail.buffer, avail.byteOffset, avail.length >>> 1);
    this.used16 = new Uint16Array(used.buffer, used.byteOffset, used.length >>> 1);
    // The elements only (flags and idx are the first word): u32 index 1 + 2 * slot.
    this.used32 = new Uint32Array(used.buffer, used.byteOffset, (4 + 8 * this.size) >>> 2);
    this.generation = generation;
  }

  private area(what: string, addr: number, bytes: number, align: number): Buffer {
    const view = this.memory.view(addr, bytes);
    if (view === null) {
      throw new RingError(`the ${what} [0x${addr.toString(16)}, +${bytes}) is not inside one mapped region`);
    }
    // The IOVA is aligned (checked); the mapping must be too, for the typed arrays.
    if (view.byteOffset % align !== 0) {
      throw new RingError(`the ${what} at 0x${addr.toString(16)} is not ${align}-byte aligned in its mapping`);
    }
    return view;
  }

  /** avail_event's index in used16: after the used elements (byte 4 + 8 * size). */
  private availEventIndex(): number {
    return 2 + 4 * this.size;
  }
}

/** Names a descriptor in a RingError (built only when one is thrown). */
function where(head: number, i: number, indirect: boolean): string {
  return indirect ? `indirect descriptor ${i} of head ${head}` : `descriptor ${i} (head ${head})`;
}

function checkAddr(what: string, addr: number, align: number): void {
  if (!Number.isSafeInteger(addr) || addr < 0 || addr % align !== 0) {
    throw new RingError(`the ${what} address ${addr} is not a ${align}-byte aligned IOVA`);
  }
}
