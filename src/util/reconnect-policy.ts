/**
 * When and for how long an initiator reconnects after a queue or keepalive failure, in the
 * spirit of nvme-cli's reconnect_delay / ctrl_loss_tmo / fast_io_fail_tmo. All times in ms.
 */
export interface ReconnectOptions {
  /** Wait between reconnect attempts (default 2000). */
  readonly reconnectDelayMs?: number;
  /**
   * How long after the failure the device may stay disconnected before it is declared lost and
   * held I/O fails. 0 (the library default) never reconnects: the first failure loses the
   * device. -1 reconnects forever.
   */
  readonly ctrlLossTimeoutMs?: number;
  /**
   * After this long disconnected, held and new I/O fail at once while reconnecting goes on
   * (the device still comes back). -1 (default): I/O is held until reconnect or loss.
   */
  readonly fastIoFailTimeoutMs?: number;
}

export interface ReconnectPolicy {
  readonly delayMs: number;
  readonly lossTimeoutMs: number;
  readonly fastIoFailMs: number;
}

export const DEFAULT_RECONNECT_DELAY_MS = 2000;

function checkTime(name: string, v: number, allowForever: boolean): number {
  if (!Number.isFinite(v) || (v < 0 && !(allowForever && v === -1))) {
    throw new RangeError(`${name} must be a non-negative number of ms${allowForever ? ' or -1 (forever)' : ''}, got ${v}`);
  }
  return v;
}

export function reconnectPolicy(o: ReconnectOptions): ReconnectPolicy {
  return {
    delayMs: checkTime('reconnectDelayMs', o.reconnectDelayMs ?? DEFAULT_RECONNECT_DELAY_MS, false),
    lossTimeoutMs: checkTime('ctrlLossTimeoutMs', o.ctrlLossTimeoutMs ?? 0, true),
    fastIoFailMs: checkTime('fastIoFailTimeoutMs', o.fastIoFailTimeoutMs ?? -1, true),
  };
}

/** Does this policy reconnect at all? */
export function reconnects(p: ReconnectPolicy): boolean {
  return p.lossTimeoutMs !== 0;
}

/**
 * The "m" of "reconnect attempt n of m": how many attempts fit in the loss timeout (the first
 * right away, then one per delay), or "unlimited".
 */
export function plannedAttempts(p: ReconnectPolicy): string {
  if (p.lossTimeoutMs < 0) return 'unlimited';
  return String(Math.floor(p.lossTimeoutMs / Math.max(1, p.delayMs)) + 1);
}

/** Device connection state, as `vof info` and the NBD bridge show it. */
export type DeviceState = 'connecting' | 'connected' | 'reconnecting' | 'lost' | 'closed';
