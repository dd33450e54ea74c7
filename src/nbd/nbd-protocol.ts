/**
 * NBD wire constants and codec (NetworkBlockDevice/nbd doc/proto.md): fixed newstyle handshake,
 * option haggling and the simple-reply transmission phase. Pure: no I/O. Every field is in
 * network byte order (big-endian).
 */

import { bytes, fieldTable, getBE16, getBE32, getBE64, setBE16, setBE32, setBE64, u16, u32, u64, view } from '../protocol/fields.js';

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

/*
 * The field table of each fixed-size record (NBD doc/proto.md; its field names in camelCase,
 * "cookie" for the request's 64-bit handle). Encoders and decoders below, and the client's and
 * server's in-place reads of a request or reply, use these. Big-endian: the getBE and setBE helpers.
 */

/** S: the greeting, "NBDMAGIC", "IHAVEOPT", 16-bit handshake flags. */
export const SERVER_GREETING = fieldTable({ nbdMagic: u64(0), ihaveopt: u64(8), handshakeFlags: u16(16) });
export const SERVER_GREETING_SIZE = 18;
/** C: the client flags. */
export const CLIENT_FLAGS = fieldTable({ flags: u32(0) });
/** C: an option, "IHAVEOPT", option, length of the data that follows. */
export const OPTION_HEADER = fieldTable({ magic: u64(0), option: u32(8), length: u32(12) });
/** S: an option reply, magic, option, reply type, length of the data that follows. */
export const OPTION_REPLY = fieldTable({ magic: u64(0), option: u32(8), type: u32(12), length: u32(16) });
export const OPTION_REPLY_SIZE = 20;
/** NBD_REP_INFO data: the information type, common to every info record. */
export const INFO = fieldTable({ type: u16(0) });
/** NBD_INFO_EXPORT: type, export size, transmission flags. */
export const INFO_EXPORT = fieldTable({ type: u16(0), size: u64(2), transmissionFlags: u16(10) });
export const INFO_EXPORT_SIZE = 12;
/** NBD_INFO_BLOCK_SIZE: type, minimum, preferred, maximum block size. */
export const INFO_BLOCK_SIZE = fieldTable({ type: u16(0), minimum: u32(2), preferred: u32(6), maximum: u32(10) });
export const INFO_BLOCK_SIZE_SIZE = 14;
/** S: the reply to NBD_OPT_EXPORT_NAME; the zeroes only without NBD_FLAG_C_NO_ZEROES. */
export const EXPORT_NAME_REPLY = fieldTable({ size: u64(0), transmissionFlags: u16(8), zeroes: bytes(10, EXPORT_NAME_ZEROES) });
/** C: a request header. */
export const REQUEST_HEADER = fieldTable({ magic: u32(0), flags: u16(4), type: u16(6), cookie: bytes(8, 8), offset: u64(16), length: u32(24) });
/** S: a simple reply (read data follows on success). */
export const SIMPLE_REPLY = fieldTable({ magic: u32(0), error: u32(4), cookie: bytes(8, 8) });
/** S: a structured reply chunk's header (its payload follows). */
export const STRUCTURED_REPLY = fieldTable({ magic: u32(0), flags: u16(4), type: u16(6), cookie: bytes(8, 8), length: u32(16) });
export const STRUCTURED_REPLY_SIZE = 20;
/** Payload of NBD_REPLY_TYPE_OFFSET_DATA before its data, and of NBD_REPLY_TYPE_OFFSET_HOLE. */
export const OFFSET_DATA_CHUNK = fieldTable({ offset: u64(0) });
export const OFFSET_DATA_CHUNK_SIZE = 8;
export const OFFSET_HOLE_CHUNK = fieldTable({ offset: u64(0), holeSize: u32(8) });
/** Payload of an error chunk before its message (NBD_REPLY_TYPE_ERROR*). */
export const ERROR_CHUNK = fieldTable({ error: u32(0), messageLength: u16(4) });
export const ERROR_CHUNK_SIZE = 6;

/** S: NBDMAGIC, IHAVEOPT, 16-bit handshake flags. */
export function encodeServerGreeting(handshakeFlags: number): Buffer {
  const b = Buffer.alloc(SERVER_GREETING_SIZE);
  setBE64(b, SERVER_GREETING.nbdMagic, NBD_MAGIC);
  setBE64(b, SERVER_GREETING.ihaveopt, NBD_IHAVEOPT);
  setBE16(b, SERVER_GREETING.handshakeFlags, handshakeFlags);
  return b;
}

export interface OptionHeader {
  readonly magic: bigint;
  readonly option: number;
  readonly length: number;
}

/** C: 64-bit IHAVEOPT, 32-bit option, 32-bit data length. */
export function decodeOptionHeader(b: Buffer): OptionHeader {
  return { magic: getBE64(b, OPTION_HEADER.magic), option: getBE32(b, OPTION_HEADER.option), length: getBE32(b, OPTION_HEADER.length) };
}

export function encodeOptionHeader(option: number, length: number): Buffer {
  const b = Buffer.alloc(OPTION_HEADER_SIZE);
  setBE64(b, OPTION_HEADER.magic, NBD_IHAVEOPT);
  setBE32(b, OPTION_HEADER.option, option >>> 0);
  setBE32(b, OPTION_HEADER.length, length >>> 0);
  return b;
}

/** S: reply magic, option, reply type, length, data. */
export function encodeOptionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(OPTION_REPLY_SIZE + data.length);
  setBE64(b, OPTION_REPLY.magic, NBD_OPT_REPLY_MAGIC);
  setBE32(b, OPTION_REPLY.option, option >>> 0);
  setBE32(b, OPTION_REPLY.type, type >>> 0);
  setBE32(b, OPTION_REPLY.length, data.length);
  data.copy(b, OPTION_REPLY_SIZE);
  return b;
}

/** NBD_REP_SERVER data: 32-bit name length, name, then a human-readable description. */
export const SERVER_REPLY_DATA = fieldTable({ nameLength: u32(0) });
export function encodeServerReplyData(name: string, description = ''): Buffer {
  const n = Buffer.from(name, 'utf8');
  const d = Buffer.from(description, 'utf8');
  const at = SERVER_REPLY_DATA.nameLength.width;
  const b = Buffer.alloc(at + n.length + d.length);
  setBE32(b, SERVER_REPLY_DATA.nameLength, n.length);
  n.copy(b, at);
  d.copy(b, at + n.length);
  return b;
}

/** NBD_REP_INFO / NBD_INFO_EXPORT: type, 64-bit size, 16-bit transmission flags. */
export function encodeInfoExport(size: bigint, transmissionFlags: number): Buffer {
  const b = Buffer.alloc(INFO_EXPORT_SIZE);
  setBE16(b, INFO_EXPORT.type, NbdInfo.EXPORT);
  setBE64(b, INFO_EXPORT.size, size);
  setBE16(b, INFO_EXPORT.transmissionFlags, transmissionFlags);
  return b;
}

/** NBD_INFO_NAME or NBD_INFO_DESCRIPTION: type, string. */
export function encodeInfoString(type: number, text: string): Buffer {
  const s = Buffer.from(text, 'utf8');
  const b = Buffer.alloc(INFO.type.width + s.length);
  setBE16(b, INFO.type, type);
  s.copy(b, INFO.type.width);
  return b;
}

export interface BlockSizeConstraints {
  readonly minimum: number;
  readonly preferred: number;
  readonly maximum: number;
}

/** NBD_INFO_BLOCK_SIZE: type, minimum, preferred, maximum (32 bits each). */
export function encodeInfoBlockSize(c: BlockSizeConstraints): Buffer {
  const b = Buffer.alloc(INFO_BLOCK_SIZE_SIZE);
  setBE16(b, INFO_BLOCK_SIZE.type, NbdInfo.BLOCK_SIZE);
  setBE32(b, INFO_BLOCK_SIZE.minimum, c.minimum);
  setBE32(b, INFO_BLOCK_SIZE.preferred, c.preferred);
  setBE32(b, INFO_BLOCK_SIZE.maximum, c.maximum);
  return b;
}

/** Reply to NBD_OPT_EXPORT_NAME: 64-bit size, 16-bit flags, 124 zero bytes unless NO_ZEROES. */
export function encodeExportNameReply(size: bigint, transmissionFlags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(EXPORT_NAME_REPLY.zeroes.offset + (noZeroes ? 0 : EXPORT_NAME_ZEROES));
  setBE64(b, EXPORT_NAME_REPLY.size, size);
  setBE16(b, EXPORT_NAME_REPLY.transmissionFlags, transmissionFlags);
  return b;
}

export interface InfoRequest {
  readonly name: string;
  readonly infos: readonly number[];
}

/**
 * Data of NBD_OPT_INFO / NBD_OPT_GO: 32-bit name length, name, 16-bit count, count x 16-bit
 * info types: INFO_REQUEST, the name, then INFO_REQUEST_LIST at the name's end, each entry an
 * INFO_REQUEST_ENTRY.
 */
export const INFO_REQUEST = fieldTable({ nameLength: u32(0) });
export const INFO_REQUEST_LIST = fieldTable({ count: u16(0) });
export const INFO_REQUEST_ENTRY = fieldTable({ type: u16(0) });
const NAME_AT = INFO_REQUEST.nameLength.width;
const LIST_SIZE = INFO_REQUEST_LIST.count.width;
const ENTRY_SIZE = INFO_REQUEST_ENTRY.type.width;

/** Returns null when the lengths do not add up to exactly the option's data. */
export function decodeInfoRequest(data: Buffer): InfoRequest | null {
  if (data.length < NAME_AT + LIST_SIZE) return null;
  const nameLength = getBE32(data, INFO_REQUEST.nameLength);
  if (nameLength > data.length - NAME_AT - LIST_SIZE || nameLength > NBD_MAX_STRING) return null;
  const list = NAME_AT + nameLength;
  const count = getBE16(data, INFO_REQUEST_LIST.count, list);
  if (data.length !== list + LIST_SIZE + ENTRY_SIZE * count) return null;
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(getBE16(data, INFO_REQUEST_ENTRY.type, list + LIST_SIZE + ENTRY_SIZE * i));
  return { name: data.toString('utf8', NAME_AT, list), infos };
}

export function encodeInfoRequest(name: string, infos: readonly number[]): Buffer {
  const n = Buffer.from(name, 'utf8');
  const list = NAME_AT + n.length;
  const b = Buffer.alloc(list + LIST_SIZE + ENTRY_SIZE * infos.length);
  setBE32(b, INFO_REQUEST.nameLength, n.length);
  n.copy(b, NAME_AT);
  setBE16(b, INFO_REQUEST_LIST.count, infos.length, list);
  infos.forEach((t, i) => setBE16(b, INFO_REQUEST_ENTRY.type, t, list + LIST_SIZE + ENTRY_SIZE * i));
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
    magic: getBE32(b, REQUEST_HEADER.magic),
    flags: getBE16(b, REQUEST_HEADER.flags),
    type: getBE16(b, REQUEST_HEADER.type),
    cookie: Buffer.from(view(b, REQUEST_HEADER.cookie)),
    offset: getBE64(b, REQUEST_HEADER.offset),
    length: getBE32(b, REQUEST_HEADER.length),
  };
}

export function encodeRequestHeader(h: Omit<RequestHeader, 'magic'> & { magic?: number }): Buffer {
  const b = Buffer.alloc(REQUEST_HEADER_SIZE);
  setBE32(b, REQUEST_HEADER.magic, h.magic ?? NBD_REQUEST_MAGIC);
  setBE16(b, REQUEST_HEADER.flags, h.flags);
  setBE16(b, REQUEST_HEADER.type, h.type);
  h.cookie.copy(b, REQUEST_HEADER.cookie.offset, 0, REQUEST_HEADER.cookie.width);
  setBE64(b, REQUEST_HEADER.offset, h.offset);
  setBE32(b, REQUEST_HEADER.length, h.length >>> 0);
  return b;
}

/** S: 32-bit magic, 32-bit error, 64-bit cookie (read data follows on success). */
export function encodeSimpleReply(error: number, cookie: Buffer): Buffer {
  const b = Buffer.alloc(SIMPLE_REPLY_SIZE);
  setBE32(b, SIMPLE_REPLY.magic, NBD_SIMPLE_REPLY_MAGIC);
  setBE32(b, SIMPLE_REPLY.error, error);
  cookie.copy(b, SIMPLE_REPLY.cookie.offset, 0, SIMPLE_REPLY.cookie.width);
  return b;
}

export interface SimpleReply {
  readonly magic: number;
  readonly error: number;
  readonly cookie: Buffer;
}

export function decodeSimpleReply(b: Buffer): SimpleReply {
  return { magic: getBE32(b, SIMPLE_REPLY.magic), error: getBE32(b, SIMPLE_REPLY.error), cookie: Buffer.from(view(b, SIMPLE_REPLY.cookie)) };
}
