import type { FileHandle } from 'node:fs/promises';
import type { FileIo } from './file-io.js';
import { shortTransferError } from './file-io-error.js';
import { InFlightGate } from './in-flight-gate.js';

/** File I/O through Node's fs: each call is a request to libuv's thread pool. */
export class LibuvFileIo implements FileIo {
  readonly backend = 'libuv';
  private readonly gate = new InFlightGate();

  constructor(private readonly file: FileHandle) {}

  read(into: Buffer, position: number): Promise<void> {
    return this.gate.enter('read', position) ?? this.settle(this.readAll(into, position));
  }

  write(from: Buffer, position: number): Promise<void> {
    return this.gate.enter('write', position) ?? this.settle(this.writeAll(from, position));
  }

  datasync(): Promise<void> {
    return this.gate.enter('fdatasync', 0) ?? this.settle(this.file.datasync());
  }

  fsync(): Promise<void> {
    return this.gate.enter('fsync', 0) ?? this.settle(this.file.sync());
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
