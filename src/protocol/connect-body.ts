import { CONNECT_BODY_SIZE, VQN_FIELD_SIZE, VQN_MAX_BYTES } from './constants.js';
import { bytes, fieldTable, u32, view } from './fields.js';

/**
 * struct virtio_of_connect: ivqn[256], tvqn[256], reserved[512] (seed 003, "Connect Body"), with
 * vof's `le32 vof_connect_flags` in the first reserved bytes (docs/PROTOCOL.md "Redirect"; zero
 * from a seed-only initiator).
 */
export const CONNECT_BODY = fieldTable({
  ivqn: bytes(0, VQN_FIELD_SIZE),
  tvqn: bytes(VQN_FIELD_SIZE, VQN_FIELD_SIZE),
  connectFlags: u32(2 * VQN_FIELD_SIZE),
  reserved: bytes(2 * VQN_FIELD_SIZE + 4, CONNECT_BODY_SIZE - 2 * VQN_FIELD_SIZE - 4),
});

export interface ConnectBody {
  readonly ivqn: string;
  readonly tvqn: string;
}

export class VqnError extends Error {
  override name = 'VqnError';
}

/** Throws VqnError when a VQN cannot be carried: over 255 UTF-8 bytes or containing NUL. */
export function checkVqn(vqn: string, what: string): Buffer {
  const bytes = Buffer.from(vqn, 'utf8');
  if (bytes.length > VQN_MAX_BYTES) throw new VqnError(`${what} is ${bytes.length} bytes, at most ${VQN_MAX_BYTES}`);
  if (bytes.includes(0)) throw new VqnError(`${what} contains a NUL byte`);
  return bytes;
}

export function encodeConnectBody(body: ConnectBody): Buffer {
  const out = Buffer.alloc(CONNECT_BODY_SIZE);
  checkVqn(body.ivqn, 'IVQN').copy(out, CONNECT_BODY.ivqn.offset);
  const tvqn = checkVqn(body.tvqn, 'TVQN');
  if (tvqn.length === 0) throw new VqnError('TVQN is empty');
  tvqn.copy(out, CONNECT_BODY.tvqn.offset);
  return out;
}

function readVqn(field: Buffer): string | null {
  const nul = field.indexOf(0);
  // A field without NUL is 256 bytes long: over the limit of DECISIONS.md item 6.
  if (nul < 0) return null;
  const text = field.subarray(0, nul);
  // Reject bytes that are not UTF-8 rather than match a mangled name.
  const decoded = text.toString('utf8');
  if (!Buffer.from(decoded, 'utf8').equals(text)) return null;
  return decoded;
}

/** Decode a Connect Body; null when a VQN field is malformed. Reserved bytes are ignored. */
export function decodeConnectBody(buf: Buffer): ConnectBody | null {
  if (buf.length < CONNECT_BODY_SIZE) return null;
  const ivqn = readVqn(view(buf, CONNECT_BODY.ivqn));
  const tvqn = readVqn(view(buf, CONNECT_BODY.tvqn));
  if (ivqn === null || tvqn === null) return null;
  return { ivqn, tvqn };
}
