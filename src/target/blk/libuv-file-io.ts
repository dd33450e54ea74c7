import { read, write } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import type { FileIo } from './file-io.js';
import type { IoDone } from './uring-ring.js';
import { shortTransferError } from './file-io-error.js';
import { InFlightGate } from './in-flight-gate.js';

/** File I/O through Node's fs: each call is a request to libuv's thread pool. */
export class LibuvFileIo implements FileIo {
  readonly backend = 'libuv';
  private readonly gate = new InFlightGate();
  /** Operation records of the callback entry points not in use (one per operation in flight at most). */
  private readonly freeOps: LibuvOp[] = [];

  constructor(private readonly file: FileHandle) {}

  submitRead(into: Buffer, offset: number, length: number, position: number, done: IoDone): void {
    const refused = this.gate.admit('read', position);
    if (refused) return done.ioDone(refused);
    this.op().start(false, into, offset, length, position, done);
  }

  submitWrite(from: Buffer, offset: number, length: number, position: number, done: IoDone): void {
    const refused = this.gate.admit('write', position);
    if (refused) return done.ioDone(refused);
    this.op().start(true, from, offset, length, position, done);
  }

  submitDatasync(done: IoDone): void {
    const refused = this.gate.admit('fdatasync', 0);
    if (refused) return done.ioDone(refused);
    this.op().sync(done);
  }

  private op(): LibuvOp {
    return this.freeOps.pop() ?? new LibuvOp(this.file, this.opEnded);
  }

  /** An operation record's end: it goes back to the pool, then the caller and the gate hear. */
  private readonly opEnded = (op: LibuvOp, done: IoDone, err: Error | null): void => {
    this.freeOps.push(op);
    done.ioDone(err);
    this.gate.leave();
  };

  read(into: Buffer, position: number): Promise<void> {
    return this.gate.enter('read', position) ?? this.settle(this.readAll(into, position));
  }

  write(from: Buffer, position: number): Promise<void> {
    return this.gate.enter('write', position) ?? this.settle(this.writeAll(from, position));
  }

  datasync(): Promise<void> {
    return this.gate.enter('fdatasync', 0) ?? this.settle(this.file.datasync());
  }

  close(): Promise<void> {
    return this.gate.close();
  }

  private async settle(op: Promise<void>): Promise<void> {
    try {
      await op;
    } finally {
      this.gate.leave();
    }
  }

  private async readAll(into: Buffer, position: number): Promise<void> {
    let done = 0;
    while (done < into.length) {
      const { bytesRead } = await this.file.read(into, done, into.length - done, position + done);
      if (bytesRead === 0) throw shortTransferError('read', position + done);
      done += bytesRead;
    }
  }

  private async writeAll(from: Buffer, position: number): Promise<void> {
    let done = 0;
    while (done < from.length) {
      const { bytesWritten } = await this.file.write(from, done, from.length - done, position + done);
      if (bytesWritten === 0) throw shortTransferError('write', position + done);
      done += bytesWritten;
    }
  }
}

/**
 * One read, write or fdatasync through fs's callback API, reused: its callbacks are bound once,
 * so an operation makes no closure or promise of vof's (libuv's request object is Node's).
 */
class LibuvOp {
  private write = false;
  private buffer: Buffer | null = null;
  private offset = 0;
  private length = 0;
  private position = 0;
  private moved = 0;
  private done: IoDone | null = null;

  private readonly fd: number;

  constructor(
    private readonly file: FileHandle,
    private readonly ended: (op: LibuvOp, done: IoDone, err: Error | null) => void,
  ) {
    this.fd = file.fd;
  }

  start(isWrite: boolean, buffer: Buffer, offset: number, length: number, position: number, done: IoDone): void {
    this.write = isWrite;
    this.buffer = buffer;
    this.offset = offset;
    this.length = length;
    this.position = position;
    this.moved = 0;
    this.done = done;
    if (length === 0) return this.end(null);
    this.next();
  }

  /** Through the FileHandle, as datasync() (a sync is not per read or per cached write). */
  sync(done: IoDone): void {
    this.done = done;
    this.file.datasync().then(this.onSynced, this.onSynced);
  }

  private next(): void {
    const at = this.offset + this.moved;
    const rest = this.length - this.moved;
    if (this.write) write(this.fd, this.buffer!, at, rest, this.position + this.moved, this.onMoved);
    else read(this.fd, this.buffer!, at, rest, this.position + this.moved, this.onMoved);
  }

  private readonly onMoved = (err: NodeJS.ErrnoException | null, bytes: number): void => {
    if (err) return this.end(err);
    if (bytes === 0) return this.end(shortTransferError(this.write ? 'write' : 'read', this.position + this.moved));
    this.moved += bytes;
    if (this.moved < this.length) this.next();
    else this.end(null);
  };

  private readonly onSynced = (err?: unknown): void => this.end((err as Error | undefined) ?? null);

  private end(err: Error | null): void {
    const done = this.done!;
    this.done = null;
    this.buffer = null;
    this.ended(this, done, err);
  }
}
