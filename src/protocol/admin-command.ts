import { fieldTable, getU8, setU8, tableSize, u32, u8 } from './fields.js';

/**
 * The Admin Virtqueue command format (seed 000): a device-readable part `class, command,
 * data[]` and a device-writable part `result[], status_type:4 (low bits, DECISIONS.md item 7)
 * reserved:4, status`.
 */

/**
 * struct virtio_admin_cmd's fixed parts: the device-readable part opens with `u8 class; u8
 * command;` (command-specific data follows), the device-writable part ends with the status
 * pair (`u8 status_type : 4; u8 reserved : 4; u8 status;`, at its last two bytes).
 */
export const ADMIN_COMMAND = fieldTable({ class: u8(0), command: u8(1) });
export const ADMIN_STATUS = fieldTable({ statusType: u8(0), status: u8(1) });
/**
 * DATA_TRANSFER_ERR's result when the result did not fit (docs/PROTOCOL.md, "Admin
 * virtqueue"): `le32 needed`, the result's size, where the device-writable part has room for it.
 */
export const NEEDED_RESULT = fieldTable({ needed: u32(0) });
export const NEEDED_RESULT_SIZE = 4;

/** Bytes of each fixed part (computed once: tableSize walks the table). */
export const ADMIN_COMMAND_SIZE = tableSize(ADMIN_COMMAND);
export const ADMIN_STATUS_SIZE = tableSize(ADMIN_STATUS);
/** The low four bits of ADMIN_STATUS.statusType's byte (DECISIONS.md item 7). */
const STATUS_TYPE_MASK = 0x0f;

export const AdminStatusType = {
  GENERIC: 0,
  CLASS_SPECIFIC: 1,
  COMMAND_SPECIFIC: 2,
  TRANSPORT_SPECIFIC: 3,
  DEVICE_SPECIFIC: 4,
  VENDOR_SPECIFIC: 5,
} as const;

export const AdminGenericStatus = {
  OK: 0,
  ERR: 1,
  INVALID_CLASS: 2,
  INVALID_COMMAND: 3,
  DATA_TRANSFER_ERR: 4,
  DEVICE_INTERNAL_ERR: 5,
} as const;

export const AdminClassRange = {
  COMMON: [0, 63],
  TRANSPORT: [64, 127],
  DEVICE: [128, 191],
  VENDOR: [192, 255],
} as const;

export interface AdminCommand {
  readonly cls: number;
  readonly command: number;
  readonly data: Buffer;
}

export function encodeAdminCommand(c: AdminCommand): Buffer {
  const out = Buffer.alloc(ADMIN_COMMAND_SIZE + c.data.length);
  setU8(out, ADMIN_COMMAND.class, c.cls);
  setU8(out, ADMIN_COMMAND.command, c.command);
  c.data.copy(out, ADMIN_COMMAND_SIZE);
  return out;
}

/** null when the readable part is too short to hold class and command. */
export function decodeAdminCommand(readable: Buffer): AdminCommand | null {
  if (readable.length < ADMIN_COMMAND_SIZE) return null;
  return { cls: getU8(readable, ADMIN_COMMAND.class), command: getU8(readable, ADMIN_COMMAND.command), data: readable.subarray(ADMIN_COMMAND_SIZE) };
}

/** The two status bytes that end the device-writable part. */
export function encodeAdminStatus(statusType: number, status: number): Buffer {
  const b = Buffer.alloc(ADMIN_STATUS_SIZE);
  setU8(b, ADMIN_STATUS.statusType, statusType & STATUS_TYPE_MASK);
  setU8(b, ADMIN_STATUS.status, status & 0xff);
  return b;
}

export function decodeAdminStatus(tail: Buffer): { statusType: number; status: number } {
  if (tail.length < ADMIN_STATUS_SIZE) throw new RangeError(`admin status needs ${ADMIN_STATUS_SIZE} bytes`);
  const at = tail.length - ADMIN_STATUS_SIZE;
  return { statusType: getU8(tail, ADMIN_STATUS.statusType, at) & STATUS_TYPE_MASK, status: getU8(tail, ADMIN_STATUS.status, at) };
}
