import { performance } from 'node:perf_hooks';

/**
 * A dead-peer timer (both ends' keepalive timeout: the target's per instance, the initiator's
 * per device): fires once nothing has been heard for the timeout. heard() runs on every
 * arriving PDU, so it only sets a flag (no clock read, no number boxed on the heap); the timer
 * checks the flag every quarter of the timeout and counts the silence from the last check that
 * found it set. It therefore fires between the timeout and a quarter more after the last PDU,
 * never early. Monotonic (performance.now()): a wall-clock step must not look like silence.
 * Once it has called `onSilent` it stays stopped until start().
 */
export class SilenceTimer {
  /** As of the last check that found `heardSince` set (or the start). */
  private lastHeard = performance.now();
  private heardSince = false;
  private timer: NodeJS.Timeout | null = null;
  private readonly step: number;

  constructor(
    private readonly timeoutMs: number,
    /** Nothing heard for `silentMs` (at least the timeout). */
    private readonly onSilent: (silentMs: number) => void,
  ) {
    this.step = Math.max(1, timeoutMs / 4);
  }

  heard(): void {
    this.heardSince = true;
  }

  /** Watch from now: silence is counted from the later of now and what is heard after. */
  start(): void {
    this.stop();
    this.lastHeard = performance.now();
    this.heardSince = false;
    this.arm(Math.min(this.step, this.timeoutMs));
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  private arm(delayMs: number): void {
    this.timer = setTimeout(this.check, Math.max(1, Math.ceil(delayMs)));
    this.timer.unref();
  }

  private readonly check = (): void => {
    this.timer = null;
    const now = performance.now();
    if (this.heardSince) {
      this.heardSince = false;
      this.lastHeard = now;
    }
    const silent = now - this.lastHeard;
    if (silent >= this.timeoutMs) {
      this.onSilent(silent);
      return;
    }
    this.arm(Math.min(this.step, this.timeoutMs - silent));
  };
}
