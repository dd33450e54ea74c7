import { constants } from 'node:os';
import { fileIoError } from './file-io-error.js';

/**
 * Counts one file's operations in flight, so that close() can wait for them before the owner
 * closes the descriptor, and refuses new ones after close() (as EBADF, like a closed FileHandle).
 */
export class InFlightGate {
  private count = 0;
  private closed = false;
  private drained: (() => void) | null = null;

  /** null: admitted (call leave() when it settles); else the refusal to return. */
  enter(syscall: string, position: number): Promise<never> | null {
    const refused = this.admit(syscall, position);
    return refused === null ? null : Promise.reject(refused);
  }

  /** enter() without a promise: null when admitted, else the error to report. */
  admit(syscall: string, position: number): Error | null {
    if (this.closed) return fileIoError(constants.errno.EBADF, syscall, position, 'the file is closed');
    this.count++;
    return null;
  }

  /** Called as the last operation settles: close() resolves after the callers' own reactions. */
  leave(): void {
    if (--this.count === 0 && this.drained) {
      queueMicrotask(this.drained);
      this.drained = null;
    }
  }

  close(): Promise<void> {
    this.closed = true;
    if (this.count === 0) return Promise.resolve();
    return new Promise((resolve) => (this.drained = resolve));
  }
}
