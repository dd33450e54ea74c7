import { formatStatus, opcodeName, statusName } from '../protocol/constants.js';

/** A command the target answered with a non-SUCCESS status. */
export class VofError extends Error {
  override name = 'VofError';
  readonly statusName: string;
  constructor(
    readonly status: number,
    readonly opcode: number,
    detail?: string,
  ) {
    super(`${formatStatus(status)} on ${opcodeName(opcode)}${detail ? `: ${detail}` : ''}`);
    this.statusName = statusName(status);
  }
}

/** The connection to the target broke (closed, timed out, keepalive lost). */
export class VofConnectionError extends Error {
  override name = 'VofConnectionError';
}

/**
 * Reconnecting found a device the initiator cannot resume: it now offers fewer features than
 * were negotiated, is another device type, or its capacity shrank. The device is lost.
 */
export class VofResumeError extends VofConnectionError {
  override name = 'VofResumeError';
}

/**
 * Following redirects failed: a loop, too many hops, a record that cannot be followed, or a
 * transport the user did not allow (reason 'transport': a tls:// connection sent to tcp://, say).
 */
export class VofRedirectError extends VofConnectionError {
  override name = 'VofRedirectError';
  constructor(
    readonly reason: 'loop' | 'hop-limit' | 'bad-record' | 'transport',
    /** Every URL tried, in order, ending with the one that was not followed. */
    readonly hops: readonly string[],
    message: string,
  ) {
    super(message);
  }
}

/**
 * vof in-band authentication failed (docs/PROTOCOL.md "In-band authentication"): the target
 * refused our proof ("authentication failed"), or did not prove the secret itself ("target did
 * not prove the secret"), or a secret could not be read. A resume error: the target's answer
 * will not change by asking again, so a reconnect gives up at once.
 */
export class VofAuthError extends VofResumeError {
  override name = 'VofAuthError';
  constructor(
    message: string,
    /** The target's status when it refused a step; undefined when the target's proof failed. */
    readonly status?: number,
  ) {
    super(message);
  }
}
