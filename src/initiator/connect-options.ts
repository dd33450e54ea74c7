import type { AuthSecret } from './auth-handshake.js';
import type { Scheme } from '../transport/url.js';
import type { TlsClientSettings } from '../transport/tcp/tls-settings.js';
import type { KeyedMemoryOptions } from '../transport/transport.js';
import type { Logger } from '../util/log.js';
import type { ConfigReader } from './device-config.js';
import { timeoutBelowInterval } from '../util/liveness.js';
import type { ReconnectOptions } from '../util/reconnect-policy.js';
import type { RemoteDevice } from './remote-device.js';

/** The keepalive defaults of ConnectOptions. */
export const DEFAULT_KEEPALIVE_INTERVAL_MS = 5000;
export const DEFAULT_KEEPALIVE_TIMEOUT_MS = 15000;

/** Said once per connect(), before the first Connect (a target may never answer it). */
export function checkKeepaliveSettings(url: string, intervalMs: number, timeoutMs: number, log: Logger): void {
  const short = timeoutBelowInterval(intervalMs, timeoutMs, 'an idle but healthy target may be declared lost');
  if (intervalMs <= 0) {
    log.warn(`${url}: keepalive disabled: a target destroys this instance once it hears nothing on any queue for its keepalive timeout (vof: 15 s by default), and a vanished target goes unnoticed until a request fails`);
  } else if (short !== null) {
    log.warn(`${url}: ${short}`);
  }
}

/** How RemoteDevice.connect() connects, and what it does when the path fails (see RemoteDevice). */
export interface ConnectOptions extends ReconnectOptions {
  /** This initiator's VQN (default "vof-initiator"). */
  readonly ivqn?: string;
  /** Which of the offered device features to accept (default: all of them). */
  readonly negotiateFeatures?: (offered: bigint) => bigint;
  /**
   * How many virtqueues to connect, decided after feature negotiation (e.g. from the device's
   * config space). Default 1.
   */
  readonly queueCount?: (device: RemoteDevice) => Promise<number> | number;
  /** Requested virtqueue size; 0 (default) asks for the largest the target supports. */
  readonly queueSize?: number;
  /**
   * Keepalive: send a Keepalive Command every intervalMs (default 5000) and declare the device
   * lost when the target has sent nothing for timeoutMs (default 15000; checked on its own
   * timer, from the first command on). intervalMs 0 turns both off: the target then destroys
   * this instance once it has heard nothing on any queue for its own keepalive timeout.
   */
  readonly keepaliveIntervalMs?: number;
  readonly keepaliveTimeoutMs?: number;
  readonly connectTimeoutMs?: number;
  /** Largest device-writable payload expected in a completion. */
  readonly maxVqPayload?: number;
  readonly log?: Logger;
  /** tls:// URLs: trust, client certificate or PSK (see TlsClientSettings). */
  readonly tls?: TlsClientSettings;
  /**
   * Called on every reconnect once the features are agreed again, before the virtqueues:
   * throw VofResumeError to refuse the device (e.g. its capacity shrank).
   */
  readonly verifyResume?: (readConfig: ConfigReader) => Promise<void>;
  /** Most redirects followed on one connect or reconnect (default 8); then VofRedirectError. */
  readonly maxRedirects?: number;
  /**
   * Transports a redirect or drain may move this device to besides the URL's own (and tcp:// to
   * tls://): e.g. ['rdma'] to follow a tcp:// target's redirect to rdma://. A tls:// device is
   * never moved to tcp:// or rdma:// unless named here. Otherwise VofRedirectError ('transport').
   */
  readonly allowRedirectTo?: readonly Scheme[];
  /** rdma:// only: bounce memory size and the opt-in registration cache (see KeyedMemoryOptions). */
  readonly keyedMemory?: KeyedMemoryOptions;
  /**
   * RDMA: negotiate vof's inline data (VOF_F_INLINE_DATA) when the target offers it, so small
   * device-readable parts ride in the command's SEND instead of an RDMA READ (default true).
   */
  readonly inlineData?: boolean;
  /**
   * RDMA: negotiate vof's remote invalidation (VOF_F_REMOTE_INVALIDATE) when the target offers
   * it, so a completion ends the command's key on arrival instead of a LOCAL_INV work request
   * after it (default true).
   */
  readonly remoteInvalidation?: boolean;
  /**
   * The secret the target holds for this IVQN ("DHHC-1:00:…:", e.g. a `vof gen-secret` file's
   * content, or the key's bytes): authenticate in-band (VOF_F_AUTH) after Connect, and require
   * the target to prove the same secret (docs/PROTOCOL.md "In-band authentication"). Failures
   * are VofAuthError. Absent: no authentication (a target requiring it refuses the device).
   */
  readonly authSecret?: AuthSecret;
}

/** What connectControlPath needs from the connect options. */
export function pathOpts(o: ConnectOptions) {
  const keepalive = (o.keepaliveIntervalMs ?? DEFAULT_KEEPALIVE_INTERVAL_MS) > 0 && (o.keepaliveTimeoutMs ?? DEFAULT_KEEPALIVE_TIMEOUT_MS) > 0;
  return {
    connect: connectOpts(o),
    answerTimeoutMs: keepalive ? (o.keepaliveTimeoutMs ?? DEFAULT_KEEPALIVE_TIMEOUT_MS) : (o.connectTimeoutMs ?? 10000),
    keepalive,
    ...(o.maxRedirects !== undefined && { maxRedirects: o.maxRedirects }),
    ...(o.allowRedirectTo !== undefined && { allowRedirectTo: o.allowRedirectTo }),
  };
}

export function connectOpts(o: ConnectOptions) {
  return { timeoutMs: o.connectTimeoutMs ?? 10000, maxVqPayload: o.maxVqPayload ?? 64 * 1024 * 1024, ...(o.tls && { tls: o.tls }) };
}
