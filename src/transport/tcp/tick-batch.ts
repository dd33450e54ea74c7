import type { Writable } from 'node:stream';

/**
 * Gathers everything a connection writes during one turn of the event loop into one write.
 * The first write of a turn corks the socket; the cork comes off in that turn's check phase
 * (setImmediate), after every I/O callback of the turn has run. So the completions of all the
 * device I/O that finished together, or the commands an application issues when a batch of
 * completions arrives, leave in one writev (one system call, fewer segments) instead of one
 * write each. Per-write callbacks and the 'drain'/high-water-mark accounting are Node's own and
 * unchanged: a corked write's callback runs when the batch it went out in has been written.
 */
export class TickBatch {
  private held = false;

  constructor(private readonly socket: Writable) {}

  /** Call before writing: holds the writes of this turn together. */
  hold(): void {
    if (this.held) return;
    this.held = true;
    this.socket.cork();
    setImmediate(this.release);
  }

  private readonly release = (): void => {
    this.held = false;
    // end() and destroy() uncork on their own; uncork() on an uncorked stream does nothing.
    this.socket.uncork();
  };
}
