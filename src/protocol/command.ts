import { COMMAND_SIZE, Opcode } from './constants.js';
import { VOF_OP_GET_INLINE_DATA_SIZE } from './inline-data.js';
import { AUTH_COMMAND, VOF_OP_AUTH_NEGOTIATE, VOF_OP_AUTH_REPLY, authField, type AuthOpcode } from './auth.js';
import { COMMAND_HEADER } from './header.js';
import { bytes, fieldTable, getLE16, getLE32, getLE64, getU8, setLE16, setLE32, setLE64, setU8, u16, u32, u64, u8, view } from './fields.js';

export { COMMAND_HEADER };

/*
 * The field table of every 16-byte command (seed 003, "Commands Definition / Opcodes": one
 * `struct virtio_of_command_*` each; DECISIONS.md item 1: little-endian, no padding). The spec's
 * field names, in camelCase; the encoder, the decoder and the data path's single-field reads all
 * go through these.
 */

/** struct virtio_of_command_connect. */
export const CONNECT_COMMAND = fieldTable({
  ...COMMAND_HEADER,
  deviceInstanceId: u16(4),
  vqIndex: u16(6),
  /** Length of the Connect Body that follows (1024, or 0 to reuse the control queue's). */
  length: u32(8),
  queueSize: u16(12),
  reserved: bytes(14, 2),
});
/**
 * struct virtio_of_command_{disconnect, keepalive, get_keyed_num_descs, get_vendor_id,
 * get_device_id, reset_device, get_status}, vof's Get Inline Data Size: opcode and command id.
 */
export const BARE_COMMAND = fieldTable({ ...COMMAND_HEADER, reserved: bytes(4, 12) });
/** struct virtio_of_command_get_feature and _get_device_feature. */
export const GET_FEATURE_COMMAND = fieldTable({ ...COMMAND_HEADER, featureSelect: u32(4), reserved: bytes(8, 8) });
/** struct virtio_of_command_set_feature and _set_driver_feature. */
export const SET_FEATURE_COMMAND = fieldTable({ ...COMMAND_HEADER, featureSelect: u32(4), feature: u64(8) });
/** struct virtio_of_command_vq. */
export const VQ_COMMAND = fieldTable({ ...COMMAND_HEADER, reserved: bytes(4, 4), outLength: u32(8), inLength: u32(12) });
/** struct virtio_of_command_set_status. */
export const SET_STATUS_COMMAND = fieldTable({ ...COMMAND_HEADER, status: u32(4), reserved: bytes(8, 8) });
/** struct virtio_of_command_get_vq_size. */
export const GET_VQ_SIZE_COMMAND = fieldTable({ ...COMMAND_HEADER, vqIndex: u16(4), reserved: bytes(6, 10) });
/** struct virtio_of_command_get_config. */
export const GET_CONFIG_COMMAND = fieldTable({ ...COMMAND_HEADER, offset: u16(4), bytes: u8(6), reserved: bytes(7, 9) });
/** struct virtio_of_command_set_config. */
export const SET_CONFIG_COMMAND = fieldTable({ ...COMMAND_HEADER, offset: u16(4), bytes: u8(6), reserved: u8(7), config: u64(8) });

/** Decoded 16-byte Virtio-oF commands, one variant per struct of the seed. */

export interface ConnectCommand {
  readonly opcode: typeof Opcode.Connect;
  readonly commandId: number;
  readonly deviceInstanceId: number;
  readonly vqIndex: number;
  /** Length of the Connect Body that follows (1024, or 0 to reuse the control queue's). */
  readonly length: number;
  /** 0 means the largest size the target supports. */
  readonly queueSize: number;
}

/** Commands that carry nothing but opcode and command id. */
export interface BareCommand {
  readonly opcode:
    | typeof Opcode.Disconnect
    | typeof Opcode.Keepalive
    | typeof Opcode.GetKeyedNumDescs
    | typeof Opcode.GetVendorId
    | typeof Opcode.GetDeviceId
    | typeof Opcode.ResetDevice
    | typeof Opcode.GetStatus
    | typeof VOF_OP_GET_INLINE_DATA_SIZE;
  readonly commandId: number;
}

export interface GetFeatureCommand {
  readonly opcode: typeof Opcode.GetFeature | typeof Opcode.GetDeviceFeature;
  readonly commandId: number;
  readonly featureSelect: number;
}

export interface SetFeatureCommand {
  readonly opcode: typeof Opcode.SetFeature | typeof Opcode.SetDriverFeature;
  readonly commandId: number;
  readonly featureSelect: number;
  readonly feature: bigint;
}

export interface VqCommand {
  readonly opcode: typeof Opcode.Vq;
  readonly commandId: number;
  readonly outLength: number;
  readonly inLength: number;
}

export interface SetStatusCommand {
  readonly opcode: typeof Opcode.SetStatus;
  readonly commandId: number;
  readonly status: number;
}

export interface GetVqSizeCommand {
  readonly opcode: typeof Opcode.GetVqSize;
  readonly commandId: number;
  readonly vqIndex: number;
}

export interface GetConfigCommand {
  readonly opcode: typeof Opcode.GetConfig;
  readonly commandId: number;
  readonly offset: number;
  readonly bytes: number;
}

export interface SetConfigCommand {
  readonly opcode: typeof Opcode.SetConfig;
  readonly commandId: number;
  readonly offset: number;
  readonly bytes: number;
  readonly config: bigint;
}

/** vof's AUTH_NEGOTIATE (data: nonce_i) and AUTH_REPLY (data: response_i), docs/PROTOCOL.md. */
export interface AuthCommand {
  readonly opcode: AuthOpcode;
  readonly commandId: number;
  /** 12 bytes. */
  readonly data: Buffer;
}

/** An opcode this implementation does not know; the target answers ENOCMD. */
export interface UnknownCommand {
  readonly opcode: number;
  readonly commandId: number;
  readonly unknown: true;
}

export type Command =
  | ConnectCommand
  | BareCommand
  | GetFeatureCommand
  | SetFeatureCommand
  | VqCommand
  | SetStatusCommand
  | GetVqSizeCommand
  | GetConfigCommand
  | SetConfigCommand
  | AuthCommand;

export type DecodedCommand = Command | UnknownCommand;

export function isUnknownCommand(c: DecodedCommand): c is UnknownCommand {
  return (c as UnknownCommand).unknown === true;
}

/** Encode into a fresh 16-byte buffer; reserved bytes are zero. */
export function encodeCommand(cmd: Command, out: Buffer = Buffer.alloc(COMMAND_SIZE)): Buffer {
  if (out.length < COMMAND_SIZE) throw new RangeError('command buffer shorter than 16 bytes');
  out.fill(0, 0, COMMAND_SIZE);
  setLE16(out, COMMAND_HEADER.opcode, cmd.opcode);
  setLE16(out, COMMAND_HEADER.commandId, cmd.commandId);
  switch (cmd.opcode) {
    case Opcode.Connect:
      setLE16(out, CONNECT_COMMAND.deviceInstanceId, cmd.deviceInstanceId);
      setLE16(out, CONNECT_COMMAND.vqIndex, cmd.vqIndex);
      setLE32(out, CONNECT_COMMAND.length, cmd.length);
      setLE16(out, CONNECT_COMMAND.queueSize, cmd.queueSize);
      break;
    case Opcode.GetFeature:
    case Opcode.GetDeviceFeature:
      setLE32(out, GET_FEATURE_COMMAND.featureSelect, cmd.featureSelect);
      break;
    case Opcode.SetFeature:
    case Opcode.SetDriverFeature:
      setLE32(out, SET_FEATURE_COMMAND.featureSelect, cmd.featureSelect);
      setLE64(out, SET_FEATURE_COMMAND.feature, cmd.feature);
      break;
    case Opcode.Vq:
      setLE32(out, VQ_COMMAND.outLength, cmd.outLength);
      setLE32(out, VQ_COMMAND.inLength, cmd.inLength);
      break;
    case Opcode.SetStatus:
      setLE32(out, SET_STATUS_COMMAND.status, cmd.status);
      break;
    case Opcode.GetVqSize:
      setLE16(out, GET_VQ_SIZE_COMMAND.vqIndex, cmd.vqIndex);
      break;
    case Opcode.GetConfig:
      setLE16(out, GET_CONFIG_COMMAND.offset, cmd.offset);
      setU8(out, GET_CONFIG_COMMAND.bytes, cmd.bytes);
      break;
    case Opcode.SetConfig:
      setLE16(out, SET_CONFIG_COMMAND.offset, cmd.offset);
      setU8(out, SET_CONFIG_COMMAND.bytes, cmd.bytes);
      setLE64(out, SET_CONFIG_COMMAND.config, cmd.config);
      break;
    case VOF_OP_AUTH_NEGOTIATE:
    case VOF_OP_AUTH_REPLY:
      authField(cmd.data).copy(out, AUTH_COMMAND.data.offset);
      break;
    default:
      break;
  }
  return out;
}

/** Decode a 16-byte command; reserved bytes are ignored. Throws only on a short buffer. */
export function decodeCommand(buf: Buffer): DecodedCommand {
  if (buf.length < COMMAND_SIZE) throw new RangeError(`command is ${buf.length} bytes, expected 16`);
  const opcode = getLE16(buf, COMMAND_HEADER.opcode);
  const commandId = getLE16(buf, COMMAND_HEADER.commandId);
  switch (opcode) {
    case Opcode.Connect:
      return {
        opcode,
        commandId,
        deviceInstanceId: getLE16(buf, CONNECT_COMMAND.deviceInstanceId),
        vqIndex: getLE16(buf, CONNECT_COMMAND.vqIndex),
        length: getLE32(buf, CONNECT_COMMAND.length),
        queueSize: getLE16(buf, CONNECT_COMMAND.queueSize),
      };
    case Opcode.Disconnect:
    case Opcode.Keepalive:
    case Opcode.GetKeyedNumDescs:
    case Opcode.GetVendorId:
    case Opcode.GetDeviceId:
    case Opcode.ResetDevice:
    case Opcode.GetStatus:
    case VOF_OP_GET_INLINE_DATA_SIZE:
      return { opcode, commandId };
    case Opcode.GetFeature:
    case Opcode.GetDeviceFeature:
      return { opcode, commandId, featureSelect: getLE32(buf, GET_FEATURE_COMMAND.featureSelect) };
    case Opcode.SetFeature:
    case Opcode.SetDriverFeature:
      return {
        opcode,
        commandId,
        featureSelect: getLE32(buf, SET_FEATURE_COMMAND.featureSelect),
        feature: getLE64(buf, SET_FEATURE_COMMAND.feature),
      };
    case Opcode.Vq:
      return { opcode, commandId, outLength: getLE32(buf, VQ_COMMAND.outLength), inLength: getLE32(buf, VQ_COMMAND.inLength) };
    case Opcode.SetStatus:
      return { opcode, commandId, status: getLE32(buf, SET_STATUS_COMMAND.status) };
    case Opcode.GetVqSize:
      return { opcode, commandId, vqIndex: getLE16(buf, GET_VQ_SIZE_COMMAND.vqIndex) };
    case Opcode.GetConfig:
      return { opcode, commandId, offset: getLE16(buf, GET_CONFIG_COMMAND.offset), bytes: getU8(buf, GET_CONFIG_COMMAND.bytes) };
    case Opcode.SetConfig:
      return {
        opcode,
        commandId,
        offset: getLE16(buf, SET_CONFIG_COMMAND.offset),
        bytes: getU8(buf, SET_CONFIG_COMMAND.bytes),
        config: getLE64(buf, SET_CONFIG_COMMAND.config),
      };
    case VOF_OP_AUTH_NEGOTIATE:
    case VOF_OP_AUTH_REPLY:
      return { opcode, commandId, data: Buffer.from(view(buf, AUTH_COMMAND.data)) };
    default:
      return { opcode, commandId, unknown: true };
  }
}
