import type { FileIo } from './file-io.js';
import { InFlightGate } from './in-flight-gate.js';
import { FDATASYNC, READ, WRITE, type IoDone, type RingClient, type UringRing } from './uring-ring.js';

/**
 * One open file's I/O through the process's io_uring. The file descriptor stays owned by its
 * FileHandle; close() waits until none of this file's operations is in the kernel any more, so
 * the owner can then close the descriptor.
 */
export class UringFileIo implements FileIo, RingClient {
  readonly backend = 'uring';
  private readonly gate = new InFlightGate();

  constructor(
    private readonly ring: UringRing,
    private readonly fd: number,
  ) {}

  read(into: Buffer, position: number): Promise<void> {
    return this.gate.enter('read', position) ?? this.ring.read(this.fd, into, position, this);
  }

  write(from: Buffer, position: number): Promise<void> {
    return this.gate.enter('write', position) ?? this.ring.write(this.fd, from, position, this);
  }

  datasync(): Promise<void> {
    return this.gate.enter('fdatasync', 0) ?? this.ring.sync(this.fd, true, this);
  }

  submitRead(into: Buffer, offset: number, length: number, position: number, done: IoDone): void {
    const refused = this.gate.admit('read', position);
    if (refused) return done.ioDone(refused);
    this.ring.start(READ, this.fd, into, offset, length, position, this, done);
  }

  submitWrite(from: Buffer, offset: number, length: number, position: number, done: IoDone): void {
    const refused = this.gate.admit('write', position);
    if (refused) return done.ioDone(refused);
    this.ring.start(WRITE, this.fd, from, offset, length, position, this, done);
  }

  submitDatasync(done: IoDone): void {
    const refused = this.gate.admit('fdatasync', 0);
    if (refused) return done.ioDone(refused);
    this.ring.start(FDATASYNC, this.fd, null, 0, 0, 0, this, done);
  }

  close(): Promise<void> {
    return this.gate.close();
  }

  settled(): void {
    this.gate.leave();
  }
}
