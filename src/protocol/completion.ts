import {
  COMMAND_ID_CONFIG_CHANGE,
  COMMAND_ID_KEEPALIVE,
  COMPLETION_SIZE,
  Opcode,
  Status,
} from './constants.js';
import { VOF_OP_GET_INLINE_DATA_SIZE } from './inline-data.js';
import { AUTH_FIELD_OFFSET, AUTH_FIELD_SIZE, VOF_OP_AUTH_NEGOTIATE, VOF_OP_AUTH_REPLY } from './auth.js';

/**
 * 16-byte Virtio-oF completions. Every completion starts with le16 status, le16 command_id;
 * what follows depends on the opcode of the command it answers, so decoding needs that opcode.
 */

function header(status: number, commandId: number, into?: Buffer): Buffer {
  const b = into === undefined ? Buffer.alloc(COMPLETION_SIZE) : into.fill(0, 0, COMPLETION_SIZE);
  b.writeUInt16LE(status, 0);
  b.writeUInt16LE(commandId, 2);
  return b;
}

/** Disconnect, Keepalive, Set Feature, Reset Device, Set Status, Set Driver Feature, Set Config, and any error. */
export function encodeBareCompletion(status: number, commandId: number): Buffer {
  return header(status, commandId);
}

export function encodeConnectCompletion(status: number, commandId: number, deviceInstanceId: number): Buffer {
  const b = header(status, commandId);
  b.writeUInt16LE(deviceInstanceId, 4);
  return b;
}

/** Get Feature and Get Device Feature: le64 feature at offset 8. */
export function encodeFeatureCompletion(status: number, commandId: number, feature: bigint): Buffer {
  const b = header(status, commandId);
  b.writeBigUInt64LE(feature, 8);
  return b;
}

export function encodeKeyedNumDescsCompletion(status: number, commandId: number, descs: number): Buffer {
  const b = header(status, commandId);
  b.writeUInt8(descs, 4);
  return b;
}

/** Get Vendor ID, Get Device ID, Get Status, vof's Get Inline Data Size: le32 at offset 4. */
export function encodeU32Completion(status: number, commandId: number, value: number, into?: Buffer): Buffer {
  const b = header(status, commandId, into);
  b.writeUInt32LE(value >>> 0, 4);
  return b;
}

/**
 * `into`: a 16-byte buffer to encode into (overwritten)
 * instead of a fresh one, so that a target slot answers every command with the same buffer.
 */
export function encodeVqCompletion(status: number, commandId: number, length: number, into?: Buffer): Buffer {
  return encodeU32Completion(status, commandId, length, into);
}

export function encodeVqSizeCompletion(status: number, commandId: number, size: number): Buffer {
  const b = header(status, commandId);
  b.writeUInt16LE(size, 4);
  return b;
}

export function encodeGetConfigCompletion(
  status: number,
  commandId: number,
  generation: number,
  config: bigint,
): Buffer {
  const b = header(status, commandId);
  b.writeUInt32LE(generation >>> 0, 4);
  b.writeBigUInt64LE(config, 8);
  return b;
}

export function encodeConfigChangeCompletion(generation: number): Buffer {
  const b = header(Status.SUCCESS, COMMAND_ID_CONFIG_CHANGE);
  b.writeUInt32LE(generation >>> 0, 4);
  return b;
}

export function encodeKeepaliveCompletion(): Buffer {
  return header(Status.SUCCESS, COMMAND_ID_KEEPALIVE);
}

export type DecodedCompletion =
  | { readonly kind: 'bare'; readonly status: number; readonly commandId: number }
  | { readonly kind: 'connect'; readonly status: number; readonly commandId: number; readonly deviceInstanceId: number }
  | { readonly kind: 'feature'; readonly status: number; readonly commandId: number; readonly feature: bigint }
  | { readonly kind: 'keyedNumDescs'; readonly status: number; readonly commandId: number; readonly descs: number }
  | { readonly kind: 'u32'; readonly status: number; readonly commandId: number; readonly value: number }
  | { readonly kind: 'vq'; readonly status: number; readonly commandId: number; readonly length: number }
  | { readonly kind: 'vqSize'; readonly status: number; readonly commandId: number; readonly size: number }
  | { readonly kind: 'auth'; readonly status: number; readonly commandId: number; readonly data: Buffer }
  | {
      readonly kind: 'config';
      readonly status: number;
      readonly commandId: number;
      readonly generation: number;
      readonly config: bigint;
    };

/** Config Change event: the generation the target reports. */
export function decodeConfigChangeGeneration(buf: Buffer): number {
  return buf.readUInt32LE(4);
}

/** Decode the completion of a command with the given opcode. Reserved bytes are ignored. */
export function decodeCompletion(buf: Buffer, opcode: number): DecodedCompletion {
  if (buf.length < COMPLETION_SIZE) throw new RangeError(`completion is ${buf.length} bytes, expected 16`);
  const status = buf.readUInt16LE(0);
  const commandId = buf.readUInt16LE(2);
  switch (opcode) {
    case Opcode.Connect:
      return { kind: 'connect', status, commandId, deviceInstanceId: buf.readUInt16LE(4) };
    case Opcode.GetFeature:
    case Opcode.GetDeviceFeature:
      return { kind: 'feature', status, commandId, feature: buf.readBigUInt64LE(8) };
    case Opcode.GetKeyedNumDescs:
      return { kind: 'keyedNumDescs', status, commandId, descs: buf.readUInt8(4) };
    case Opcode.GetVendorId:
    case Opcode.GetDeviceId:
    case Opcode.GetStatus:
    case VOF_OP_GET_INLINE_DATA_SIZE:
      return { kind: 'u32', status, commandId, value: buf.readUInt32LE(4) };
    case Opcode.Vq:
      return { kind: 'vq', status, commandId, length: buf.readUInt32LE(4) };
    case Opcode.GetVqSize:
      return { kind: 'vqSize', status, commandId, size: buf.readUInt16LE(4) };
    case Opcode.GetConfig:
      return {
        kind: 'config',
        status,
        commandId,
        generation: buf.readUInt32LE(4),
        config: buf.readBigUInt64LE(8),
      };
    case VOF_OP_AUTH_NEGOTIATE:
    case VOF_OP_AUTH_REPLY:
      return { kind: 'auth', status, commandId, data: Buffer.from(buf.subarray(AUTH_FIELD_OFFSET, AUTH_FIELD_OFFSET + AUTH_FIELD_SIZE)) };
    default:
      return { kind: 'bare', status, commandId };
  }
}
