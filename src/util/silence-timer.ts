import { performance } from 'node:perf_hooks';

/**
 * A dead-peer timer (both ends' keepalive timeout: the target's per instance, the initiator's
 * per device): fires when the timeout would run out if nothing were heard since the last check,
 * and re-arms for the rest when something was, so that heard() stays a cheap store on every
 * arriving PDU. Monotonic (performance.now()): a wall-clock step must not look like silence.
 * Once it has called `onSilent` it stays stopped until start().
 */
export class SilenceTimer {
  private lastHeard = performance.now();
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly timeoutMs: number,
    /** Nothing heard for `silentMs` (at least the timeout). */
    private readonly onSilent: (silentMs: number) => void,
  ) {}

  heard(): void {
    this.lastHeard = performance.now();
  }

  /** Watch from now (counting from the last heard()): the first check after the whole timeout. */
  start(): void {
    this.stop();
    this.arm(this.timeoutMs);
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  private arm(delayMs: number): void {
    this.timer = setTimeout(() => {
      this.timer = null;
      const silent = performance.now() - this.lastHeard;
      if (silent >= this.timeoutMs) {
        this.onSilent(silent);
        return;
      }
      this.arm(this.timeoutMs - silent);
    }, Math.max(1, Math.ceil(delayMs)));
    this.timer.unref();
  }
}
