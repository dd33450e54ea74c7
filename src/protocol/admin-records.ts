import { AdminGenericStatus, AdminStatusType } from './admin-command.js';

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
function readFixedString(b: Buffer, offset: number, size: number): string {
  const f = b.subarray(offset, offset + size);
  const end = f.indexOf(0);
  return f.subarray(0, end < 0 ? size : end).toString('utf8');
}

// ---------------------------------------------------------------- common class

/** LIST_COMMANDS result: le16 count; le16 reserved; { u8 class; u8 command; }[count]. */
export interface AdminCommandId {
  readonly cls: number;
  readonly command: number;
}
export function encodeCommandList(list: readonly AdminCommandId[]): Buffer {
  const b = Buffer.alloc(4 + 2 * list.length);
  b.writeUInt16LE(list.length, 0);
  list.forEach((c, i) => {
    b[4 + 2 * i] = c.cls;
    b[5 + 2 * i] = c.command;
  });
  return b;
}
export function decodeCommandList(b: Buffer): AdminCommandId[] {
  need(b, 4, 'command list');
  const n = b.readUInt16LE(0);
  need(b, 4 + 2 * n, 'command list');
  return Array.from({ length: n }, (_, i) => ({ cls: b[4 + 2 * i]!, command: b[5 + 2 * i]! }));
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

/** READ_ERROR_LOG data: le16 skip (newest entries to pass over); le16 max_entries (0: as many as fit). */
export const ERROR_LOG_REQUEST_SIZE = 4;
export function encodeErrorLogRequest(skip: number, maxEntries: number): Buffer {
  const b = Buffer.alloc(ERROR_LOG_REQUEST_SIZE);
  b.writeUInt16LE(skip, 0);
  b.writeUInt16LE(maxEntries, 2);
  return b;
}

export const ERROR_LOG_HEADER_SIZE = 16;
export const ERROR_LOG_ENTRY_SIZE = 64;
export const ERROR_LOG_DETAIL_SIZE = 48;
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
  b.writeUInt16LE(p.entries.length, 0);
  b.writeUInt32LE(p.total, 4);
  b.writeBigUInt64LE(BigInt(p.lost), 8);
  p.entries.forEach((e, i) => {
    const o = ERROR_LOG_HEADER_SIZE + i * ERROR_LOG_ENTRY_SIZE;
    b.writeBigUInt64LE(BigInt(e.timestampMs), o);
    b[o + 8] = e.type;
    b.writeUInt16LE(e.vqIndex, o + 10);
    b.writeUInt16LE(e.instanceId, o + 12);
    b.writeUInt16LE(e.status, o + 14);
    fixedString(e.detail, ERROR_LOG_DETAIL_SIZE).copy(b, o + 16);
  });
  return b;
}
export function decodeErrorLogPage(b: Buffer): ErrorLogPage {
  need(b, ERROR_LOG_HEADER_SIZE, 'error log');
  const n = b.readUInt16LE(0);
  need(b, ERROR_LOG_HEADER_SIZE + n * ERROR_LOG_ENTRY_SIZE, 'error log');
  const entries: ErrorLogEntry[] = [];
  for (let i = 0; i < n; i++) {
    const o = ERROR_LOG_HEADER_SIZE + i * ERROR_LOG_ENTRY_SIZE;
    entries.push({
      timestampMs: Number(b.readBigUInt64LE(o)),
      type: b[o + 8]!,
      vqIndex: b.readUInt16LE(o + 10),
      instanceId: b.readUInt16LE(o + 12),
      status: b.readUInt16LE(o + 14),
      detail: readFixedString(b, o + 16, ERROR_LOG_DETAIL_SIZE),
    });
  }
  return { total: b.readUInt32LE(4), lost: Number(b.readBigUInt64LE(8)), entries };
}

/** HEALTH_TEST data: le32 samples (0: the device's default). */
export const HEALTH_TEST_REQUEST_SIZE = 4;
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
const NO_ERROR = 0xffffffffffffffffn;
export function encodeHealthTestResult(r: HealthTestResult): Buffer {
  const b = Buffer.alloc(HEALTH_TEST_RESULT_SIZE);
  b[0] = r.passed ? HealthTestOutcome.PASSED : HealthTestOutcome.FAILED;
  b.writeUInt32LE(r.samples, 4);
  b.writeUInt32LE(r.errors, 8);
  b.writeUInt32LE(Math.min(0xffffffff, Math.round(r.durationMs)), 12);
  b.writeBigUInt64LE(BigInt(r.bytesChecked), 16);
  b.writeBigUInt64LE(r.firstError ?? NO_ERROR, 24);
  return b;
}
export function decodeHealthTestResult(b: Buffer): HealthTestResult {
  need(b, HEALTH_TEST_RESULT_SIZE, 'health test result');
  const first = b.readBigUInt64LE(24);
  return {
    passed: b[0] === HealthTestOutcome.PASSED,
    samples: b.readUInt32LE(4),
    errors: b.readUInt32LE(8),
    durationMs: b.readUInt32LE(12),
    bytesChecked: Number(b.readBigUInt64LE(16)),
    firstError: first === NO_ERROR ? null : first,
  };
}

// ---------------------------------------------------------------- transport class

export const QueueRole = { CONTROL: 0, VIRTQUEUE: 1, ADMIN: 2 } as const;
export const QueueTransport = { TCP: 0, RDMA: 1 } as const;
export const QUEUE_LIST_HEADER_SIZE = 8;
export const QUEUE_ENTRY_SIZE = 112;
export const QUEUE_PEER_SIZE = 72;

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
/** LIST_QUEUES result: le16 count; u8 reserved[6]; entries[count]. */
export function encodeQueueList(list: readonly QueueInfo[]): Buffer {
  const b = Buffer.alloc(QUEUE_LIST_HEADER_SIZE + QUEUE_ENTRY_SIZE * list.length);
  b.writeUInt16LE(list.length, 0);
  list.forEach((q, i) => {
    const o = QUEUE_LIST_HEADER_SIZE + i * QUEUE_ENTRY_SIZE;
    b.writeUInt16LE(q.vqIndex, o);
    b[o + 2] = q.role;
    b[o + 3] = q.transport;
    b.writeUInt16LE(Math.min(0xffff, q.queueSize), o + 4);
    b.writeUInt16LE(Math.min(0xffff, q.inFlight), o + 6);
    b.writeBigUInt64LE(BigInt(q.commands), o + 8);
    b.writeBigUInt64LE(BigInt(q.bytesOut), o + 16);
    b.writeBigUInt64LE(BigInt(q.bytesIn), o + 24);
    b.writeBigUInt64LE(BigInt(q.errors), o + 32);
    fixedString(q.peer, QUEUE_PEER_SIZE).copy(b, o + 40);
  });
  return b;
}
export function decodeQueueList(b: Buffer): QueueInfo[] {
  need(b, QUEUE_LIST_HEADER_SIZE, 'queue list');
  const n = b.readUInt16LE(0);
  need(b, QUEUE_LIST_HEADER_SIZE + n * QUEUE_ENTRY_SIZE, 'queue list');
  return Array.from({ length: n }, (_, i) => {
    const o = QUEUE_LIST_HEADER_SIZE + i * QUEUE_ENTRY_SIZE;
    return {
      vqIndex: b.readUInt16LE(o),
      role: b[o + 2]!,
      transport: b[o + 3]!,
      queueSize: b.readUInt16LE(o + 4),
      inFlight: b.readUInt16LE(o + 6),
      commands: Number(b.readBigUInt64LE(o + 8)),
      bytesOut: Number(b.readBigUInt64LE(o + 16)),
      bytesIn: Number(b.readBigUInt64LE(o + 24)),
      errors: Number(b.readBigUInt64LE(o + 32)),
      peer: readFixedString(b, o + 40, QUEUE_PEER_SIZE),
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
/** LIST_FORMATS result: le16 count; u8 current (index of the format in use); u8 reserved; entries[count]. */
export function encodeFormatList(formats: readonly BlkFormat[], current: number): Buffer {
  const b = Buffer.alloc(4 + 8 * formats.length);
  b.writeUInt16LE(formats.length, 0);
  b[2] = current;
  formats.forEach((f, i) => {
    b.writeUInt32LE(f.blockSize, 4 + 8 * i);
    b[8 + 8 * i] = f.metadataBytes;
    b[9 + 8 * i] = f.supported ? 1 : 0;
  });
  return b;
}
export function decodeFormatList(b: Buffer): { formats: BlkFormat[]; current: number } {
  need(b, 4, 'format list');
  const n = b.readUInt16LE(0);
  need(b, 4 + 8 * n, 'format list');
  const formats = Array.from({ length: n }, (_, i) => ({
    blockSize: b.readUInt32LE(4 + 8 * i),
    metadataBytes: b[8 + 8 * i]!,
    supported: (b[9 + 8 * i]! & 1) === 1,
  }));
  return { formats, current: b[2]! };
}

/** FORMAT data, 8 bytes: le32 logical_block_size; u8 metadata_bytes; u8 reserved[3]. */
export const FORMAT_REQUEST_SIZE = 8;
export function encodeFormatRequest(blockSize: number, metadataBytes = 0): Buffer {
  const b = Buffer.alloc(FORMAT_REQUEST_SIZE);
  b.writeUInt32LE(blockSize, 0);
  b[4] = metadataBytes;
  return b;
}
export function decodeFormatRequest(b: Buffer): { blockSize: number; metadataBytes: number } | null {
  if (b.length !== FORMAT_REQUEST_SIZE) return null;
  return { blockSize: b.readUInt32LE(0), metadataBytes: b[4]! };
}
