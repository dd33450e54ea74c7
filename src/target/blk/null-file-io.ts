import type { FileIo } from './file-io.js';
import type { IoDone } from './uring-ring.js';

/**
 * Storage that is not there, like the kernel's null_blk: reads complete with zeroes, writes are
 * dropped, flushes are free. `--blk NAME=null:SIZE` exports it so `vof bench` measures the
 * fabric path alone (issue 20).
 */
export class NullFileIo implements FileIo {
  readonly backend = 'null' as const;

  read(into: Buffer): Promise<void> {
    into.fill(0);
    return Promise.resolve();
  }

  write(): Promise<void> {
    return Promise.resolve();
  }

  datasync(): Promise<void> {
    return Promise.resolve();
  }

  trim(): Promise<void> {
    return Promise.resolve();
  }

  writeZeroes(): Promise<void> {
    return Promise.resolve();
  }

  submitRead(into: Buffer, offset: number, length: number, _position: number, done: IoDone): void {
    into.fill(0, offset, offset + length);
    done.ioDone(null);
  }

  submitWrite(_from: Buffer, _offset: number, _length: number, _position: number, done: IoDone): void {
    done.ioDone(null);
  }

  submitDatasync(done: IoDone): void {
    done.ioDone(null);
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}
