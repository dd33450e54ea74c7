import { AdminGenericStatus, AdminStatusType } from './admin-command.js';
import {
  bytes,
  fieldTable,
  getLE16,
  getLE32,
  getLE64,
  getU8,
  setLE16,
  setLE32,
  setLE64,
  setU8,
  u16,
  u32,
  u64,
  u8,
  view,
} from './fields.js';

/**
 * vof's admin commands (docs/PROTOCOL.md, "Admin virtqueue"): class and command numbers, class-
 * specific statuses, and the command-specific data and result records. Pure codec, little-endian,
 * no padding. The header that carries class and command is in admin-command.ts.
 */

/** VIRTIO_F_ADMIN_VQ: a device feature bit (seed 000, "Reserved Feature Bits"). */
export const VIRTIO_F_ADMIN_VQ = 40n;

export const AdminClass = {
  /** Common range (0-63): every device. */
  COMMON: 0,
  /** Transport range (64-127): the Virtio-oF transport. */
  VIRTIO_OF: 64,
  /** Device range (128-191): virtio-blk. */
  BLK: 128,
  /** Vendor range (192-255): vof. */
  VOF: 192,
} as const;

export const AdminCommonCommand = { LIST_COMMANDS: 0, READ_ERROR_LOG: 1, HEALTH_TEST: 2 } as const;
export const AdminVirtioOfCommand = { LIST_QUEUES: 0 } as const;
export const AdminBlkCommand = { LIST_FORMATS: 0, FORMAT: 1 } as const;
export const AdminVofCommand = { RESET_COUNTERS: 0, CLEAR_ERROR_LOG: 1 } as const;

/** Class-specific statuses of the virtio-blk class (status type CLASS_SPECIFIC). */
export const AdminBlkStatus = {
  /** The requested format (block size, protection information) is not one the device serves. */
  FORMAT_UNSUPPORTED: 1,
  /** Other device instances use the export; a format would change the disk under them. */
  EXPORT_IN_USE: 2,
  /** The export is read-only. */
  READ_ONLY: 3,
} as const;

/**
 * vof's Virtio-oF transport-specific statuses (status type TRANSPORT_SPECIFIC; the admin seed
 * assigns none, DECISIONS.md item 9). Valid with any class: they come from the transport's access
 * control, not from the command.
 */
export const AdminTransportStatus = {
  /**
   * The command is export-wide and this instance's IVQN (with the identity its connection
   * proved) holds no admin grant on the export: the admin queue's twin of the Virtio-oF
   * EACLREJECTED (docs/PROTOCOL.md, "Admin grants").
   */
  ACL_REJECTED: 1,
} as const;

const commandNames: Record<number, Record<number, string>> = {
  [AdminClass.COMMON]: { 0: 'LIST_COMMANDS', 1: 'READ_ERROR_LOG', 2: 'HEALTH_TEST' },
  [AdminClass.VIRTIO_OF]: { 0: 'LIST_QUEUES' },
  [AdminClass.BLK]: { 0: 'LIST_FORMATS', 1: 'FORMAT' },
  [AdminClass.VOF]: { 0: 'RESET_COUNTERS', 1: 'CLEAR_ERROR_LOG' },
};
const classNames: Record<number, string> = { 0: 'common', 64: 'virtio-of', 128: 'device', 192: 'vof-vendor' };

export function adminClassName(cls: number): string {
  return classNames[cls] ?? `class ${cls}`;
}
export function adminCommandName(cls: number, command: number): string {
  return commandNames[cls]?.[command] ?? `command ${command}`;
}

const genericNames = new Map<number, string>(Object.entries(AdminGenericStatus).map(([k, v]) => [v, k]));
const statusTypeNames = new Map<number, string>(Object.entries(AdminStatusType).map(([k, v]) => [v, k]));
const blkNames = new Map<number, string>(Object.entries(AdminBlkStatus).map(([k, v]) => [v, k]));
const transportNames = new Map<number, string>(Object.entries(AdminTransportStatus).map(([k, v]) => [v, k]));

/** "GENERIC INVALID_CLASS", "CLASS_SPECIFIC EXPORT_IN_USE", … */
export function formatAdminStatus(cls: number, statusType: number, status: number): string {
  const type = statusTypeNames.get(statusType) ?? `type ${statusType}`;
  let name: string | undefined;
  if (statusType === AdminStatusType.GENERIC) name = genericNames.get(status);
  else if (statusType === AdminStatusType.CLASS_SPECIFIC && cls === AdminClass.BLK) name = blkNames.get(status);
  else if (statusType === AdminStatusType.TRANSPORT_SPECIFIC) name = transportNames.get(status);
  return `${type} ${name ?? status}`;
}

/** Reading a record past its end: the peer sent or answered malformed data. */
export class AdminRecordError extends RangeError {}

function need(b: Buffer, bytes: number, what: string): void {
  if (b.length < bytes) throw new AdminRecordError(`${what}: ${b.length} bytes, need ${bytes}`);
}

function fixedString(s: string, size: number): Buffer {
  const out = Buffer.alloc(size);
  // Cut on a character boundary so the field stays valid UTF-8.
  let bytes = Buffer.from(s, 'utf8');
  while (bytes.length > size) bytes = Buffer.from(s = s.slice(0, -1), 'utf8');
  bytes.copy(out);
  return out;
}
/** A NUL-padded UTF-8 field (all of it when it has no NUL). */
function readFixedString(f: Buffer): string {
  const end = f.indexOf(0);
  return f.subarray(0, end < 0 ? f.length : end).toString('utf8');
}

// ---------------------------------------------------------------- common class

/** struct virtio_admin_command_list (LIST_COMMANDS result): le16 count; le16 reserved; entries[count]. */
export const COMMAND_LIST = fieldTable({ count: u16(0), reserved: u16(2) });
export const COMMAND_LIST_HEADER_SIZE = 4;
/** One entry: u8 class; u8 command. */
export const COMMAND_LIST_ENTRY = fieldTable({ class: u8(0), command: u8(1) });
export const COMMAND_LIST_ENTRY_SIZE = 2;

export interface AdminCommandId {
  readonly cls: number;
  readonly command: number;
}
export function encodeCommandList(list: readonly AdminCommandId[]): Buffer {
  const b = Buffer.alloc(COMMAND_LIST_HEADER_SIZE + COMMAND_LIST_ENTRY_SIZE * list.length);
  setLE16(b, COMMAND_LIST.count, list.length);
  list.forEach((c, i) => {
    const o = COMMAND_LIST_HEADER_SIZE + COMMAND_LIST_ENTRY_SIZE * i;
    setU8(b, COMMAND_LIST_ENTRY.class, c.cls, o);
    setU8(b, COMMAND_LIST_ENTRY.command, c.command, o);
  });
  return b;
}
export function decodeCommandList(b: Buffer): AdminCommandId[] {
  need(b, COMMAND_LIST_HEADER_SIZE, 'command list');
  const n = getLE16(b, COMMAND_LIST.count);
  need(b, COMMAND_LIST_HEADER_SIZE + COMMAND_LIST_ENTRY_SIZE * n, 'command list');
  return Array.from({ length: n }, (_, i) => {
    const o = COMMAND_LIST_HEADER_SIZE + COMMAND_LIST_ENTRY_SIZE * i;
    return { cls: getU8(b, COMMAND_LIST_ENTRY.class, o), command: getU8(b, COMMAND_LIST_ENTRY.command, o) };
  });
}

export const ErrorLogEntryType = {
  IO_ERROR: 1,
  REFUSED_COMMAND: 2,
  RESET: 3,
  CONFIG_CHANGE: 4,
  DEVICE_NEEDS_RESET: 5,
  HEALTH_TEST_FAILED: 6,
} as const;
const entryTypeNames = new Map<number, string>(Object.entries(ErrorLogEntryType).map(([k, v]) => [v, k]));
export function errorLogEntryTypeName(t: number): string {
  return entryTypeNames.get(t) ?? `type ${t}`;
}

/** struct virtio_admin_error_log_request (READ_ERROR_LOG data): le16 skip (newest entries to pass over); le16 max_entries (0: as many as fit). */
export const ERROR_LOG_REQUEST = fieldTable({ skip: u16(0), maxEntries: u16(2) });
export const ERROR_LOG_REQUEST_SIZE = 4;
export function encodeErrorLogRequest(skip: number, maxEntries: number): Buffer {
  const b = Buffer.alloc(ERROR_LOG_REQUEST_SIZE);
  setLE16(b, ERROR_LOG_REQUEST.skip, skip);
  setLE16(b, ERROR_LOG_REQUEST.maxEntries, maxEntries);
  return b;
}
/** The request's fields (the caller has checked its size). */
export function decodeErrorLogRequest(b: Buffer): { skip: number; maxEntries: number } {
  return { skip: getLE16(b, ERROR_LOG_REQUEST.skip), maxEntries: getLE16(b, ERROR_LOG_REQUEST.maxEntries) };
}

export const ERROR_LOG_HEADER_SIZE = 16;
export const ERROR_LOG_ENTRY_SIZE = 64;
export const ERROR_LOG_DETAIL_SIZE = 48;
/** struct virtio_admin_error_log (READ_ERROR_LOG result), the part before its entries. */
export const ERROR_LOG = fieldTable({ count: u16(0), reserved: u16(2), total: u32(4), lost: u64(8) });
/** struct virtio_admin_error_log_entry. */
export const ERROR_LOG_ENTRY = fieldTable({
  timestamp: u64(0),
  type: u8(8),
  reserved: u8(9),
  vqIndex: u16(10),
  deviceInstanceId: u16(12),
  status: u16(14),
  detail: bytes(16, ERROR_LOG_DETAIL_SIZE),
});
/** vq_index of an entry that concerns no virtqueue (the control queue, the device as a whole). */
export const NO_VQ = 0xffff;

/**
 * One error log entry, 64 bytes: le64 timestamp (ms since the Unix epoch); u8 type; u8 reserved;
 * le16 vq_index; le16 device_instance_id; le16 status; u8 detail[48] (UTF-8, NUL-padded).
 */
export interface ErrorLogEntry {
  readonly timestampMs: number;
  readonly type: number;
  readonly vqIndex: number;
  readonly instanceId: number;
  /** The status the command got (Virtio-oF, device or admin status), 0 when none applies. */
  readonly status: number;
  readonly detail: string;
}

/**
 * READ_ERROR_LOG result: le16 count; le16 reserved; le32 total (entries held now); le64 lost
 * (entries dropped because the log was full); entries[count], newest first.
 */
export interface ErrorLogPage {
  readonly total: number;
  readonly lost: number;
  readonly entries: readonly ErrorLogEntry[];
}
export function encodeErrorLogPage(p: ErrorLogPage): Buffer {
  const b = Buffer.alloc(ERROR_LOG_HEADER_SIZE + ERROR_LOG_ENTRY_SIZE * p.entries.length);
  setLE16(b, ERROR_LOG.count, p.entries.length);
  setLE32(b, ERROR_LOG.total, p.total);
  setLE64(b, ERROR_LOG.lost, BigInt(p.lost));
  p.entries.forEach((e, i) => {
    const o = ERROR_LOG_HEADER_SIZE + i * ERROR_LOG_ENTRY_SIZE;
    setLE64(b, ERROR_LOG_ENTRY.timestamp, BigInt(e.timestampMs), o);
    setU8(b, ERROR_LOG_ENTRY.type, e.type, o);
    setLE16(b, ERROR_LOG_ENTRY.vqIndex, e.vqIndex, o);
    setLE16(b, ERROR_LOG_ENTRY.deviceInstanceId, e.instanceId, o);
    setLE16(b, ERROR_LOG_ENTRY.status, e.status, o);
    fixedString(e.detail, ERROR_LOG_DETAIL_SIZE).copy(b, o + ERROR_LOG_ENTRY.detail.offset);
  });
  return b;
}
export function decodeErrorLogPage(b: Buffer): ErrorLogPage {
  need(b, ERROR_LOG_HEADER_SIZE, 'error log');
  const n = getLE16(b, ERROR_LOG.count);
  need(b, ERROR_LOG_HEADER_SIZE + n * ERROR_LOG_ENTRY_SIZE, 'error log');
  const entries: ErrorLogEntry[] = [];
  for (let i = 0; i < n; i++) {
    const o = ERROR_LOG_HEADER_SIZE + i * ERROR_LOG_ENTRY_SIZE;
    entries.push({
      timestampMs: Number(getLE64(b, ERROR_LOG_ENTRY.timestamp, o)),
      type: getU8(b, ERROR_LOG_ENTRY.type, o),
      vqIndex: getLE16(b, ERROR_LOG_ENTRY.vqIndex, o),
      instanceId: getLE16(b, ERROR_LOG_ENTRY.deviceInstanceId, o),
      status: getLE16(b, ERROR_LOG_ENTRY.status, o),
      detail: readFixedString(view(b, ERROR_LOG_ENTRY.detail, o)),
    });
  }
  return { total: getLE32(b, ERROR_LOG.total), lost: Number(getLE64(b, ERROR_LOG.lost)), entries };
}

/** struct virtio_admin_health_test_request (HEALTH_TEST data): le32 samples (0: the device's default). */
export const HEALTH_TEST_REQUEST = fieldTable({ samples: u32(0) });
export const HEALTH_TEST_REQUEST_SIZE = 4;
export function encodeHealthTestRequest(samples: number): Buffer {
  const b = Buffer.alloc(HEALTH_TEST_REQUEST_SIZE);
  setLE32(b, HEALTH_TEST_REQUEST.samples, samples);
  return b;
}
/** The samples asked for (the caller has checked the request's size). */
export function decodeHealthTestRequest(b: Buffer): number {
  return getLE32(b, HEALTH_TEST_REQUEST.samples);
}
export const HealthTestOutcome = { PASSED: 0, FAILED: 1 } as const;
/**
 * HEALTH_TEST result, 32 bytes: u8 result (0 passed, 1 failed); u8 reserved[3]; le32 samples;
 * le32 errors; le32 duration_ms; le64 bytes_checked; le64 first_error (device-specific position,
 * virtio-blk: byte offset; all ones when no error).
 */
export interface HealthTestResult {
  readonly passed: boolean;
  readonly samples: number;
  readonly errors: number;
  readonly durationMs: number;
  readonly bytesChecked: number;
  /** null when no sample failed. */
  readonly firstError: bigint | null;
}
export const HEALTH_TEST_RESULT_SIZE = 32;
/** struct virtio_admin_health_test_result. */
export const HEALTH_TEST_RESULT = fieldTable({
  result: u8(0),
  reserved: bytes(1, 3),
  samples: u32(4),
  errors: u32(8),
  durationMs: u32(12),
  bytesChecked: u64(16),
  firstError: u64(24),
});
const NO_ERROR = 0xffffffffffffffffn;
export function encodeHealthTestResult(r: HealthTestResult): Buffer {
  const b = Buffer.alloc(HEALTH_TEST_RESULT_SIZE);
  setU8(b, HEALTH_TEST_RESULT.result, r.passed ? HealthTestOutcome.PASSED : HealthTestOutcome.FAILED);
  setLE32(b, HEALTH_TEST_RESULT.samples, r.samples);
  setLE32(b, HEALTH_TEST_RESULT.errors, r.errors);
  setLE32(b, HEALTH_TEST_RESULT.durationMs, Math.min(0xffffffff, Math.round(r.durationMs)));
  setLE64(b, HEALTH_TEST_RESULT.bytesChecked, BigInt(r.bytesChecked));
  setLE64(b, HEALTH_TEST_RESULT.firstError, r.firstError ?? NO_ERROR);
  return b;
}
export function decodeHealthTestResult(b: Buffer): HealthTestResult {
  need(b, HEALTH_TEST_RESULT_SIZE, 'health test result');
  const first = getLE64(b, HEALTH_TEST_RESULT.firstError);
  return {
    passed: getU8(b, HEALTH_TEST_RESULT.result) === HealthTestOutcome.PASSED,
    samples: getLE32(b, HEALTH_TEST_RESULT.samples),
    errors: getLE32(b, HEALTH_TEST_RESULT.errors),
    durationMs: getLE32(b, HEALTH_TEST_RESULT.durationMs),
    bytesChecked: Number(getLE64(b, HEALTH_TEST_RESULT.bytesChecked)),
    firstError: first === NO_ERROR ? null : first,
  };
}

// ---------------------------------------------------------------- transport class

export const QueueRole = { CONTROL: 0, VIRTQUEUE: 1, ADMIN: 2 } as const;
export const QueueTransport = { TCP: 0, RDMA: 1 } as const;
export const QUEUE_LIST_HEADER_SIZE = 8;
export const QUEUE_ENTRY_SIZE = 112;
export const QUEUE_PEER_SIZE = 72;
/** struct virtio_admin_queue_list (LIST_QUEUES result), the part before its entries. */
export const QUEUE_LIST = fieldTable({ count: u16(0), reserved: bytes(2, 6) });
/** struct virtio_admin_queue_entry. */
export const QUEUE_ENTRY = fieldTable({
  vqIndex: u16(0),
  role: u8(2),
  transport: u8(3),
  queueSize: u16(4),
  inFlight: u16(6),
  commands: u64(8),
  bytesOut: u64(16),
  bytesIn: u64(24),
  errors: u64(32),
  peer: bytes(40, QUEUE_PEER_SIZE),
});

/**
 * One LIST_QUEUES entry, 112 bytes: le16 vq_index (0xffff: control queue); u8 role (0 control,
 * 1 virtqueue, 2 admin); u8 transport (0 TCP stream, 1 RDMA keyed); le16 queue_size;
 * le16 in_flight; le64 commands; le64 bytes_out (device-readable bytes received); le64 bytes_in
 * (device-written bytes sent); le64 errors; u8 peer[72] (UTF-8 URL, NUL-padded).
 */
export interface QueueInfo {
  readonly vqIndex: number;
  readonly role: number;
  readonly transport: number;
  readonly queueSize: number;
  readonly inFlight: number;
  readonly commands: number;
  readonly bytesOut: number;
  readonly bytesIn: number;
  readonly errors: number;
  readonly peer: string;
}
export function encodeQueueList(list: readonly QueueInfo[]): Buffer {
  const b = Buffer.alloc(QUEUE_LIST_HEADER_SIZE + QUEUE_ENTRY_SIZE * list.length);
  setLE16(b, QUEUE_LIST.count, list.length);
  list.forEach((q, i) => {
    const o = QUEUE_LIST_HEADER_SIZE + i * QUEUE_ENTRY_SIZE;
    setLE16(b, QUEUE_ENTRY.vqIndex, q.vqIndex, o);
    setU8(b, QUEUE_ENTRY.role, q.role, o);
    setU8(b, QUEUE_ENTRY.transport, q.transport, o);
    setLE16(b, QUEUE_ENTRY.queueSize, Math.min(0xffff, q.queueSize), o);
    setLE16(b, QUEUE_ENTRY.inFlight, Math.min(0xffff, q.inFlight), o);
    setLE64(b, QUEUE_ENTRY.commands, BigInt(q.commands), o);
    setLE64(b, QUEUE_ENTRY.bytesOut, BigInt(q.bytesOut), o);
    setLE64(b, QUEUE_ENTRY.bytesIn, BigInt(q.bytesIn), o);
    setLE64(b, QUEUE_ENTRY.errors, BigInt(q.errors), o);
    fixedString(q.peer, QUEUE_PEER_SIZE).copy(b, o + QUEUE_ENTRY.peer.offset);
  });
  return b;
}
export function decodeQueueList(b: Buffer): QueueInfo[] {
  need(b, QUEUE_LIST_HEADER_SIZE, 'queue list');
  const n = getLE16(b, QUEUE_LIST.count);
  need(b, QUEUE_LIST_HEADER_SIZE + n * QUEUE_ENTRY_SIZE, 'queue list');
  return Array.from({ length: n }, (_, i) => {
    const o = QUEUE_LIST_HEADER_SIZE + i * QUEUE_ENTRY_SIZE;
    return {
      vqIndex: getLE16(b, QUEUE_ENTRY.vqIndex, o),
      role: getU8(b, QUEUE_ENTRY.role, o),
      transport: getU8(b, QUEUE_ENTRY.transport, o),
      queueSize: getLE16(b, QUEUE_ENTRY.queueSize, o),
      inFlight: getLE16(b, QUEUE_ENTRY.inFlight, o),
      commands: Number(getLE64(b, QUEUE_ENTRY.commands, o)),
      bytesOut: Number(getLE64(b, QUEUE_ENTRY.bytesOut, o)),
      bytesIn: Number(getLE64(b, QUEUE_ENTRY.bytesIn, o)),
      errors: Number(getLE64(b, QUEUE_ENTRY.errors, o)),
      peer: readFixedString(view(b, QUEUE_ENTRY.peer, o)),
    };
  });
}

// ---------------------------------------------------------------- virtio-blk class

/**
 * One LIST_FORMATS entry, 8 bytes: le32 logical_block_size; u8 metadata_bytes (protection
 * information per block); u8 flags (bit 0: supported); le16 reserved.
 */
export interface BlkFormat {
  readonly blockSize: number;
  readonly metadataBytes: number;
  readonly supported: boolean;
}
/**
 * struct virtio_admin_blk_format_list (LIST_FORMATS result), the part before its entries:
 * le16 count; u8 current (index of the format in use); u8 reserved.
 */
export const FORMAT_LIST = fieldTable({ count: u16(0), current: u8(2), reserved: u8(3) });
export const FORMAT_LIST_HEADER_SIZE = 4;
/** One format list entry. */
export const FORMAT_LIST_ENTRY = fieldTable({ logicalBlockSize: u32(0), metadataBytes: u8(4), flags: u8(5), reserved: u16(6) });
export const FORMAT_LIST_ENTRY_SIZE = 8;
/** FORMAT_LIST_ENTRY.flags: the device serves this format. */
const FORMAT_F_SUPPORTED = 1;

export function encodeFormatList(formats: readonly BlkFormat[], current: number): Buffer {
  const b = Buffer.alloc(FORMAT_LIST_HEADER_SIZE + FORMAT_LIST_ENTRY_SIZE * formats.length);
  setLE16(b, FORMAT_LIST.count, formats.length);
  setU8(b, FORMAT_LIST.current, current);
  formats.forEach((f, i) => {
    const o = FORMAT_LIST_HEADER_SIZE + FORMAT_LIST_ENTRY_SIZE * i;
    setLE32(b, FORMAT_LIST_ENTRY.logicalBlockSize, f.blockSize, o);
    setU8(b, FORMAT_LIST_ENTRY.metadataBytes, f.metadataBytes, o);
    setU8(b, FORMAT_LIST_ENTRY.flags, f.supported ? FORMAT_F_SUPPORTED : 0, o);
  });
  return b;
}
export function decodeFormatList(b: Buffer): { formats: BlkFormat[]; current: number } {
  need(b, FORMAT_LIST_HEADER_SIZE, 'format list');
  const n = getLE16(b, FORMAT_LIST.count);
  need(b, FORMAT_LIST_HEADER_SIZE + FORMAT_LIST_ENTRY_SIZE * n, 'format list');
  const formats = Array.from({ length: n }, (_, i) => {
    const o = FORMAT_LIST_HEADER_SIZE + FORMAT_LIST_ENTRY_SIZE * i;
    return {
      blockSize: getLE32(b, FORMAT_LIST_ENTRY.logicalBlockSize, o),
      metadataBytes: getU8(b, FORMAT_LIST_ENTRY.metadataBytes, o),
      supported: (getU8(b, FORMAT_LIST_ENTRY.flags, o) & FORMAT_F_SUPPORTED) === FORMAT_F_SUPPORTED,
    };
  });
  return { formats, current: getU8(b, FORMAT_LIST.current) };
}

/** struct virtio_admin_blk_format (FORMAT data), 8 bytes: le32 logical_block_size; u8 metadata_bytes; u8 reserved[3]. */
export const FORMAT_REQUEST = fieldTable({ logicalBlockSize: u32(0), metadataBytes: u8(4), reserved: bytes(5, 3) });
export const FORMAT_REQUEST_SIZE = 8;
export function encodeFormatRequest(blockSize: number, metadataBytes = 0): Buffer {
  const b = Buffer.alloc(FORMAT_REQUEST_SIZE);
  setLE32(b, FORMAT_REQUEST.logicalBlockSize, blockSize);
  setU8(b, FORMAT_REQUEST.metadataBytes, metadataBytes);
  return b;
}
export function decodeFormatRequest(b: Buffer): { blockSize: number; metadataBytes: number } | null {
  if (b.length !== FORMAT_REQUEST_SIZE) return null;
  return { blockSize: getLE32(b, FORMAT_REQUEST.logicalBlockSize), metadataBytes: getU8(b, FORMAT_REQUEST.metadataBytes) };
}
