import { constants } from 'node:os';
import { getSystemErrorName } from 'node:util';

/** An fs-style error: `code` is the errno name, as Node's fs sets it. */
export function fileIoError(errno: number, syscall: string, position: number, detail?: string): NodeJS.ErrnoException {
  const code = getSystemErrorName(-errno);
  const err: NodeJS.ErrnoException = new Error(`${code}: ${syscall} at byte ${position}${detail ? `: ${detail}` : ''}`);
  err.code = code;
  err.errno = -errno;
  err.syscall = syscall;
  return err;
}

/** A read that met the end of the file before filling its buffer, or a write that made no progress. */
export function shortTransferError(syscall: 'read' | 'write', position: number): NodeJS.ErrnoException {
  return fileIoError(constants.errno.EIO, syscall, position, syscall === 'read' ? 'end of file before the buffer was filled' : 'no progress');
}
