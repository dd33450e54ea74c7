import { constants } from 'node:os';
import { addressRemainder, allocAligned } from '../../util/aligned-buffer.js';
import { fileIoError } from './file-io-error.js';
import type { FileIo } from './file-io.js';
import type { IoDone } from './uring-ring.js';

/** What O_DIRECT demands of one file: buffer addresses, and file offsets and lengths. */
export interface DirectIoAlignment {
  readonly memAlign: number;
  readonly offsetAlign: number;
}

/**
 * File I/O on a descriptor opened with O_DIRECT. The data moves between the disk and the
 * caller's buffer itself when that buffer's address is aligned (the transports' pool buffers
 * are); any other buffer goes through a bounce buffer of its own, allocated aligned for the
 * request, so an unaligned buffer costs a copy but never an error. Offsets and lengths are
 * never bounced: the export advertises the alignment as its logical block size and refuses
 * unaligned requests before they get here, so an unaligned one is a caller's bug and fails with
 * EINVAL (a silent read-modify-write could tear a neighbour's block on a crash).
 */
export class DirectFileIo implements FileIo {
  /** Requests that went through a bounce buffer (their caller's buffer was not aligned). */
  bounced = 0;

  constructor(
    private readonly inner: FileIo,
    readonly alignment: DirectIoAlignment,
  ) {}

  get backend() {
    return this.inner.backend;
  }

  async read(into: Buffer, position: number): Promise<void> {
    this.checkRange('read', into.length, position);
    if (this.aligned(into)) return this.inner.read(into, position);
    this.bounced++;
    const bounce = allocAligned(into.length, 0, this.alignment.memAlign);
    await this.inner.read(bounce, position);
    bounce.copy(into);
  }

  async write(from: Buffer, position: number): Promise<void> {
    this.checkRange('write', from.length, position);
    if (this.aligned(from)) return this.inner.write(from, position);
    this.bounced++;
    const bounce = allocAligned(from.length, 0, this.alignment.memAlign);
    from.copy(bounce);
    await this.inner.write(bounce, position);
  }

  datasync(): Promise<void> {
    return this.inner.datasync();
  }

  /** An aligned buffer goes straight to the backend; another is bounced (read() above). */
  submitRead(into: Buffer, offset: number, length: number, position: number, done: IoDone): void {
    if (this.alignedAt(into, offset) && this.rangeOk(length, position)) return this.inner.submitRead(into, offset, length, position, done);
    report(this.read(into.subarray(offset, offset + length), position), done);
  }

  submitWrite(from: Buffer, offset: number, length: number, position: number, done: IoDone): void {
    if (this.alignedAt(from, offset) && this.rangeOk(length, position)) return this.inner.submitWrite(from, offset, length, position, done);
    report(this.write(from.subarray(offset, offset + length), position), done);
  }

  submitDatasync(done: IoDone): void {
    this.inner.submitDatasync(done);
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  private aligned(buffer: Buffer): boolean {
    return addressRemainder(buffer, this.alignment.memAlign) === 0;
  }

  /** Whether byte `offset` of `buffer` lies on the memory alignment. */
  private alignedAt(buffer: Buffer, offset: number): boolean {
    const align = this.alignment.memAlign;
    const rem = addressRemainder(buffer, align);
    return rem !== null && (rem + offset) % align === 0;
  }

  private rangeOk(length: number, position: number): boolean {
    const align = this.alignment.offsetAlign;
    return position % align === 0 && length % align === 0;
  }

  private checkRange(syscall: 'read' | 'write', length: number, position: number): void {
    const align = this.alignment.offsetAlign;
    if (position % align !== 0 || length % align !== 0) {
      throw fileIoError(constants.errno.EINVAL, syscall, position, `direct I/O of ${length} bytes: offset and length must be multiples of ${align}`);
    }
  }
}

/**
 * A bounced operation's promise reported on `done`. Apart from the submit methods: a closure
 * over `done` there would make V8 allocate a context on every call, aligned ones too.
 */
function report(operation: Promise<void>, done: IoDone): void {
  operation.then(
    () => done.ioDone(null),
    (err: Error) => done.ioDone(err),
  );
}
