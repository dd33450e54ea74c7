import { authNonce, initiatorResponse, responsesMatch, targetResponse, type AuthTranscript } from '../protocol/auth.js';

/**
 * The target's side of vof in-band authentication for one instance (docs/PROTOCOL.md
 * "In-band authentication"): exactly one exchange, NEGOTIATE then REPLY, per instance. Any
 * step out of order or a response that does not verify ends it for good ('failed'); the queue
 * queue then refuses and closes the control queue. The secret never leaves this object.
 */
export type AuthStep =
  | { readonly ok: true; readonly data: Buffer }
  | { readonly ok: false; readonly why: string };

export class TargetAuth {
  private state: 'idle' | 'challenged' | 'authenticated' | 'failed' = 'idle';
  private transcript: AuthTranscript | null = null;
  /** Destroys the instance if the exchange has not succeeded in time; cleared once it ends. */
  private deadline: NodeJS.Timeout | null = null;

  constructor(
    private readonly secret: Buffer,
    private readonly ivqn: string,
    private readonly tvqn: string,
    private readonly instanceId: number,
  ) {}

  /**
   * Call `expire` unless authentication succeeds within `ms`: an instance that never
   * authenticates holds its quota slot only as long as a connection may go without Connect.
   */
  expireAfter(ms: number, expire: () => void): void {
    this.stop();
    this.deadline = setTimeout(() => {
      this.deadline = null;
      if (this.state !== 'authenticated') expire();
    }, ms);
    this.deadline.unref();
  }

  /** The instance is gone (or authenticated): nothing is left waiting on this exchange. */
  stop(): void {
    if (this.deadline) clearTimeout(this.deadline);
    this.deadline = null;
  }

  get authenticated(): boolean {
    return this.state === 'authenticated';
  }

  /** AUTH_NEGOTIATE: remember nonce_i, answer a fresh nonce_t. */
  negotiate(nonceI: Buffer): AuthStep {
    if (this.state !== 'idle') return this.fail(`AUTH_NEGOTIATE when the exchange is ${this.state === 'challenged' ? 'already under way' : this.state}`);
    const nonceT = authNonce();
    this.transcript = { ivqn: this.ivqn, tvqn: this.tvqn, instanceId: this.instanceId, nonceI, nonceT };
    this.state = 'challenged';
    return { ok: true, data: nonceT };
  }

  /** AUTH_REPLY: verify response_i; only then answer response_t (the target proves it second). */
  reply(responseI: Buffer): AuthStep {
    const t = this.transcript;
    if (this.state !== 'challenged' || !t) return this.fail(`AUTH_REPLY ${this.state === 'idle' ? 'before AUTH_NEGOTIATE' : `when the exchange is ${this.state}`}`);
    if (!responsesMatch(responseI, initiatorResponse(this.secret, t))) return this.fail('the response does not prove the secret');
    this.state = 'authenticated';
    this.stop();
    return { ok: true, data: targetResponse(this.secret, t) };
  }

  private fail(why: string): AuthStep {
    this.state = 'failed';
    this.transcript = null;
    return { ok: false, why };
  }
}
