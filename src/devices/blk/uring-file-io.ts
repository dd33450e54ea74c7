import type { FileIo } from './file-io.js';
import { InFlightGate } from './in-flight-gate.js';
import type { RingClient, UringRing } from './uring-ring.js';

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

  fsync(): Promise<void> {
    return this.gate.enter('fsync', 0) ?? this.ring.sync(this.fd, false, this);
  }

  close(): Promise<void> {
    return this.gate.close();
  }

  settled(): void {
    this.gate.leave();
  }
}
