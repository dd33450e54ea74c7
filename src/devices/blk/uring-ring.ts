import { addonBuildCommand, loadNativeAddon } from '../../util/native-addon.js';
import { fileIoError, shortTransferError } from './file-io-error.js';

/** The addon's io_uring (native/file_ring.cc): flat numbers and typed arrays in, flat pairs out. */
interface NativeFileRing {
  /** (slot, result) pairs of the batch onCompletions(count) announces; result < 0 is -errno. */
  readonly completions: Int32Array;
  /** Operations the ring can hold in flight (its completion queue size). */
  readonly slots: number;
  readonly inFlight: number;
  /** Times the eventfd woke the loop (completions reaped in the check phase cost none). */
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

const READ = 0;
const WRITE = 1;
const FSYNC = 2;
const FDATASYNC = 3;
type OpKind = typeof READ | typeof WRITE | typeof FSYNC | typeof FDATASYNC;

/** Told when one of its operations has settled (a file counts its I/O in flight). */
export interface RingClient {
  settled(): void;
}

/** One file operation: it holds a slot while in the kernel, or waits for one. */
class RingOp {
  done = 0;
  constructor(
    readonly kind: OpKind,
    readonly fd: number,
    readonly buffer: Buffer | null,
    readonly position: number,
    readonly client: RingClient,
    readonly resolve: () => void,
    readonly reject: (err: Error) => void,
  ) {}
}

/**
 * The process's io_uring for file exports and its slot table. Operations take a free slot (the
 * ring's user data) or wait in FIFO order for one; a short read or write is continued in the
 * same slot from its completion. The native ring batches submissions per loop turn and delivers
 * completions in batches; this class owns it for the life of the process (it holds the loop
 * only while I/O is in flight; the addon's environment-cleanup hook releases it at exit).
 */
export class UringRing {
  readonly slots: number;
  private readonly ring: NativeFileRing;
  private readonly inSlot: Array<RingOp | null>;
  private readonly freeSlots: number[] = [];
  private readonly waiting: RingOp[] = [];
  private waitingHead = 0;

  constructor(ctor: FileRingConstructor) {
    this.ring = new ctor(RING_ENTRIES, (count) => this.onCompletions(count));
    this.slots = this.ring.slots;
    this.inSlot = new Array<RingOp | null>(this.slots).fill(null);
    for (let s = this.slots - 1; s >= 0; s--) this.freeSlots.push(s);
  }

  /** Operations in the kernel now (not counting those waiting for a slot). */
  get inFlight(): number {
    return this.ring.inFlight;
  }

  read(fd: number, into: Buffer, position: number, client: RingClient): Promise<void> {
    return this.start(READ, fd, into, position, client);
  }

  write(fd: number, from: Buffer, position: number, client: RingClient): Promise<void> {
    return this.start(WRITE, fd, from, position, client);
  }

  sync(fd: number, datasync: boolean, client: RingClient): Promise<void> {
    return this.start(datasync ? FDATASYNC : FSYNC, fd, null, 0, client);
  }

  private start(kind: OpKind, fd: number, buffer: Buffer | null, position: number, client: RingClient): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const op = new RingOp(kind, fd, buffer, position, client, resolve, reject);
      if (buffer !== null && buffer.length === 0) return this.finish(op, null);
      const slot = this.freeSlots.pop();
      if (slot === undefined) this.waiting.push(op);
      else this.submit(op, slot);
    });
  }

  private submit(op: RingOp, slot: number): void {
    this.inSlot[slot] = op;
    try {
      if (op.kind === READ || op.kind === WRITE) {
        const buffer = op.buffer!;
        const submitOne = op.kind === READ ? this.ring.read : this.ring.write;
        submitOne.call(this.ring, op.fd, buffer, op.done, buffer.length - op.done, op.position + op.done, slot);
      } else {
        this.ring.fsync(op.fd, op.kind === FDATASYNC, slot);
      }
    } catch (err) {
      this.release(slot);
      this.finish(op, err as Error);
    }
  }

  private onCompletions(count: number): void {
    const pairs = this.ring.completions;
    for (let i = 0; i < count; i++) {
      const slot = pairs[2 * i]!;
      const result = pairs[2 * i + 1]!;
      const op = this.inSlot[slot];
      if (!op) continue;
      if (result < 0) {
        this.release(slot);
        this.finish(op, fileIoError(-result, syscallOf(op.kind), op.position + op.done));
      } else if (op.kind === FSYNC || op.kind === FDATASYNC) {
        this.release(slot);
        this.finish(op, null);
      } else if (result === 0) {
        this.release(slot);
        this.finish(op, shortTransferError(op.kind === READ ? 'read' : 'write', op.position + op.done));
      } else {
        op.done += result;
        if (op.done < op.buffer!.length) this.submit(op, slot);
        else {
          this.release(slot);
          this.finish(op, null);
        }
      }
    }
  }

  /** A slot is free again: the longest waiting operation takes it. */
  private release(slot: number): void {
    this.inSlot[slot] = null;
    if (this.waitingHead < this.waiting.length) {
      const next = this.waiting[this.waitingHead++]!;
      if (this.waitingHead === this.waiting.length) {
        this.waiting.length = 0;
        this.waitingHead = 0;
      }
      this.submit(next, slot);
    } else {
      this.freeSlots.push(slot);
    }
  }

  /** Settles the caller's promise first, so its reactions run before those of a close() it ends. */
  private finish(op: RingOp, err: Error | null): void {
    if (err) op.reject(err);
    else op.resolve();
    op.client.settled();
  }
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
 * not load (no rdma-core libraries, not built), it was built without liburing, or the kernel
 * refuses the probe ring (old kernel, io_uring disabled, seccomp). Decided once per process.
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
    shared = new Error(`vof's native addon predates io_uring support (rebuild it: ${addonBuildCommand()})`);
    return shared;
  }
  try {
    shared = new UringRing(ctor);
  } catch (err) {
    shared = err as Error;
  }
  return shared;
}
