// A peer's liveness, the same on both ends: a keepalive sent every interval, and a dead-peer
// timer fed by whatever the peer sends. The target runs one per device instance (it sends
// Keepalive Completions, destroys an instance whose initiator went silent); the initiator one per
// device (it sends Keepalive Commands, fails the path when the target went silent).

/**
 * A dead-peer timer (both ends' keepalive timeout: the target's per instance, the initiator's
 * per device): fires once nothing has been heard for the timeout. heard() runs on every
 * arriving PDU, so it only sets a flag (no clock read, no number boxed on the heap); the timer
 * checks the flag every quarter of the timeout and counts the silence from the last check that
 * found it set. It therefore fires between the timeout and a quarter more after the last PDU,
 * never early. Monotonic (the global performance.now(), which fake timers can drive in tests):
 * a wall-clock step must not look like silence.
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

/**
 * Both liveness timers of one peer: `sendKeepalive` every `intervalMs` once startKeepalive()
 * ran (0: never), and `onSilent` once nothing was heard for `timeoutMs` after watch() (0: never).
 * stop() ends both (a path failure, loss, close or destroy).
 */
export class Liveness {
  private keepaliveTimer: NodeJS.Timeout | null = null;
  private readonly silence: SilenceTimer | null;

  constructor(
    readonly intervalMs: number,
    readonly timeoutMs: number,
    private readonly sendKeepalive: () => void,
    /** Nothing heard for `silentMs` (at least the timeout); the silence timer then stays stopped. */
    onSilent: (silentMs: number) => void,
  ) {
    this.silence = timeoutMs > 0 ? new SilenceTimer(timeoutMs, onSilent) : null;
  }

  /** Something arrived from the peer. */
  heard(): void {
    this.silence?.heard();
  }

  /** Watch for silence from now (a new connection, or a reconnected one). */
  watch(): void {
    this.silence?.start();
  }

  /** Send keepalives from now on. */
  startKeepalive(): void {
    if (this.intervalMs <= 0 || this.keepaliveTimer) return;
    this.keepaliveTimer = setInterval(this.sendKeepalive, this.intervalMs);
    this.keepaliveTimer.unref();
  }

  /** Both timers off. */
  stop(): void {
    if (this.keepaliveTimer) clearInterval(this.keepaliveTimer);
    this.keepaliveTimer = null;
    this.silence?.stop();
  }
}

/**
 * The warning both ends give for a timeout shorter than the interval (a peer keeping alive at
 * that pace looks dead between two keepalives); `effect` says what that does on this end.
 * Null when both are on and the timeout is at least the interval, or either is off.
 */
export function timeoutBelowInterval(intervalMs: number, timeoutMs: number, effect: string): string | null {
  if (intervalMs <= 0 || timeoutMs <= 0 || timeoutMs >= intervalMs) return null;
  return `keepalive timeout ${timeoutMs} ms is below the interval ${intervalMs} ms: ${effect}; use a timeout of about 3 intervals`;
}
