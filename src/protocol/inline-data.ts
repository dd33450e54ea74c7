import { COMMAND_SIZE, KEYED_DESCRIPTOR_SIZE } from './constants.js';
import { getLE32 } from './fields.js';
// command.js imports this module's opcode: neither uses the other's bindings while it loads.
import { VQ_COMMAND } from './command.js';
import { decodeKeyedDescriptor, encodeKeyedDescriptor, type KeyedDescriptor } from './keyed-descriptor.js';

/**
 * vof's inline-data extension for keyed (RDMA) virtqueues (docs/PROTOCOL.md "Inline data on
 * keyed queues"). Once VOF_F_INLINE_DATA has been set on the control queue, a VQ request whose
 * out_length is at most the agreed inline size S carries its device-readable bytes in the same
 * SEND, after keyed descriptors that describe only the device-writable part:
 *
 *     [16-byte VQ command][N × 16-byte keyed descriptor][out_length readable bytes]
 *
 * A request with out_length > S, and every request of a peer that did not negotiate the bit,
 * has the seed's layout (DECISIONS.md item 4). Pure codec: no transport here.
 */

/** Virtio-oF feature bit (Get/Set Feature, window 0): inline device-readable bytes. */
export const VOF_F_INLINE_DATA = 56n;

/**
 * Get Inline Data Size (control queue), in the seed's keyed-transport opcode group (0x01xx,
 * where Get Keyed Number Descriptors is 0x0100), at its top: answered with le32 size.
 */
export const VOF_OP_GET_INLINE_DATA_SIZE = 0x01f0;

/** Largest inline size a target may announce (bounds every receive buffer). */
export const MAX_INLINE_DATA_SIZE = 64 * 1024;
/**
 * vof target default: a 4 KiB virtio-blk write (16-byte header + 4096), as nvmet-rdma's default
 * 4 KiB of inline data. Every receive buffer of every RDMA connection pays for S, so more is
 * an operator's choice (--inline-data).
 */
export const DEFAULT_INLINE_DATA_SIZE = 16 + 4096;

/** Does the readable part of a VQ request travel inline? (S = 0: not negotiated.) */
export function carriesInline(inlineSize: number, outLength: number): boolean {
  return inlineSize > 0 && outLength <= inlineSize;
}

/** The largest inline request message: command, `maxDescriptors` descriptors, S bytes. */
export function inlineRequestMessageSize(maxDescriptors: number, inlineSize: number): number {
  return COMMAND_SIZE + maxDescriptors * KEYED_DESCRIPTOR_SIZE + inlineSize;
}

/** Why an announced inline size cannot be used (null when it can). */
export function inlineSizeProblem(size: number): string | null {
  if (!Number.isInteger(size) || size < 1 || size > MAX_INLINE_DATA_SIZE) {
    return `inline data size ${size} is outside 1..${MAX_INLINE_DATA_SIZE}`;
  }
  return null;
}

/**
 * The pieces of one inline request message, in wire order, for a transport that copies them
 * into its send buffer: the command, the writable part's descriptors, the readable bytes.
 */
export function inlineRequestParts(command: Buffer, writable: readonly KeyedDescriptor[], readable: readonly Buffer[]): Buffer[] {
  const descs = Buffer.allocUnsafe(writable.length * KEYED_DESCRIPTOR_SIZE);
  writable.forEach((d, i) => encodeKeyedDescriptor(d, descs, i * KEYED_DESCRIPTOR_SIZE));
  return [command, descs, ...readable.filter((b) => b.length > 0)];
}

export interface InlineRequest {
  /** Descriptors of the device-writable part only (may be empty when in_length is 0). */
  readonly writable: KeyedDescriptor[];
  /** The device-readable bytes: a view into the message (copy it before the buffer is reused). */
  readonly readable: Buffer;
  /** Why the request is malformed (answered EOUTVQBUF), or null. */
  readonly problem: string | null;
}

/**
 * Split an inline request message (`msg` starts with the 16-byte VQ command). N = (length −
 * 16 − out_length) / 16 must be a whole number, at most `maxDescriptors`, and the descriptor
 * lengths must add up to in_length.
 */
export function decodeInlineRequest(msg: Buffer, maxDescriptors: number): InlineRequest {
  const outLength = getLE32(msg, VQ_COMMAND.outLength);
  const inLength = getLE32(msg, VQ_COMMAND.inLength);
  const after = msg.length - COMMAND_SIZE;
  const bad = (problem: string): InlineRequest => ({ writable: [], readable: Buffer.alloc(0), problem });
  if (after < outLength) return bad(`inline request carries ${after} bytes after the command, fewer than out_length ${outLength}`);
  const descBytes = after - outLength;
  if (descBytes % KEYED_DESCRIPTOR_SIZE !== 0) return bad(`${descBytes} bytes between the command and the inline data are not whole keyed descriptors`);
  const n = descBytes / KEYED_DESCRIPTOR_SIZE;
  if (n > maxDescriptors) return bad(`too many descriptors (${n}, limit ${maxDescriptors})`);
  const writable: KeyedDescriptor[] = new Array(n);
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const d = decodeKeyedDescriptor(msg, COMMAND_SIZE + i * KEYED_DESCRIPTOR_SIZE);
    writable[i] = d;
    sum += d.length;
  }
  if (sum !== inLength) return bad(`descriptor lengths add up to ${sum}, not in_length ${inLength}`);
  const at = COMMAND_SIZE + descBytes;
  return { writable, readable: msg.subarray(at, at + outLength), problem: null };
}
