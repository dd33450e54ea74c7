import { WakeSignal } from './wake-signal.js';

/**
 * A count of bytes that may be spent at once (buffers of commands in flight), with a way to
 * wait until some are given back. One per queue and one per target bound what peers can make
 * the target hold, whatever they do (docs/PROTOCOL.md, "Memory a peer can make the target hold").
 */
export class ByteBudget {
  private spent = 0;
  private readonly given = new WakeSignal();

  constructor(readonly limit: number) {}

  get used(): number {
    return this.spent;
  }

  /**
   * Whether n more bytes fit. With nothing spent anything fits, so that one command larger
   * than the limit still makes progress (alone) instead of waiting forever.
   */
  fits(n: number): boolean {
    return this.spent === 0 || this.spent + n <= this.limit;
  }

  take(n: number): void {
    this.spent += n;
  }

  give(n: number): void {
    if (n === 0) return;
    this.spent -= n;
    this.given.wake();
  }

  /** Settles the next time bytes are given back. */
  whenGiven(): Promise<void> {
    return this.given.wait();
  }
}
