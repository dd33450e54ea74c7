/** Wire constants of the Virtio-oF v4 command set (seed 003) and DECISIONS.md. */

export const COMMAND_SIZE = 16;
export const COMPLETION_SIZE = 16;
export const CONNECT_BODY_SIZE = 1024;
export const VQN_FIELD_SIZE = 256;
/** A VQN is at most 255 bytes so its 256-byte field always keeps a NUL (DECISIONS.md item 6). */
export const VQN_MAX_BYTES = 255;
export const KEYED_DESCRIPTOR_SIZE = 16;

export const VIRTIO_OF_CONTROL_QUEUE_SIZE = 32;
/** device_instance_id of a Connect that creates a control queue. */
export const CONTROL_QUEUE_INSTANCE_ID = 0xffff;
export const DEFAULT_PORT = 15771;

/** Command ids 0xff00-0xffff belong to target-initiated control-queue events. */
export const RESERVED_COMMAND_ID_FIRST = 0xff00;
export const COMMAND_ID_CONFIG_CHANGE = 0xfffe;
export const COMMAND_ID_KEEPALIVE = 0xffff;

/** Virtio-oF feature bits (Get/Set Feature). */
export const VIRTIO_OF_F_KEYED_NUM_DESCS = 0n;

export const Opcode = {
  Connect: 0x0000,
  Disconnect: 0x0001,
  Keepalive: 0x0002,
  GetFeature: 0x0004,
  SetFeature: 0x0005,
  GetKeyedNumDescs: 0x0100,
  Vq: 0x0fff,
  GetVendorId: 0x1000,
  GetDeviceId: 0x1001,
  ResetDevice: 0x1003,
  GetStatus: 0x1004,
  SetStatus: 0x1005,
  GetDeviceFeature: 0x1006,
  SetDriverFeature: 0x1009,
  GetVqSize: 0x100a,
  GetConfig: 0x100c,
  SetConfig: 0x100d,
} as const;
export type Opcode = (typeof Opcode)[keyof typeof Opcode];

const opcodeNames = new Map<number, string>(Object.entries(Opcode).map(([k, v]) => [v, k]));
export function opcodeName(op: number): string {
  return opcodeNames.get(op) ?? `0x${op.toString(16).padStart(4, '0')}`;
}

export const Status = {
  SUCCESS: 0x0000,
  ENOCMD: 0x0001,
  ECMDQUOT: 0x0002,
  ENOTGT: 0x1001,
  ENODEV: 0x1002,
  EACLREJECTED: 0x1003,
  EBADDEV: 0x1010,
  EBADVQN: 0x1011,
  EQUEUEQUOT: 0x1020,
  EQSIZEQUOT: 0x1021,
  EFEATURE: 0x2000,
  ESTATUS: 0x2010,
  EDEVFEATURE: 0x2020,
  ECONFOFF: 0x2030,
  ECONFBYTES: 0x2031,
  EOUTVQBUF: 0x20f0,
  EINVQBUF: 0x20f1,
} as const;
export type Status = (typeof Status)[keyof typeof Status];
export type StatusName = keyof typeof Status;

const statusNames = new Map<number, string>(Object.entries(Status).map(([k, v]) => [v, k]));
export function statusName(status: number): string {
  return statusNames.get(status) ?? 'UNKNOWN';
}
export function formatStatus(status: number): string {
  return `${statusName(status)} (0x${status.toString(16).padStart(4, '0')})`;
}

/** Virtio device status bits (virtio 1.x, 2.1). */
export const DeviceStatus = {
  ACKNOWLEDGE: 1,
  DRIVER: 2,
  DRIVER_OK: 4,
  FEATURES_OK: 8,
  DEVICE_NEEDS_RESET: 64,
  FAILED: 128,
} as const;

/** Virtio device ids (DECISIONS.md item 8). */
export const DeviceId = {
  Block: 2,
  Entropy: 4,
} as const;
export const DEFAULT_VENDOR_ID = 0x1af4;

/** Reserved virtio feature bits shared by every device type. */
export const VIRTIO_F_VERSION_1 = 32n;
