/**
 * "Something changed; look again": waiters get a promise that settles on the next wake(). One
 * promise serves every waiter of a round, and nothing is allocated while nobody waits, so a
 * hot path may call wake() on every event (a request finished, bytes were given back).
 */
export class WakeSignal {
  private promise: Promise<void> | null = null;
  private resolve: (() => void) | null = null;

  /** Settles at the next wake(). */
  wait(): Promise<void> {
    if (this.promise === null) this.promise = new Promise<void>((r) => (this.resolve = r));
    return this.promise;
  }

  /** Someone waits for the next wake() (so a caller can skip working out whether to wake). */
  get waiting(): boolean {
    return this.resolve !== null;
  }

  wake(): void {
    const resolve = this.resolve;
    if (resolve === null) return;
    this.promise = null;
    this.resolve = null;
    resolve();
  }
}
