import { COMPLETION_SIZE, CONNECT_BODY_SIZE, CONTROL_QUEUE_INSTANCE_ID, VQN_FIELD_SIZE } from './constants.js';
import { CONNECT_BODY, checkVqn } from './connect-body.js';
import { bytes, fieldTable, getLE16, getLE32, getU8, setLE16, setLE32, setU8, u16, u8, view } from './fields.js';
import { COMPLETION_HEADER } from './header.js';
import { quotePeerString } from '../util/escape.js';

/**
 * vof's redirect extension (docs/PROTOCOL.md "Redirect"). An initiator announces that it
 * understands redirects with bit 0 of a le32 in the Connect Body's reserved bytes; only then
 * does a target answer a control-queue Connect for a moved TVQN with EREDIRECT followed by a
 * redirect record. Seed-only initiators send zero there and never see either.
 */

/** Offset in the Connect Body of `le32 vof_connect_flags` (first reserved bytes). */
export const VOF_CONNECT_FLAGS_OFFSET = CONNECT_BODY.connectFlags.offset;
/** The initiator follows EREDIRECT and understands the drain event. */
export const VOF_CONNECT_F_REDIRECT = 1 << 0;

/** Connect status: the TVQN is served elsewhere; a redirect record follows the completion. */
export const VOF_STATUS_EREDIRECT = 0x10f0;

/** Control-queue event: the target asks the initiator to move (reconnect, then be redirected). */
export const COMMAND_ID_DRAIN = 0xfffd;

export const ADDRESS_FIELD_SIZE = 256;
/** struct vof_redirect_record: u8 transport; u8 reserved; le16 port; u8 reserved[4]; u8 address[256]; u8 tvqn[256]. */
export const REDIRECT_RECORD = fieldTable({
  transport: u8(0),
  reserved: u8(1),
  port: u16(2),
  reserved2: bytes(4, 4),
  address: bytes(8, ADDRESS_FIELD_SIZE),
  tvqn: bytes(8 + ADDRESS_FIELD_SIZE, VQN_FIELD_SIZE),
});
export const REDIRECT_RECORD_SIZE = 8 + ADDRESS_FIELD_SIZE + VQN_FIELD_SIZE;

/**
 * struct vof_completion_redirect: a Connect completion (status EREDIRECT, device_instance_id
 * 0xffff) with `le16 record_length` in its first reserved bytes, so the framing is
 * self-describing.
 */
export const REDIRECT_COMPLETION = fieldTable({ ...COMPLETION_HEADER, deviceInstanceId: u16(4), recordLength: u16(6), reserved: bytes(8, 8) });

export const RedirectTransport = { tcp: 1, rdma: 2, tls: 3 } as const;
export type RedirectScheme = keyof typeof RedirectTransport;

export interface RedirectRecord {
  readonly scheme: RedirectScheme;
  /** Host name or IP literal (IPv6 without brackets). */
  readonly host: string;
  readonly port: number;
  readonly tvqn: string;
}

export class RedirectRecordError extends Error {
  override name = 'RedirectRecordError';
}

export function connectFlags(body: Buffer): number {
  return body.length >= CONNECT_BODY_SIZE ? getLE32(body, CONNECT_BODY.connectFlags) : 0;
}

export function setConnectFlags(body: Buffer, flags: number): Buffer {
  setLE32(body, CONNECT_BODY.connectFlags, flags >>> 0);
  return body;
}

export function encodeRedirectRecord(r: RedirectRecord): Buffer {
  const out = Buffer.alloc(REDIRECT_RECORD_SIZE);
  setU8(out, REDIRECT_RECORD.transport, RedirectTransport[r.scheme]);
  if (!Number.isInteger(r.port) || r.port < 1 || r.port > 65535) throw new RedirectRecordError(`redirect port ${r.port} out of range`);
  setLE16(out, REDIRECT_RECORD.port, r.port);
  const host = Buffer.from(r.host, 'utf8');
  if (host.length === 0 || host.length >= ADDRESS_FIELD_SIZE || host.includes(0)) throw new RedirectRecordError(`redirect address "${r.host}" must be 1-255 bytes without NUL`);
  host.copy(out, REDIRECT_RECORD.address.offset);
  const tvqn = checkVqn(r.tvqn, 'redirect TVQN');
  if (tvqn.length === 0) throw new RedirectRecordError('redirect TVQN is empty');
  tvqn.copy(out, REDIRECT_RECORD.tvqn.offset);
  return out;
}

function field(buf: Buffer, what: string): string {
  const nul = buf.indexOf(0);
  if (nul <= 0) throw new RedirectRecordError(`redirect record: ${what} is ${nul === 0 ? 'empty' : 'not NUL-terminated'}`);
  const text = buf.subarray(0, nul);
  const s = text.toString('utf8');
  if (!Buffer.from(s, 'utf8').equals(text)) throw new RedirectRecordError(`redirect record: ${what} is not UTF-8`);
  return s;
}

/** Decode a record from an untrusted target; throws RedirectRecordError. */
export function decodeRedirectRecord(buf: Buffer): RedirectRecord {
  if (buf.length !== REDIRECT_RECORD_SIZE) throw new RedirectRecordError(`redirect record of ${buf.length} bytes, expected ${REDIRECT_RECORD_SIZE}`);
  const t = getU8(buf, REDIRECT_RECORD.transport);
  const scheme = (Object.keys(RedirectTransport) as RedirectScheme[]).find((k) => RedirectTransport[k] === t);
  if (!scheme) throw new RedirectRecordError(`redirect record: unknown transport ${t}`);
  const port = getLE16(buf, REDIRECT_RECORD.port);
  if (port === 0) throw new RedirectRecordError('redirect record: port 0');
  const host = field(view(buf, REDIRECT_RECORD.address), 'address');
  // A host name, IPv4 or IPv6 literal (with a zone): nothing a log line or terminal could misread.
  if (!/^[0-9A-Za-z._:%-]+$/.test(host)) throw new RedirectRecordError(`redirect record: address ${quotePeerString(host)} is not a host`);
  return { scheme, host, port, tvqn: field(view(buf, REDIRECT_RECORD.tvqn), 'TVQN') };
}

/**
 * The Connect completion that announces a redirect: status EREDIRECT, device_instance_id
 * 0xffff, and `le16 record_length` in its first reserved bytes (offset 6) so that the framing
 * is self-describing.
 */
export function encodeRedirectCompletion(commandId: number): Buffer {
  const b = Buffer.alloc(COMPLETION_SIZE);
  setLE16(b, REDIRECT_COMPLETION.status, VOF_STATUS_EREDIRECT);
  setLE16(b, REDIRECT_COMPLETION.commandId, commandId);
  setLE16(b, REDIRECT_COMPLETION.deviceInstanceId, CONTROL_QUEUE_INSTANCE_ID);
  setLE16(b, REDIRECT_COMPLETION.recordLength, REDIRECT_RECORD_SIZE);
  return b;
}

/** The drain event: a control-queue completion with command id 0xfffd, status 0, all else zero. */
export function encodeDrainEvent(): Buffer {
  const b = Buffer.alloc(COMPLETION_SIZE);
  setLE16(b, COMPLETION_HEADER.commandId, COMMAND_ID_DRAIN);
  return b;
}

export function redirectUrl(r: RedirectRecord): string {
  const host = r.host.includes(':') ? `[${r.host}]` : r.host;
  return `${r.scheme}://${host}:${r.port}/${encodeURIComponent(r.tvqn)}`;
}
