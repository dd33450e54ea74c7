import { BlockIoError } from '../initiator/blk/block-device.js';
import { BlkStatus, SECTOR_SIZE } from '../protocol/virtio-blk.js';
import { NbdCommand, NbdCommandFlag, NbdError, TransmissionFlag, type BlockSizeConstraints } from './nbd-protocol.js';
import { RangeLock } from './range-lock.js';

/**
 * What the NBD server needs from a disk. `BlockDevice` (a remote virtio-blk disk) is one; any
 * object with these members works. Offsets and lengths are bytes, multiples of `blockSize`.
 * `flush()` must make every completed write durable whichever caller issued it (one device-wide
 * cache, as virtio-blk's FLUSH): NBD_FLAG_CAN_MULTI_CONN relies on it.
 */
export interface NbdBlockDevice {
  readonly capacity: number;
  readonly blockSize: number;
  readonly readOnly: boolean;
  readonly canFlush: boolean;
  readonly canDiscard: boolean;
  readonly canWriteZeroes: boolean;
  read(offset: number, into: Buffer): Promise<Buffer>;
  write(offset: number, data: Buffer): Promise<void>;
  flush(): Promise<void>;
  discard(offset: number, length: number): Promise<void>;
  writeZeroes(offset: number, length: number, unmap?: boolean): Promise<void>;
  /**
   * Optional callback forms of read and write (BlockDevice has them): no Promise per request.
   * The callback runs once, never inside the call. Without them every command takes the
   * Promise path.
   */
  submitRead?(offset: number, into: Buffer, callback: (err: Error | null) => void): void;
  submitWrite?(offset: number, data: Buffer, callback: (err: Error | null) => void): void;
}

/**
 * A READ or WRITE run through NbdExport.submit: the connection's reusable per-request state.
 * `lock` is the entry an aligned write holds its range with (reused, its grant bound once).
 */
export interface NbdFastRequest {
  readonly type: number;
  readonly offset: number;
  /** The data read into, or the payload written: exactly the request's length. */
  readonly data: Buffer;
  readonly lock: { start: number; end: number; exclusive: boolean; granted: boolean; grant(): void };
  /** Called once with the outcome (never inside submit()). */
  readonly onDisk: (err: Error | null) => void;
}

/** An NBD command failed with this NBD error value (reply's error field). */
export class NbdCommandError extends Error {
  override name = 'NbdCommandError';
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

/** 32 MiB: the largest READ/WRITE the spec says no server should treat as abuse. */
export const DEFAULT_MAX_BLOCK_BYTES = 32 * 1024 * 1024;

export interface NbdExportOptions {
  /** Export name clients ask for (the empty "default" name is accepted too). */
  readonly name: string;
  /** Human-readable description (NBD_OPT_LIST, NBD_INFO_DESCRIPTION). */
  readonly description?: string;
  /** Refuse writes even if the disk allows them. */
  readonly readOnly?: boolean;
  /** Largest READ/WRITE payload (default 32 MiB, at least the block size). */
  readonly maxBlockBytes?: number;
  /** Advertise NBD_FLAG_CAN_MULTI_CONN (default true; see README "NBD bridge"). */
  readonly multiConn?: boolean;
}

const COMMAND_FLAGS: Record<number, number> = {
  [NbdCommand.READ]: NbdCommandFlag.FUA,
  [NbdCommand.WRITE]: NbdCommandFlag.FUA,
  [NbdCommand.FLUSH]: NbdCommandFlag.FUA,
  [NbdCommand.TRIM]: NbdCommandFlag.FUA,
  [NbdCommand.WRITE_ZEROES]: NbdCommandFlag.FUA | NbdCommandFlag.NO_HOLE,
};

/** The device error behind a failed block call, as an NBD error value. */
export function nbdErrorOf(err: unknown): number {
  if (err instanceof NbdCommandError) return err.code;
  if (err instanceof BlockIoError && err.status === BlkStatus.UNSUPP) return NbdError.EINVAL;
  return NbdError.EIO;
}

/**
 * One disk as an NBD export: its transmission flags and block size constraints, and how each
 * NBD command becomes calls on the disk (range and permission checks, read-modify-write of
 * unaligned edges, FUA as write-then-flush). Shared by every connection to the export.
 */
export class NbdExport {
  readonly name: string;
  readonly description: string;
  readonly size: number;
  readonly readOnly: boolean;
  readonly transmissionFlags: number;
  readonly blockSizes: BlockSizeConstraints;
  /** Read-modify-write granularity: the disk's logical block size. */
  private readonly unit: number;
  private readonly lock = new RangeLock();

  constructor(
    readonly disk: NbdBlockDevice,
    options: NbdExportOptions,
  ) {
    this.name = options.name;
    this.description = options.description ?? '';
    this.unit = Math.max(SECTOR_SIZE, disk.blockSize);
    this.size = disk.capacity;
    this.readOnly = disk.readOnly || (options.readOnly ?? false);
    const max = Math.max(this.unit, Math.floor((options.maxBlockBytes ?? DEFAULT_MAX_BLOCK_BYTES) / this.unit) * this.unit);
    this.blockSizes = { minimum: this.unit, preferred: Math.max(this.unit, 4096), maximum: max };
    let flags = TransmissionFlag.HAS_FLAGS;
    if (this.readOnly) flags |= TransmissionFlag.READ_ONLY;
    if (disk.canFlush) flags |= TransmissionFlag.SEND_FLUSH | TransmissionFlag.SEND_FUA;
    if (!this.readOnly && disk.canDiscard) flags |= TransmissionFlag.SEND_TRIM;
    if (!this.readOnly && disk.canWriteZeroes) flags |= TransmissionFlag.SEND_WRITE_ZEROES;
    // CAN_MULTI_CONN holds: no cache here, every connection uses this one disk, replies follow
    // completion, and the disk's flush covers every completed write (see NbdBlockDevice).
    if (options.multiConn ?? true) flags |= TransmissionFlag.CAN_MULTI_CONN;
    this.transmissionFlags = flags;
  }

  /** Does an export name sent by a client select this export ("" is the default export)? */
  matches(name: string): boolean {
    return name === this.name || name === '';
  }

  /**
   * Check a request before any payload is buffered or any I/O is issued: the NBD error to
   * answer with, or 0. `strictAlignment`: the client agreed to the block size constraints
   * (NBD_OPT_GO with NBD_INFO_BLOCK_SIZE), so an unaligned request is its mistake (EINVAL);
   * other clients get unaligned requests served by read-modify-write. `offset` is the
   * request's 64-bit offset as a number: exact below 2^53, and beyond any export's size above.
   */
  validate(type: number, flags: number, offset: number, length: number, strictAlignment: boolean): { code: number; why: string } | null {
    const allowed = COMMAND_FLAGS[type];
    if (allowed === undefined) return { code: NbdError.EINVAL, why: `unknown command ${type}` };
    if ((flags & ~allowed) !== 0) return { code: NbdError.EINVAL, why: `flags 0x${flags.toString(16)} not valid for this command` };
    const f = this.transmissionFlags;
    const writes = type === NbdCommand.WRITE || type === NbdCommand.TRIM || type === NbdCommand.WRITE_ZEROES;
    if (type === NbdCommand.FLUSH) {
      if (!(f & TransmissionFlag.SEND_FLUSH)) return { code: NbdError.EINVAL, why: 'flush not offered' };
      return null;
    }
    if (type === NbdCommand.TRIM && !(f & TransmissionFlag.SEND_TRIM) && !this.readOnly) return { code: NbdError.EINVAL, why: 'trim not offered' };
    if (type === NbdCommand.WRITE_ZEROES && !(f & TransmissionFlag.SEND_WRITE_ZEROES) && !this.readOnly) return { code: NbdError.EINVAL, why: 'write zeroes not offered' };
    if (writes && this.readOnly) return { code: NbdError.EPERM, why: 'read-only export' };
    if ((type === NbdCommand.READ || type === NbdCommand.WRITE) && length > this.blockSizes.maximum) {
      return { code: NbdError.EINVAL, why: `length ${length} exceeds the maximum block size ${this.blockSizes.maximum}` };
    }
    if (offset + length > this.size) {
      const code = type === NbdCommand.WRITE || type === NbdCommand.WRITE_ZEROES ? NbdError.ENOSPC : NbdError.EINVAL;
      return { code, why: `[${offset}, +${length}) is beyond the export size ${this.size}` };
    }
    if (strictAlignment && (offset % this.unit !== 0 || length % this.unit !== 0)) {
      return { code: NbdError.EINVAL, why: `offset ${offset} or length ${length} not a multiple of the minimum block size ${this.unit}` };
    }
    return null;
  }

  /**
   * The callback path of a validated command, taken when it needs nothing but one disk call: a
   * READ, or a WRITE without FUA, block-aligned and non-empty, on a disk with
   * submitRead/submitWrite. Returns false (nothing done) otherwise: run it with execute().
   * A write holds its range shared in the lock (an unaligned write's read-modify-write of the
   * same blocks waits for it, and it for one already there) until leaveWrite().
   */
  submit(req: NbdFastRequest, flags: number): boolean {
    const length = req.data.length;
    if (length === 0 || req.offset % this.unit !== 0 || length % this.unit !== 0) return false;
    if (req.type === NbdCommand.READ) {
      if (!this.disk.submitRead) return false;
      this.disk.submitRead(req.offset, req.data, req.onDisk);
      return true;
    }
    if (req.type !== NbdCommand.WRITE || !this.disk.submitWrite || (flags & NbdCommandFlag.FUA) !== 0) return false;
    req.lock.start = req.offset;
    req.lock.end = req.offset + length;
    if (this.lock.enter(req.lock)) this.writeGranted(req);
    return true;
  }

  /** A write's range is granted (at once, or by the lock's grant()): issue it. */
  writeGranted(req: NbdFastRequest): void {
    this.disk.submitWrite!(req.offset, req.data, req.onDisk);
  }

  /** A write issued by submit() has ended: its range goes back to the lock. */
  leaveWrite(req: NbdFastRequest): void {
    this.lock.leave(req.lock);
  }

  /** Run a validated command; resolves with the read data (READ) or null, rejects with the NBD error. */
  async execute(type: number, flags: number, offset: number, length: number, payload: Buffer | null): Promise<Buffer | null> {
    try {
      let data: Buffer | null = null;
      switch (type) {
        case NbdCommand.READ:
          data = await this.read(offset, length);
          break;
        case NbdCommand.WRITE:
          await this.write(offset, payload ?? Buffer.alloc(0)); // a zero-length write has none
          break;
        case NbdCommand.WRITE_ZEROES:
          await this.writeZeroes(offset, length);
          break;
        case NbdCommand.TRIM:
          await this.trim(offset, length);
          break;
        case NbdCommand.FLUSH:
          await this.disk.flush();
          return null;
      }
      // FUA: the disk offers no per-request durable write, so write, then flush the cache.
      if (flags & NbdCommandFlag.FUA && type !== NbdCommand.READ && this.disk.canFlush) await this.disk.flush();
      return data;
    } catch (err) {
      throw err instanceof NbdCommandError ? err : new NbdCommandError(nbdErrorOf(err), (err as Error).message);
    }
  }

  private floor(n: number): number {
    return n - (n % this.unit);
  }

  private async read(offset: number, length: number): Promise<Buffer> {
    if (length === 0) return Buffer.alloc(0);
    const start = this.floor(offset);
    const end = this.floor(offset + length + this.unit - 1);
    const buf = await this.disk.read(start, Buffer.allocUnsafe(end - start));
    return start === offset && end === offset + length ? buf : buf.subarray(offset - start, offset - start + length);
  }

  private async write(offset: number, data: Buffer): Promise<void> {
    await this.mutate(
      offset,
      data.length,
      (at, len, src) => this.disk.write(at, data.subarray(src, src + len)),
      (block, at, src, n) => data.copy(block, at, src, src + n),
    );
  }

  private async writeZeroes(offset: number, length: number): Promise<void> {
    // NO_HOLE or not, the area is written with zeros, never unmapped: both meanings hold.
    await this.mutate(
      offset,
      length,
      (at, len) => this.disk.writeZeroes(at, len, false),
      (block, at, _src, n) => block.fill(0, at, at + n),
    );
  }

  /** TRIM is a hint: only the whole blocks inside the range are discarded. */
  private async trim(offset: number, length: number): Promise<void> {
    const start = this.floor(offset + this.unit - 1);
    const end = this.floor(offset + length);
    if (end <= start) return;
    const release = await this.lock.acquire(start, end, false);
    try {
      await this.disk.discard(start, end - start);
    } finally {
      release();
    }
  }

  /**
   * Change [offset, offset+length): whole blocks through `middle(at, len, srcPos)`, partial edge
   * blocks by reading the block, `patch(block, at, srcPos, n)`, writing it back. Edges hold the
   * block range exclusively (see RangeLock); aligned requests share it.
   */
  private async mutate(
    offset: number,
    length: number,
    middle: (at: number, len: number, src: number) => Promise<void>,
    patch: (block: Buffer, at: number, src: number, n: number) => void,
  ): Promise<void> {
    if (length === 0) return;
    const end = offset + length;
    const aligned = offset % this.unit === 0 && end % this.unit === 0;
    const lockStart = this.floor(offset);
    const lockEnd = this.floor(end + this.unit - 1);
    const release = await this.lock.acquire(lockStart, lockEnd, !aligned);
    try {
      if (aligned) {
        await middle(offset, length, 0);
        return;
      }
      const parts: Promise<void>[] = [];
      let pos = offset;
      if (offset % this.unit !== 0) {
        const n = Math.min(end, lockStart + this.unit) - offset;
        parts.push(this.patchBlock(lockStart, offset - lockStart, 0, n, patch));
        pos += n;
      }
      const wholeEnd = this.floor(end);
      if (pos < wholeEnd) {
        parts.push(middle(pos, wholeEnd - pos, pos - offset));
        pos = wholeEnd;
      }
      if (pos < end) parts.push(this.patchBlock(pos, 0, pos - offset, end - pos, patch));
      // Every part settles before the lock is released, even when one fails.
      const failed = (await Promise.allSettled(parts)).find((r) => r.status === 'rejected');
      if (failed) throw failed.reason;
    } finally {
      release();
    }
  }

  private async patchBlock(block: number, at: number, src: number, n: number, patch: (block: Buffer, at: number, src: number, n: number) => void): Promise<void> {
    const buf = await this.disk.read(block, Buffer.allocUnsafe(this.unit));
    patch(buf, at, src, n);
    await this.disk.write(block, buf);
  }
}
