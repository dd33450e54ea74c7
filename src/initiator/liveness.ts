import type { Logger } from '../util/log.js';
import { SilenceTimer } from '../util/silence-timer.js';

/** The keepalive defaults of ConnectOptions. */
export const DEFAULT_KEEPALIVE_INTERVAL_MS = 5000;
export const DEFAULT_KEEPALIVE_TIMEOUT_MS = 15000;

/**
 * A device's liveness, initiator side: a Keepalive Command every interval while connected, and
 * dead-target detection on its own timer (the same SilenceTimer as the target's instances),
 * fed by whatever the control queue hears. Interval 0 turns both off.
 */
export class Liveness {
  private keepaliveTimer: NodeJS.Timeout | null = null;
  private readonly silence: SilenceTimer | null;

  constructor(
    readonly intervalMs: number,
    readonly timeoutMs: number,
    private readonly sendKeepalive: () => void,
    /** Nothing heard for `silentMs` (at least the timeout); the timer then stays stopped. */
    onSilent: (silentMs: number) => void,
  ) {
    this.silence = intervalMs > 0 && timeoutMs > 0 ? new SilenceTimer(timeoutMs, onSilent) : null;
  }

  /** Said once per connect(), before the first Connect (a target may never answer it). */
  static checkSettings(url: string, intervalMs: number, timeoutMs: number, log: Logger): void {
    if (intervalMs <= 0) {
      log.warn(`${url}: keepalive disabled: a target destroys this instance once it hears nothing on any queue for its keepalive timeout (vof: 15 s by default), and a vanished target goes unnoticed until a request fails`);
    } else if (timeoutMs > 0 && timeoutMs < intervalMs) {
      log.warn(`${url}: keepalive timeout ${timeoutMs} ms is below the interval ${intervalMs} ms: an idle but healthy target may be declared lost; use a timeout of about 3 intervals`);
    }
  }

  /** Something arrived from the target. */
  heard(): void {
    this.silence?.heard();
  }

  /** Watch for silence from now (a connection, or a reconnected one). */
  watch(): void {
    this.silence?.start();
  }

  /** Send keepalives (once the device is at DRIVER_OK). */
  startKeepalive(): void {
    if (this.intervalMs <= 0) return;
    this.keepaliveTimer = setInterval(this.sendKeepalive, this.intervalMs);
    this.keepaliveTimer.unref();
  }

  /** Both timers off (a path failure, loss or close). */
  stop(): void {
    if (this.keepaliveTimer) clearInterval(this.keepaliveTimer);
    this.keepaliveTimer = null;
    this.silence?.stop();
  }
}
