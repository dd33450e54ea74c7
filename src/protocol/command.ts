import { COMMAND_SIZE, Opcode } from './constants.js';
import { VOF_OP_GET_INLINE_DATA_SIZE } from './inline-data.js';
import { AUTH_FIELD_OFFSET, AUTH_FIELD_SIZE, VOF_OP_AUTH_NEGOTIATE, VOF_OP_AUTH_REPLY, authField, type AuthOpcode } from './auth.js';

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
  out.writeUInt16LE(cmd.opcode, 0);
  out.writeUInt16LE(cmd.commandId, 2);
  switch (cmd.opcode) {
    case Opcode.Connect:
      out.writeUInt16LE(cmd.deviceInstanceId, 4);
      out.writeUInt16LE(cmd.vqIndex, 6);
      out.writeUInt32LE(cmd.length, 8);
      out.writeUInt16LE(cmd.queueSize, 12);
      break;
    case Opcode.GetFeature:
    case Opcode.GetDeviceFeature:
      out.writeUInt32LE(cmd.featureSelect, 4);
      break;
    case Opcode.SetFeature:
    case Opcode.SetDriverFeature:
      out.writeUInt32LE(cmd.featureSelect, 4);
      out.writeBigUInt64LE(cmd.feature, 8);
      break;
    case Opcode.Vq:
      out.writeUInt32LE(cmd.outLength, 8);
      out.writeUInt32LE(cmd.inLength, 12);
      break;
    case Opcode.SetStatus:
      out.writeUInt32LE(cmd.status, 4);
      break;
    case Opcode.GetVqSize:
      out.writeUInt16LE(cmd.vqIndex, 4);
      break;
    case Opcode.GetConfig:
      out.writeUInt16LE(cmd.offset, 4);
      out.writeUInt8(cmd.bytes, 6);
      break;
    case Opcode.SetConfig:
      out.writeUInt16LE(cmd.offset, 4);
      out.writeUInt8(cmd.bytes, 6);
      out.writeBigUInt64LE(cmd.config, 8);
      break;
    case VOF_OP_AUTH_NEGOTIATE:
    case VOF_OP_AUTH_REPLY:
      authField(cmd.data).copy(out, AUTH_FIELD_OFFSET);
      break;
    default:
      break;
  }
  return out;
}

/** Decode a 16-byte command; reserved bytes are ignored. Throws only on a short buffer. */
export function decodeCommand(buf: Buffer): DecodedCommand {
  if (buf.length < COMMAND_SIZE) throw new RangeError(`command is ${buf.length} bytes, expected 16`);
  const opcode = buf.readUInt16LE(0);
  const commandId = buf.readUInt16LE(2);
  switch (opcode) {
    case Opcode.Connect:
      return {
        opcode,
        commandId,
        deviceInstanceId: buf.readUInt16LE(4),
        vqIndex: buf.readUInt16LE(6),
        length: buf.readUInt32LE(8),
        queueSize: buf.readUInt16LE(12),
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
      return { opcode, commandId, featureSelect: buf.readUInt32LE(4) };
    case Opcode.SetFeature:
    case Opcode.SetDriverFeature:
      return { opcode, commandId, featureSelect: buf.readUInt32LE(4), feature: buf.readBigUInt64LE(8) };
    case Opcode.Vq:
      return { opcode, commandId, outLength: buf.readUInt32LE(8), inLength: buf.readUInt32LE(12) };
    case Opcode.SetStatus:
      return { opcode, commandId, status: buf.readUInt32LE(4) };
    case Opcode.GetVqSize:
      return { opcode, commandId, vqIndex: buf.readUInt16LE(4) };
    case Opcode.GetConfig:
      return { opcode, commandId, offset: buf.readUInt16LE(4), bytes: buf.readUInt8(6) };
    case Opcode.SetConfig:
      return {
        opcode,
        commandId,
        offset: buf.readUInt16LE(4),
        bytes: buf.readUInt8(6),
        config: buf.readBigUInt64LE(8),
      };
    case VOF_OP_AUTH_NEGOTIATE:
    case VOF_OP_AUTH_REPLY:
      return { opcode, commandId, data: Buffer.from(buf.subarray(AUTH_FIELD_OFFSET, AUTH_FIELD_OFFSET + AUTH_FIELD_SIZE)) };
    default:
      return { opcode, commandId, unknown: true };
  }
}
