import { createHmac, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { COMPLETION_SIZE } from './constants.js';
import { bytes, fieldTable, setLE16 } from './fields.js';
import { COMMAND_HEADER, COMPLETION_HEADER } from './header.js';

/**
 * vof's in-band authentication extension (docs/PROTOCOL.md "In-band authentication"), modelled
 * on NVMe's DH-HMAC-CHAP (TP 8006): initiator and target prove to each other that they hold the
 * secret configured for the IVQN, on the control queue, after Connect and before any virtqueue
 * may join the instance. Two round trips of the seed's 16-byte commands and completions, so it
 * works unchanged on every transport (no framing of its own):
 *
 *     AUTH_NEGOTIATE  command: nonce_i     completion: nonce_t
 *     AUTH_REPLY      command: response_i  completion: response_t (only after response_i verified)
 *
 * Both responses are HMAC-SHA256 under a key derived with HKDF-SHA256 from the secret, salted
 * with both nonces and bound to the IVQN, TVQN and instance id, each with its own label (a
 * response of one side is never valid for the other). A fresh target nonce per attempt makes a
 * recorded transcript worthless. Pure codec and crypto (Node's): no queue or transport here.
 */

/** Virtio-oF feature bit (Get/Set Feature, window 0): the auth commands below exist. */
export const VOF_F_AUTH = 58n;

/**
 * Control-queue opcodes at the top of the seed's transport-generic group (0x00xx, where
 * Connect … Set Feature are), as Get Inline Data Size sits at the top of the keyed group.
 */
export const VOF_OP_AUTH_NEGOTIATE = 0x00f0;
export const VOF_OP_AUTH_REPLY = 0x00f1;

/** Bytes of every auth value on the wire: the 12 bytes after opcode/status and command id. */
export const AUTH_FIELD_SIZE = 12;
/** Offset of the auth field in the command and in the completion. */
export const AUTH_FIELD_OFFSET = 4;

export type AuthOpcode = typeof VOF_OP_AUTH_NEGOTIATE | typeof VOF_OP_AUTH_REPLY;

/** struct vof_command_auth (both commands): le16 opcode; le16 command_id; u8 data[12] (nonce or response). */
export const AUTH_COMMAND = fieldTable({ ...COMMAND_HEADER, data: bytes(AUTH_FIELD_OFFSET, AUTH_FIELD_SIZE) });
/** struct vof_completion_auth (both completions): le16 status; le16 command_id; u8 data[12]. */
export const AUTH_COMPLETION = fieldTable({ ...COMPLETION_HEADER, data: bytes(AUTH_FIELD_OFFSET, AUTH_FIELD_SIZE) });

/** The same layout as a list (what docs/PROTOCOL.md shows): opcode or status, command_id, data. */
export const AUTH_RECORD_FIELDS = [
  { name: 'opcode | status', offset: AUTH_COMMAND.opcode.offset, size: AUTH_COMMAND.opcode.width },
  { name: 'command_id', offset: AUTH_COMMAND.commandId.offset, size: AUTH_COMMAND.commandId.width },
  { name: 'data', offset: AUTH_COMMAND.data.offset, size: AUTH_COMMAND.data.width },
] as const;

/** The 16-byte completion of an auth command: status, command id and the 12-byte field. */
export function encodeAuthCompletion(status: number, commandId: number, data?: Buffer): Buffer {
  const b = Buffer.alloc(COMPLETION_SIZE);
  setLE16(b, AUTH_COMPLETION.status, status);
  setLE16(b, AUTH_COMPLETION.commandId, commandId);
  if (data) authField(data).copy(b, AUTH_COMPLETION.data.offset);
  return b;
}

/** A 12-byte auth value, checked (a shorter or longer one is a bug, not a peer's doing). */
export function authField(data: Buffer): Buffer {
  if (data.length !== AUTH_FIELD_SIZE) throw new RangeError(`auth field is ${data.length} bytes, expected ${AUTH_FIELD_SIZE}`);
  return data;
}

export function authNonce(): Buffer {
  return randomBytes(AUTH_FIELD_SIZE);
}

/** What binds a key to one exchange: both nonces, both VQNs and the instance. */
export interface AuthTranscript {
  readonly ivqn: string;
  readonly tvqn: string;
  readonly instanceId: number;
  readonly nonceI: Buffer;
  readonly nonceT: Buffer;
}

const HKDF_LABEL = 'vof-auth-v1';
const INITIATOR_LABEL = 'initiator';
const TARGET_LABEL = 'target';

/** HKDF info: "vof-auth-v1" NUL ivqn NUL tvqn NUL le16 instance_id. */
export function authInfo(t: AuthTranscript): Buffer {
  const id = Buffer.alloc(2);
  id.writeUInt16LE(t.instanceId, 0);
  const nul = Buffer.alloc(1);
  return Buffer.concat([Buffer.from(HKDF_LABEL), nul, Buffer.from(t.ivqn, 'utf8'), nul, Buffer.from(t.tvqn, 'utf8'), nul, id]);
}

/** The exchange's key: HKDF-SHA256(secret, salt = nonce_i || nonce_t, info, 32 bytes). */
export function authSessionKey(secret: Buffer, t: AuthTranscript): Buffer {
  return Buffer.from(hkdfSync('sha256', secret, Buffer.concat([authField(t.nonceI), authField(t.nonceT)]), authInfo(t), 32));
}

function response(secret: Buffer, t: AuthTranscript, label: string): Buffer {
  return createHmac('sha256', authSessionKey(secret, t)).update(label).digest().subarray(0, AUTH_FIELD_SIZE);
}

/** What the initiator sends in AUTH_REPLY: HMAC-SHA256(key, "initiator"), first 12 bytes. */
export function initiatorResponse(secret: Buffer, t: AuthTranscript): Buffer {
  return response(secret, t, INITIATOR_LABEL);
}

/** What the target answers to a verified AUTH_REPLY: HMAC-SHA256(key, "target"), first 12 bytes. */
export function targetResponse(secret: Buffer, t: AuthTranscript): Buffer {
  return response(secret, t, TARGET_LABEL);
}

/** Constant-time comparison of a received response with the expected one. */
export function responsesMatch(received: Buffer, expected: Buffer): boolean {
  return received.length === expected.length && timingSafeEqual(received, expected);
}

/**
 * Secrets: the representation of nvme-cli's gen-dhchap-key, "DHHC-1:00:<base64>:", where the
 * base64 holds the key (32, 48 or 64 bytes) followed by its CRC-32, little-endian. vof uses the
 * key as it is (the "00": no transformation), as HKDF input keying material.
 */
export const SECRET_PREFIX = 'DHHC-1';
export const SECRET_KEY_SIZES: readonly number[] = [32, 48, 64];

export class AuthSecretError extends Error {
  override name = 'AuthSecretError';
}

export function formatSecret(key: Buffer): string {
  if (!SECRET_KEY_SIZES.includes(key.length)) throw new AuthSecretError(`a secret key is 32, 48 or 64 bytes, not ${key.length}`);
  const crc = Buffer.alloc(4);
  crc.writeUInt32LE(crc32(key) >>> 0, 0);
  return `${SECRET_PREFIX}:00:${Buffer.concat([key, crc]).toString('base64')}:`;
}

export function generateSecret(bytes = 32): string {
  return formatSecret(randomBytes(bytes));
}

/**
 * The key of a "DHHC-1:00:…:" secret (surrounding white space, e.g. a file's newline, is
 * ignored). The error never repeats the secret: it may end up in a log.
 */
export function parseSecret(text: string, where = 'secret'): Buffer {
  const m = /^DHHC-1:(\d\d):([A-Za-z0-9+/]+={0,2}):$/.exec(text.trim());
  if (!m) throw new AuthSecretError(`${where} is not a secret of the form DHHC-1:00:<base64>: (vof gen-secret makes one)`);
  if (m[1] !== '00') throw new AuthSecretError(`${where}: transformed secrets (DHHC-1:${m[1]}) are not supported; use DHHC-1:00 (vof gen-secret)`);
  const raw = Buffer.from(m[2]!, 'base64');
  const key = raw.subarray(0, raw.length - 4);
  if (!SECRET_KEY_SIZES.includes(key.length)) throw new AuthSecretError(`${where}: the key is ${Math.max(0, key.length)} bytes; 32, 48 or 64 are valid`);
  if ((crc32(key) >>> 0) !== raw.readUInt32LE(key.length)) throw new AuthSecretError(`${where}: the CRC-32 does not match the key (a typo?)`);
  return Buffer.from(key);
}
