/**
 * The Admin Virtqueue command format (seed 000): a device-readable part `class, command,
 * data[]` and a device-writable part `result[], status_type:4 (low bits, DECISIONS.md item 7)
 * reserved:4, status`.
 */

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
  const out = Buffer.alloc(2 + c.data.length);
  out[0] = c.cls;
  out[1] = c.command;
  c.data.copy(out, 2);
  return out;
}

/** null when the readable part is too short to hold class and command. */
export function decodeAdminCommand(readable: Buffer): AdminCommand | null {
  if (readable.length < 2) return null;
  return { cls: readable[0]!, command: readable[1]!, data: readable.subarray(2) };
}

/** The two status bytes that end the device-writable part. */
export function encodeAdminStatus(statusType: number, status: number): Buffer {
  return Buffer.from([statusType & 0x0f, status & 0xff]);
}

export function decodeAdminStatus(tail: Buffer): { statusType: number; status: number } {
  if (tail.length < 2) throw new RangeError('admin status needs 2 bytes');
  const b = tail.length - 2;
  return { statusType: tail[b]! & 0x0f, status: tail[b + 1]! };
}
