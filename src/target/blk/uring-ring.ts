import { REBUILD_HINT, loadNativeAddon } from '../../util/native-addon.js';
import { fileIoError, shortTransferError } from './file-io-error.js';
import { WaiterQueue } from '../../util/waiter-queue.js';
import { SlotTable } from '../../util/slot-table.js';

/** The addon's io_uring (native/file_ring.cc): flat numbers and typed arrays in, flat pairs out. */
interface NativeFileRing {
  /** (slot, result) pairs of the batch onCompletions(count) announces; result < 0 is -errno. */
  readonly completions: Int32Array;
  /** Operations the ring can hold in flight (its completion queue size). */
  readonly slots: number;
  readonly inFlight: number;
  /** Times the ring's descriptor woke the loop (completions reaped in the check phase cost none). */
  readonly wakes: number;
  read(fd: number, buffer: Uint8Array, offset: number, length: number, position: number, slot: number): void;
  write(fd: number, buffer: Uint8Array, offset: number, length: number, position: number, slot: number): void;
  fsync(fd: number, datasync: boolean, slot: number): void;
  /** true: released now; false: released after the last completion. */
  close(): boolean;
}
type FileRingConstructor = new (entries: number, onCompletions: (count: number) => void) => NativeFileRing;

/** Submission queue entries; the completion queue (and so the slots) is twice that. */
const RING_ENTRIES = 256;

export const READ = 0;
export const WRITE = 1;
const FSYNC = 2;
export const FDATASYNC = 3;
export type OpKind = typeof READ | typeof WRITE | typeof FSYNC | typeof FDATASYNC;

/** Told when one of its operations has settled (a file counts its I/O in flight). */
export interface RingClient {
  settled(): void;
}

/**
 * Where an operation's end goes: once, with null or the error. Callers keep one per request
 * and reuse it, so an operation allocates nothing (the ring keeps its state in per-slot arrays).
 */
export interface IoDone {
  ioDone(err: Error | null): void;
}

/** An operation that found every slot busy: it waits (the only case that makes an object). */
class WaitingOp {
  constructor(
    readonly kind: OpKind,
    readonly fd: number,
    readonly buffer: Buffer | null,
    readonly offset: number,
    readonly length: number,
    readonly position: number,
    readonly client: RingClient,
    readonly done: IoDone,
  ) {}
}

/** The promise entry points' IoDone: made per call, for callers off the per-command path. */
class PromisedOp implements IoDone {
  resolve!: () => void;
  reject!: (err: Error) => void;
  readonly executor = (resolve: () => void, reject: (err: Error) => void): void => {
    this.resolve = resolve;
    this.reject = reject;
  };
  ioDone(err: Error | null): void {
    if (err) this.reject(err);
    else this.resolve();
  }
}

/**
 * The process's io_uring for file exports and its slot table. An operation takes a free slot
 * (the ring's user data), whose state lives in per-slot arrays made once, or waits in FIFO
 * order for one; a short read or write is continued in the same slot from its completion.
 * The native ring batches submissions per loop turn and delivers completions in batches; this
 * class owns it for the life of the process (it holds the loop only while I/O is in flight;
 * the addon's environment-cleanup hook releases it at exit).
 */
export class UringRing {
  readonly slots: number;
  private readonly ring: NativeFileRing;
  // One operation per slot, in place: what, where, and how far it got.
  private readonly kindOf: Uint8Array;
  private readonly fdOf: Int32Array;
  private readonly offsetOf: Float64Array;
  private readonly lengthOf: Float64Array;
  private readonly positionOf: Float64Array;
  private readonly doneBytes: Float64Array;
  private readonly bufferOf: Array<Buffer | null>;
  private readonly clientOf: Array<RingClient | null>;
  /**
   * The slots, each taken by one operation and holding where its end goes: as many as the
   * ring can hold in flight. The slot freed last is taken next (its per-slot entries are the
   * ones most likely still in the cache); the kernel sees no difference.
   */
  private readonly ops: SlotTable<IoDone>;
  /** Operations for a free slot, oldest first; bounded by the process's requests in flight on files. */
  private readonly waiting = new WaiterQueue<WaitingOp>(Number.POSITIVE_INFINITY);

  constructor(ctor: FileRingConstructor) {
    this.ring = new ctor(RING_ENTRIES, (count) => this.onCompletions(count));
    const n = (this.slots = this.ring.slots);
    this.kindOf = new Uint8Array(n);
    this.fdOf = new Int32Array(n);
    this.offsetOf = new Float64Array(n);
    this.lengthOf = new Float64Array(n);
    this.positionOf = new Float64Array(n);
    this.doneBytes = new Float64Array(n);
    this.bufferOf = new Array<Buffer | null>(n).fill(null);
    this.clientOf = new Array<RingClient | null>(n).fill(null);
    this.ops = new SlotTable<IoDone>(n, 'last-freed');
  }

  /** Operations in the kernel now (not counting those waiting for a slot). */
  get inFlight(): number {
    return this.ring.inFlight;
  }

  read(fd: number, into: Buffer, position: number, client: RingClient): Promise<void> {
    return this.promised(READ, fd, into, position, client);
  }

  write(fd: number, from: Buffer, position: number, client: RingClient): Promise<void> {
    return this.promised(WRITE, fd, from, position, client);
  }

  sync(fd: number, datasync: boolean, client: RingClient): Promise<void> {
    return this.promised(datasync ? FDATASYNC : FSYNC, fd, null, 0, client);
  }

  private promised(kind: OpKind, fd: number, buffer: Buffer | null, position: number, client: RingClient): Promise<void> {
    const op = new PromisedOp();
    const p = new Promise<void>(op.executor);
    this.start(kind, fd, buffer, 0, buffer?.length ?? 0, position, client, op);
    return p;
  }

  /**
   * One operation on bytes [offset, offset + length) of `buffer` (null for a sync): `done`
   * hears its end, then `client`. Ends at once (before this returns) only when there is nothing
   * to move or the addon refuses the arguments.
   */
  start(kind: OpKind, fd: number, buffer: Buffer | null, offset: number, length: number, position: number, client: RingClient, done: IoDone): void {
    if (buffer !== null && length === 0) return finish(client, done, null);
    const slot = this.ops.take(done);
    if (slot < 0) {
      this.waiting.push(new WaitingOp(kind, fd, buffer, offset, length, position, client, done));
      return;
    }
    this.kindOf[slot] = kind;
    this.fdOf[slot] = fd;
    this.bufferOf[slot] = buffer;
    this.offsetOf[slot] = offset;
    this.lengthOf[slot] = length;
    this.positionOf[slot] = position;
    this.doneBytes[slot] = 0;
    this.clientOf[slot] = client;
    this.submit(slot);
  }

  /** Hands the slot's operation (or its rest, after a short transfer) to the kernel. */
  private submit(slot: number): void {
    const kind = this.kindOf[slot]!;
    try {
      if (kind === READ || kind === WRITE) {
        const done = this.doneBytes[slot]!;
        const buffer = this.bufferOf[slot]!;
        const at = this.offsetOf[slot]! + done;
        const rest = this.lengthOf[slot]! - done;
        const position = this.positionOf[slot]! + done;
        if (kind === READ) this.ring.read(this.fdOf[slot]!, buffer, at, rest, position, slot);
        else this.ring.write(this.fdOf[slot]!, buffer, at, rest, position, slot);
      } else {
        this.ring.fsync(this.fdOf[slot]!, kind === FDATASYNC, slot);
      }
    } catch (err) {
      this.end(slot, err as Error);
    }
  }

  private onCompletions(count: number): void {
    const pairs = this.ring.completions;
    for (let i = 0; i < count; i++) {
      const slot = pairs[2 * i]!;
      const result = pairs[2 * i + 1]!;
      if (!this.ops.isTaken(slot)) continue;
      const kind = this.kindOf[slot]! as OpKind;
      if (result < 0) {
        this.end(slot, fileIoError(-result, syscallOf(kind), this.positionOf[slot]! + this.doneBytes[slot]!));
      } else if (kind === FSYNC || kind === FDATASYNC) {
        this.end(slot, null);
      } else if (result === 0) {
        this.end(slot, shortTransferError(kind === READ ? 'read' : 'write', this.positionOf[slot]! + this.doneBytes[slot]!));
      } else {
        const done = (this.doneBytes[slot] = this.doneBytes[slot]! + result);
        if (done < this.lengthOf[slot]!) this.submit(slot);
        else this.end(slot, null);
      }
    }
  }

  /** The slot's operation has ended: the slot goes to the longest waiting operation, then the caller hears. */
  private end(slot: number, err: Error | null): void {
    const client = this.clientOf[slot]!;
    this.bufferOf[slot] = null;
    this.clientOf[slot] = null;
    const done = this.ops.release(slot)!;
    this.startWaiting();
    finish(client, done, err);
  }

  /** A slot is free again: the longest waiting operation takes it. */
  private startWaiting(): void {
    const next = this.waiting.shift();
    if (next !== undefined) this.start(next.kind, next.fd, next.buffer, next.offset, next.length, next.position, next.client, next.done);
  }
}

/** Tells the caller first, so its reactions run before those of a close() it ends. */
function finish(client: RingClient, done: IoDone, err: Error | null): void {
  done.ioDone(err);
  client.settled();
}

function syscallOf(kind: OpKind): string {
  return kind === READ ? 'read' : kind === WRITE ? 'write' : kind === FSYNC ? 'fsync' : 'fdatasync';
}

/** io_uring is unavailable because the addon itself does not load (e.g. no rdma-core libraries). */
export class NoAddonError extends Error {
  override name = 'NoAddonError';
}

let shared: UringRing | Error | null = null;

/**
 * The process's ring, created on first use, or why io_uring cannot be used here: the addon does
 * not load (not built: no C++ toolchain at install), or the kernel refuses the probe ring (old kernel, io_uring disabled, seccomp). Decided once per process.
 */
export function sharedUringRing(): UringRing | Error {
  if (shared) return shared;
  let ctor: FileRingConstructor | undefined;
  try {
    ctor = (loadNativeAddon() as { FileRing?: FileRingConstructor }).FileRing;
  } catch (err) {
    shared = new NoAddonError(`vof's native addon does not load (${(err as Error).message.split('\n')[0]})`);
    return shared;
  }
  if (typeof ctor !== 'function') {
    shared = new Error(`vof's native addon predates io_uring support (rebuild it: ${REBUILD_HINT})`);
    return shared;
  }
  try {
    shared = new UringRing(ctor);
  } catch (err) {
    shared = err as Error;
  }
  return shared;
}
