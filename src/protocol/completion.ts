import {
  COMMAND_ID_CONFIG_CHANGE,
  COMMAND_ID_KEEPALIVE,
  COMPLETION_SIZE,
  Opcode,
  Status,
} from './constants.js';
import { VOF_OP_GET_INLINE_DATA_SIZE } from './inline-data.js';
import { AUTH_COMPLETION, VOF_OP_AUTH_NEGOTIATE, VOF_OP_AUTH_REPLY } from './auth.js';
import { COMPLETION_HEADER } from './header.js';
import { bytes, fieldTable, getLE16, getLE32, getLE64, getU8, setLE16, setLE32, setLE64, setU8, u16, u32, u64, u8, view } from './fields.js';

export { COMPLETION_HEADER };

/**
 * 16-byte Virtio-oF completions. Every completion starts with le16 status, le16 command_id;
 * what follows depends on the opcode of the command it answers, so decoding needs that opcode.
 *
 * The field table of each completion (seed 003, one `struct virtio_of_completion_*` each;
 * DECISIONS.md item 1). The encoders below and decodeCompletion both use them.
 */

/**
 * struct virtio_of_completion_{disconnect, keepalive, set_feature, reset_device, set_status,
 * set_driver_feature, set_config}, and every error: status and command id.
 */
export const BARE_COMPLETION = fieldTable({ ...COMPLETION_HEADER, reserved: bytes(4, 12) });
/** struct virtio_of_completion_connect. */
export const CONNECT_COMPLETION = fieldTable({ ...COMPLETION_HEADER, deviceInstanceId: u16(4), reserved: bytes(6, 10) });
/** struct virtio_of_completion_get_feature and _get_device_feature. */
export const FEATURE_COMPLETION = fieldTable({ ...COMPLETION_HEADER, reserved: bytes(4, 4), feature: u64(8) });
/** struct virtio_of_completion_get_keyed_num_descs. */
export const KEYED_NUM_DESCS_COMPLETION = fieldTable({ ...COMPLETION_HEADER, descs: u8(4), reserved: bytes(5, 11) });
/**
 * struct virtio_of_completion_get_vendor_id (vendor_id), _get_device_id (device_id),
 * _get_status (dev_status) and vof's _get_inline_data_size (size, docs/PROTOCOL.md): one
 * layout, a le32 value at offset 4.
 */
export const U32_COMPLETION = fieldTable({ ...COMPLETION_HEADER, value: u32(4), reserved: bytes(8, 8) });
/** struct virtio_of_completion_vq: `length`, the device-writable bytes the device wrote. */
export const VQ_COMPLETION = fieldTable({ ...COMPLETION_HEADER, length: u32(4), reserved: bytes(8, 8) });
/** struct virtio_of_completion_get_vq_size. */
export const GET_VQ_SIZE_COMPLETION = fieldTable({ ...COMPLETION_HEADER, size: u16(4), reserved: bytes(6, 10) });
/** struct virtio_of_completion_get_config. */
export const GET_CONFIG_COMPLETION = fieldTable({ ...COMPLETION_HEADER, generation: u32(4), config: u64(8) });
/** struct virtio_of_completion_config_change (command id 0xfffe). */
export const CONFIG_CHANGE_COMPLETION = fieldTable({ ...COMPLETION_HEADER, generation: u32(4), reserved: bytes(8, 8) });

function header(status: number, commandId: number, into?: Buffer): Buffer {
  const b = into === undefined ? Buffer.alloc(COMPLETION_SIZE) : into.fill(0, 0, COMPLETION_SIZE);
  setLE16(b, COMPLETION_HEADER.status, status);
  setLE16(b, COMPLETION_HEADER.commandId, commandId);
  return b;
}

/** Disconnect, Keepalive, Set Feature, Reset Device, Set Status, Set Driver Feature, Set Config, and any error. */
export function encodeBareCompletion(status: number, commandId: number): Buffer {
  return header(status, commandId);
}

export function encodeConnectCompletion(status: number, commandId: number, deviceInstanceId: number): Buffer {
  const b = header(status, commandId);
  setLE16(b, CONNECT_COMPLETION.deviceInstanceId, deviceInstanceId);
  return b;
}

/** Get Feature and Get Device Feature: le64 feature at offset 8. */
export function encodeFeatureCompletion(status: number, commandId: number, feature: bigint): Buffer {
  const b = header(status, commandId);
  setLE64(b, FEATURE_COMPLETION.feature, feature);
  return b;
}

export function encodeKeyedNumDescsCompletion(status: number, commandId: number, descs: number): Buffer {
  const b = header(status, commandId);
  setU8(b, KEYED_NUM_DESCS_COMPLETION.descs, descs);
  return b;
}

/** Get Vendor ID, Get Device ID, Get Status, vof's Get Inline Data Size: le32 at offset 4. */
export function encodeU32Completion(status: number, commandId: number, value: number, into?: Buffer): Buffer {
  const b = header(status, commandId, into);
  setLE32(b, U32_COMPLETION.value, value >>> 0);
  return b;
}

/**
 * `into`: a 16-byte buffer to encode into (overwritten)
 * instead of a fresh one, so that a target slot answers every command with the same buffer.
 */
export function encodeVqCompletion(status: number, commandId: number, length: number, into?: Buffer): Buffer {
  const b = header(status, commandId, into);
  setLE32(b, VQ_COMPLETION.length, length >>> 0);
  return b;
}

export function encodeVqSizeCompletion(status: number, commandId: number, size: number): Buffer {
  const b = header(status, commandId);
  setLE16(b, GET_VQ_SIZE_COMPLETION.size, size);
  return b;
}

export function encodeGetConfigCompletion(
  status: number,
  commandId: number,
  generation: number,
  config: bigint,
): Buffer {
  const b = header(status, commandId);
  setLE32(b, GET_CONFIG_COMPLETION.generation, generation >>> 0);
  setLE64(b, GET_CONFIG_COMPLETION.config, config);
  return b;
}

export function encodeConfigChangeCompletion(generation: number): Buffer {
  const b = header(Status.SUCCESS, COMMAND_ID_CONFIG_CHANGE);
  setLE32(b, CONFIG_CHANGE_COMPLETION.generation, generation >>> 0);
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
  return getLE32(buf, CONFIG_CHANGE_COMPLETION.generation);
}

/** Decode the completion of a command with the given opcode. Reserved bytes are ignored. */
export function decodeCompletion(buf: Buffer, opcode: number): DecodedCompletion {
  if (buf.length < COMPLETION_SIZE) throw new RangeError(`completion is ${buf.length} bytes, expected 16`);
  const status = getLE16(buf, COMPLETION_HEADER.status);
  const commandId = getLE16(buf, COMPLETION_HEADER.commandId);
  switch (opcode) {
    case Opcode.Connect:
      return { kind: 'connect', status, commandId, deviceInstanceId: getLE16(buf, CONNECT_COMPLETION.deviceInstanceId) };
    case Opcode.GetFeature:
    case Opcode.GetDeviceFeature:
      return { kind: 'feature', status, commandId, feature: getLE64(buf, FEATURE_COMPLETION.feature) };
    case Opcode.GetKeyedNumDescs:
      return { kind: 'keyedNumDescs', status, commandId, descs: getU8(buf, KEYED_NUM_DESCS_COMPLETION.descs) };
    case Opcode.GetVendorId:
    case Opcode.GetDeviceId:
    case Opcode.GetStatus:
    case VOF_OP_GET_INLINE_DATA_SIZE:
      return { kind: 'u32', status, commandId, value: getLE32(buf, U32_COMPLETION.value) };
    case Opcode.Vq:
      return { kind: 'vq', status, commandId, length: getLE32(buf, VQ_COMPLETION.length) };
    case Opcode.GetVqSize:
      return { kind: 'vqSize', status, commandId, size: getLE16(buf, GET_VQ_SIZE_COMPLETION.size) };
    case Opcode.GetConfig:
      return {
        kind: 'config',
        status,
        commandId,
        generation: getLE32(buf, GET_CONFIG_COMPLETION.generation),
        config: getLE64(buf, GET_CONFIG_COMPLETION.config),
      };
    case VOF_OP_AUTH_NEGOTIATE:
    case VOF_OP_AUTH_REPLY:
      return { kind: 'auth', status, commandId, data: Buffer.from(view(buf, AUTH_COMPLETION.data)) };
    default:
      return { kind: 'bare', status, commandId };
  }
}
