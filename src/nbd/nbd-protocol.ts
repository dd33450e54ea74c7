/**
 * NBD wire constants and codec (NetworkBlockDevice/nbd doc/proto.md): fixed newstyle handshake,
 * option haggling and the simple-reply transmission phase. Pure: no I/O. Every field is in
 * network byte order (big-endian).
 */

/** "NBDMAGIC", sent first by the server. */
export const NBD_MAGIC = 0x4e42444d41474943n;
/** "IHAVEOPT": second server magic, and the prefix of every client option. */
export const NBD_IHAVEOPT = 0x49484156454f5054n;
/** Prefix of every option reply. */
export const NBD_OPT_REPLY_MAGIC = 0x3e889045565a9n;
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
/** IANA port for NBD (the URI default). */
export const NBD_DEFAULT_PORT = 10809;

/** Handshake flags (server, 16 bits). */
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
/** Client flags (32 bits). */
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

/** Transmission flags (16 bits). */
export const TransmissionFlag = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
} as const;

export const NbdOption = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

const ERR = 0x80000000;
export const NbdReply = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: ERR + 1,
  ERR_POLICY: ERR + 2,
  ERR_INVALID: ERR + 3,
  ERR_PLATFORM: ERR + 4,
  ERR_TLS_REQD: ERR + 5,
  ERR_UNKNOWN: ERR + 6,
  ERR_SHUTDOWN: ERR + 7,
  ERR_BLOCK_SIZE_REQD: ERR + 8,
  ERR_TOO_BIG: ERR + 9,
} as const;

export const NbdInfo = {
  EXPORT: 0,
  NAME: 1,
  DESCRIPTION: 2,
  BLOCK_SIZE: 3,
} as const;

export const NbdCommand = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
  RESIZE: 8,
} as const;

export const NbdCommandFlag = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4,
  PAYLOAD_LEN: 1 << 5,
} as const;

/** Error values of the reply's error field. */
export const NbdError = {
  OK: 0,
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

export const NBD_ERROR_NAMES: Record<number, string> = Object.fromEntries(Object.entries(NbdError).map(([k, v]) => [v, k]));

/** The string limit of the protocol: export names and messages are at most 4096 bytes. */
export const NBD_MAX_STRING = 4096;
/** Sizes of the fixed-size messages. */
export const CLIENT_FLAGS_SIZE = 4;
export const OPTION_HEADER_SIZE = 16;
export const REQUEST_HEADER_SIZE = 28;
export const SIMPLE_REPLY_SIZE = 16;
export const EXPORT_NAME_ZEROES = 124;

/** S: NBDMAGIC, IHAVEOPT, 16-bit handshake flags. */
export function encodeServerGreeting(handshakeFlags: number): Buffer {
  const b = Buffer.alloc(18);
  b.writeBigUInt64BE(NBD_MAGIC, 0);
  b.writeBigUInt64BE(NBD_IHAVEOPT, 8);
  b.writeUInt16BE(handshakeFlags, 16);
  return b;
}

export interface OptionHeader {
  readonly magic: bigint;
  readonly option: number;
  readonly length: number;
}

/** C: 64-bit IHAVEOPT, 32-bit option, 32-bit data length. */
export function decodeOptionHeader(b: Buffer): OptionHeader {
  return { magic: b.readBigUInt64BE(0), option: b.readUInt32BE(8), length: b.readUInt32BE(12) };
}

export function encodeOptionHeader(option: number, length: number): Buffer {
  const b = Buffer.alloc(OPTION_HEADER_SIZE);
  b.writeBigUInt64BE(NBD_IHAVEOPT, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(length >>> 0, 12);
  return b;
}

/** S: reply magic, option, reply type, length, data. */
export function encodeOptionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(20 + data.length);
  b.writeBigUInt64BE(NBD_OPT_REPLY_MAGIC, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(data.length, 16);
  data.copy(b, 20);
  return b;
}

/** NBD_REP_SERVER data: 32-bit name length, name, then a human-readable description. */
export function encodeServerReplyData(name: string, description = ''): Buffer {
  const n = Buffer.from(name, 'utf8');
  const d = Buffer.from(description, 'utf8');
  const b = Buffer.alloc(4 + n.length + d.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  d.copy(b, 4 + n.length);
  return b;
}

/** NBD_REP_INFO / NBD_INFO_EXPORT: type, 64-bit size, 16-bit transmission flags. */
export function encodeInfoExport(size: bigint, transmissionFlags: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(NbdInfo.EXPORT, 0);
  b.writeBigUInt64BE(size, 2);
  b.writeUInt16BE(transmissionFlags, 10);
  return b;
}

/** NBD_INFO_NAME or NBD_INFO_DESCRIPTION: type, string. */
export function encodeInfoString(type: number, text: string): Buffer {
  const s = Buffer.from(text, 'utf8');
  const b = Buffer.alloc(2 + s.length);
  b.writeUInt16BE(type, 0);
  s.copy(b, 2);
  return b;
}

export interface BlockSizeConstraints {
  readonly minimum: number;
  readonly preferred: number;
  readonly maximum: number;
}

/** NBD_INFO_BLOCK_SIZE: type, minimum, preferred, maximum (32 bits each). */
export function encodeInfoBlockSize(c: BlockSizeConstraints): Buffer {
  const b = Buffer.alloc(14);
  b.writeUInt16BE(NbdInfo.BLOCK_SIZE, 0);
  b.writeUInt32BE(c.minimum, 2);
  b.writeUInt32BE(c.preferred, 6);
  b.writeUInt32BE(c.maximum, 10);
  return b;
}

/** Reply to NBD_OPT_EXPORT_NAME: 64-bit size, 16-bit flags, 124 zero bytes unless NO_ZEROES. */
export function encodeExportNameReply(size: bigint, transmissionFlags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(10 + (noZeroes ? 0 : EXPORT_NAME_ZEROES));
  b.writeBigUInt64BE(size, 0);
  b.writeUInt16BE(transmissionFlags, 8);
  return b;
}

export interface InfoRequest {
  readonly name: string;
  readonly infos: readonly number[];
}

/**
 * Data of NBD_OPT_INFO / NBD_OPT_GO: 32-bit name length, name, 16-bit count, count x 16-bit
 * info types. Returns null when the lengths do not add up to exactly the option's data.
 */
export function decodeInfoRequest(data: Buffer): InfoRequest | null {
  if (data.length < 6) return null;
  const nameLength = data.readUInt32BE(0);
  if (nameLength > data.length - 6 || nameLength > NBD_MAX_STRING) return null;
  const count = data.readUInt16BE(4 + nameLength);
  if (data.length !== 6 + nameLength + 2 * count) return null;
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(data.readUInt16BE(6 + nameLength + 2 * i));
  return { name: data.toString('utf8', 4, 4 + nameLength), infos };
}

export function encodeInfoRequest(name: string, infos: readonly number[]): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(6 + n.length + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((t, i) => b.writeUInt16BE(t, 6 + n.length + 2 * i));
  return b;
}

export interface RequestHeader {
  readonly magic: number;
  readonly flags: number;
  readonly type: number;
  /** Opaque to the server: echoed in the reply (the spec's "handle"/"cookie"). */
  readonly cookie: Buffer;
  readonly offset: bigint;
  readonly length: number;
}

/** C: 32-bit magic, 16-bit command flags, 16-bit type, 64-bit cookie, 64-bit offset, 32-bit length. */
export function decodeRequestHeader(b: Buffer): RequestHeader {
  return {
    magic: b.readUInt32BE(0),
    flags: b.readUInt16BE(4),
    type: b.readUInt16BE(6),
    cookie: Buffer.from(b.subarray(8, 16)),
    offset: b.readBigUInt64BE(16),
    length: b.readUInt32BE(24),
  };
}

export function encodeRequestHeader(h: Omit<RequestHeader, 'magic'> & { magic?: number }): Buffer {
  const b = Buffer.alloc(REQUEST_HEADER_SIZE);
  b.writeUInt32BE(h.magic ?? NBD_REQUEST_MAGIC, 0);
  b.writeUInt16BE(h.flags, 4);
  b.writeUInt16BE(h.type, 6);
  h.cookie.copy(b, 8, 0, 8);
  b.writeBigUInt64BE(h.offset, 16);
  b.writeUInt32BE(h.length >>> 0, 24);
  return b;
}

/** S: 32-bit magic, 32-bit error, 64-bit cookie (read data follows on success). */
export function encodeSimpleReply(error: number, cookie: Buffer): Buffer {
  const b = Buffer.alloc(SIMPLE_REPLY_SIZE);
  b.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  cookie.copy(b, 8, 0, 8);
  return b;
}

export interface SimpleReply {
  readonly magic: number;
  readonly error: number;
  readonly cookie: Buffer;
}

export function decodeSimpleReply(b: Buffer): SimpleReply {
  return { magic: b.readUInt32BE(0), error: b.readUInt32BE(4), cookie: Buffer.from(b.subarray(8, 16)) };
}
