import { Status, formatStatus } from '../protocol/constants.js';
import type { DecodedCompletion } from '../protocol/completion.js';
import {
  SECRET_KEY_SIZES,
  VOF_OP_AUTH_NEGOTIATE,
  VOF_OP_AUTH_REPLY,
  authNonce,
  initiatorResponse,
  parseSecret,
  responsesMatch,
  targetResponse,
  type AuthOpcode,
} from '../protocol/auth.js';
import { quotePeerString } from '../util/escape.js';
import { VofAuthError } from './vof-error.js';

/** An initiator's secret: "DHHC-1:00:…:" text (a secret file's content) or the key's bytes. */
export type AuthSecret = string | Buffer;

/** The key of a secret given to the library or CLI; throws VofAuthError (never quoting it). */
export function authKeyOf(secret: AuthSecret): Buffer {
  if (Buffer.isBuffer(secret)) {
    if (!SECRET_KEY_SIZES.includes(secret.length)) throw new VofAuthError(`authSecret: a key is 32, 48 or 64 bytes, not ${secret.length}`);
    return Buffer.from(secret);
  }
  try {
    return parseSecret(secret, 'authSecret');
  } catch (err) {
    throw new VofAuthError((err as Error).message);
  }
}

/** Sends one auth command on the control queue and gives its completion, whatever the status. */
export type AuthCall = (opcode: AuthOpcode, data: Buffer) => Promise<DecodedCompletion>;

export interface AuthHandshake {
  readonly key: Buffer;
  readonly ivqn: string;
  readonly tvqn: string;
  readonly instanceId: number;
  /** For messages: where the target is. */
  readonly url: string;
}

/**
 * vof in-band authentication, initiator side (docs/PROTOCOL.md "In-band authentication"):
 * AUTH_NEGOTIATE with a fresh nonce_i, AUTH_REPLY with our response, then the target's response
 * must verify: a target that does not prove the secret is refused even though it accepted
 * ours (bidirectional, against an impostor target). Throws VofAuthError.
 */
export async function authenticate(call: AuthCall, h: AuthHandshake): Promise<void> {
  const who = `${h.url}: ${quotePeerString(h.ivqn)}`;
  const nonceI = authNonce();
  const n = await call(VOF_OP_AUTH_NEGOTIATE, nonceI);
  if (n.status !== Status.SUCCESS || n.kind !== 'auth') {
    throw new VofAuthError(`${who}: target did not prove the secret: it refused to authenticate (${formatStatus(n.status)} to AUTH_NEGOTIATE; it holds no secret for this IVQN?)`, n.status);
  }
  const t = { ivqn: h.ivqn, tvqn: h.tvqn, instanceId: h.instanceId, nonceI, nonceT: n.data };
  const r = await call(VOF_OP_AUTH_REPLY, initiatorResponse(h.key, t));
  if (r.status !== Status.SUCCESS || r.kind !== 'auth') {
    throw new VofAuthError(`${who}: authentication failed: the target refused our response (${formatStatus(r.status)}): wrong secret?`, r.status);
  }
  if (!responsesMatch(r.data, targetResponse(h.key, t))) {
    throw new VofAuthError(`${who}: target did not prove the secret: its response does not verify (an impostor, or a different secret)`);
  }
}
