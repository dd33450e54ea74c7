import { NbdCommand, NBD_ERROR_NAMES } from '../../nbd/nbd-protocol.js';
import { NBD_LOST, NBD_PROTOCOL_ERROR } from '../../nbd/nbd-client.js';
import type { NbdSource } from '../../nbd/nbd-source.js';
import type { FileIo } from './file-io.js';
import type { IoDone } from './uring-ring.js';

/** One request's adapter from the source's numeric answer to the caller's IoDone; pooled. */
class NbdOp {
  caller: IoDone | null = null;
  readonly answer: (error: number) => void;

  constructor(io: NbdFileIo) {
    this.answer = (error) => io.answered(this, error);
  }
}

function nbdError(error: number): NodeJS.ErrnoException {
  const code = error === NBD_LOST ? 'ENOTCONN' : error === NBD_PROTOCOL_ERROR ? 'EPROTO' : (NBD_ERROR_NAMES[error] ?? 'EIO');
  const why = error === NBD_LOST ? 'the NBD server is not connected' : error === NBD_PROTOCOL_ERROR ? 'the NBD server broke the protocol' : `the NBD server answered ${code}`;
  const err = new Error(why) as NodeJS.ErrnoException;
  err.code = code;
  return err;
}

/**
 * A block export's storage on an NBD server (issue 20): reads, writes, flushes, trims and
 * zeroing go to the server as NBD commands through an NbdSource (which reconnects). A failed
 * request rejects with an errno-like `code` (EIO, ENOSPC, ... or ENOTCONN when the server is
 * gone), which the device answers as VIRTIO_BLK_S_IOERR.
 */
export class NbdFileIo implements FileIo {
  readonly backend = 'nbd' as const;
  private readonly spare: NbdOp[] = [];

  constructor(private readonly source: NbdSource) {}

  read(into: Buffer, position: number): Promise<void> {
    return this.run(NbdCommand.READ, position, into.length, into);
  }

  write(from: Buffer, position: number): Promise<void> {
    return this.run(NbdCommand.WRITE, position, from.length, from);
  }

  datasync(): Promise<void> {
    // A server without flush has nothing to make durable on request (the export then offers
    // no VIRTIO_BLK_F_FLUSH, and the driver knows writes are as durable as they will get).
    return this.source.info.canFlush ? this.run(NbdCommand.FLUSH, 0, 0, null) : Promise.resolve();
  }

  /** NBD_CMD_TRIM when the server takes it; a discard is a hint, so otherwise nothing. */
  trim(position: number, length: number): Promise<void> {
    return this.source.info.canTrim ? this.run(NbdCommand.TRIM, position, length, null) : Promise.resolve();
  }

  /** NBD_CMD_WRITE_ZEROES, or null when the server has none (the export then writes zeroes). */
  writeZeroes(position: number, length: number): Promise<void> | null {
    return this.source.info.canWriteZeroes ? this.run(NbdCommand.WRITE_ZEROES, position, length, null) : null;
  }

  close(): Promise<void> {
    return this.source.close();
  }

  submitRead(into: Buffer, offset: number, length: number, position: number, done: IoDone): void {
    this.submit(NbdCommand.READ, position, length, view(into, offset, length), done);
  }

  submitWrite(from: Buffer, offset: number, length: number, position: number, done: IoDone): void {
    this.submit(NbdCommand.WRITE, position, length, view(from, offset, length), done);
  }

  submitDatasync(done: IoDone): void {
    if (!this.source.info.canFlush) return done.ioDone(null);
    this.submit(NbdCommand.FLUSH, 0, 0, null, done);
  }

  /** Called by an NbdOp's bound callback. */
  answered(op: NbdOp, error: number): void {
    const caller = op.caller!;
    op.caller = null;
    this.spare.push(op);
    caller.ioDone(error === 0 ? null : nbdError(error));
  }

  private submit(type: number, position: number, length: number, data: Buffer | null, done: IoDone): void {
    const op = this.spare.pop() ?? new NbdOp(this);
    op.caller = done;
    this.source.submit(type, 0, position, length, data, op.answer);
  }

  private run(type: number, position: number, length: number, data: Buffer | null): Promise<void> {
    return new Promise((resolve, reject) =>
      this.source.submit(type, 0, position, length, data, (error) => (error === 0 ? resolve() : reject(nbdError(error)))),
    );
  }
}

/** The bytes [offset, offset + length) of `b`: `b` itself when that is all of it (no view made). */
function view(b: Buffer, offset: number, length: number): Buffer {
  return offset === 0 && length === b.length ? b : b.subarray(offset, offset + length);
}
