import { performance } from 'node:perf_hooks';
import type { Logger } from '../util/log.js';
import { plannedAttempts, type DeviceState, type ReconnectPolicy } from '../util/reconnect-policy.js';
import type { ResumePoint } from './init-sequence.js';
import { VofConnectionError, VofRedirectError, VofResumeError } from './vof-error.js';

/** What the reconnect loop drives: the device whose path failed (RemoteDevice). */
export interface SupervisedPath {
  /** Where the device is now (a redirect during an attempt changes it). */
  url(): string;
  state(): DeviceState;
  log(): Logger;
  /** Attempt `attempt` of `of` starts (an event for the device's listeners). */
  attemptStarts(attempt: number, of: string): void;
  /** One attempt: a new control queue, the initialization checked against `resume`, the virtqueues. */
  resumeOnce(resume: ResumePoint): Promise<void>;
  /** The attempt failed: its queues are stale and dropped. */
  attemptFailed(err: Error): void;
  /** The fast-io-fail timeout passed: held and new I/O fail with `err` while attempts go on. */
  failIo(err: Error): void;
  /** Connected again after `attempt` attempts: held I/O goes out. */
  reconnected(attempt: number): void;
  /** Given up: the device is lost. */
  lose(err: Error): void;
}

/**
 * The reconnect loop after a path failure (nvme-fabrics' reconnect_delay, ctrl_loss_tmo and
 * fast_io_fail_tmo; docs/CLI.md "Reconnect"): attempts every `delayMs` until one succeeds, the
 * loss timeout passes (the deadline holds even if an attempt hangs), or an attempt finds the
 * device changed (VofResumeError) or redirected to a transport the user did not allow. It ends
 * as soon as the device leaves the reconnecting state (lost, closed, or connected).
 */
export async function superviseReconnect(path: SupervisedPath, policy: ReconnectPolicy, resume: ResumePoint, cause: Error): Promise<void> {
  const { delayMs, lossTimeoutMs, fastIoFailMs } = policy;
  const started = performance.now();
  const timers: NodeJS.Timeout[] = [];
  if (fastIoFailMs >= 0) {
    timers.push(
      setTimeout(() => {
        path.failIo(new VofConnectionError(`${path.url()}: disconnected for ${fastIoFailMs} ms (fast-io-fail timeout): I/O fails while reconnecting goes on (${cause.message})`));
      }, fastIoFailMs),
    );
  }
  if (lossTimeoutMs >= 0) {
    // The deadline holds even if an attempt hangs (a target that accepts but never answers).
    timers.push(setTimeout(() => path.lose(new VofConnectionError(`${path.url()}: not reconnected within the loss timeout of ${lossTimeoutMs} ms: device lost (${cause.message})`)), lossTimeoutMs));
  }
  const of = plannedAttempts(policy);
  try {
    for (let attempt = 1; ; attempt++) {
      if (path.state() !== 'reconnecting') return;
      path.log().info(`${path.url()}: reconnect attempt ${attempt} of ${of}`);
      path.attemptStarts(attempt, of);
      try {
        await path.resumeOnce(resume);
      } catch (err) {
        if (path.state() !== 'reconnecting') return;
        path.attemptFailed(err as Error);
        // Neither a changed device nor a move to a transport the user did not allow gets
        // better by trying again.
        if (err instanceof VofResumeError || (err instanceof VofRedirectError && err.reason === 'transport')) {
          path.lose(err);
          return;
        }
        path.log().warn(`${path.url()}: reconnect attempt ${attempt} failed: ${(err as Error).message}`);
        const left = lossTimeoutMs < 0 ? delayMs : lossTimeoutMs - (performance.now() - started);
        await new Promise<void>((r) => {
          // Not unref'd: held I/O must keep a process alive until it completes or fails.
          setTimeout(r, Math.max(0, Math.min(delayMs, left)));
        });
        continue;
      }
      if (path.state() !== 'connected') return; // lost or closed meanwhile
      path.reconnected(attempt);
      return;
    }
  } finally {
    for (const t of timers) clearTimeout(t);
  }
}
