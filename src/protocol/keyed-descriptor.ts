import { KEYED_DESCRIPTOR_SIZE } from './constants.js';
import { fieldTable, getLE32, getLE64, setLE32, setLE64, u32, u64 } from './fields.js';

/** struct virtio_of_keyed_desc { le64 addr; le32 length; le32 key; } (DECISIONS.md item 4). */
export const KEYED_DESCRIPTOR = fieldTable({ addr: u64(0), length: u32(8), key: u32(12) });

/*
 * The data path's reads of the descriptor at byte `at` of `buf`: numbers only, the address in
 * two 32-bit halves (what a work request takes), so no BigInt and no object per descriptor.
 */
export function descriptorAddrLow(buf: Buffer, at: number): number {
  return buf.readUInt32LE(at + KEYED_DESCRIPTOR.addr.offset);
}
export function descriptorAddrHigh(buf: Buffer, at: number): number {
  return buf.readUInt32LE(at + KEYED_DESCRIPTOR.addr.offset + 4);
}
export function descriptorLength(buf: Buffer, at: number): number {
  return getLE32(buf, KEYED_DESCRIPTOR.length, at);
}
export function descriptorKey(buf: Buffer, at: number): number {
  return getLE32(buf, KEYED_DESCRIPTOR.key, at);
}

export interface KeyedDescriptor {
  readonly addr: bigint;
  readonly length: number;
  readonly key: number;
}

export function encodeKeyedDescriptor(d: KeyedDescriptor, out: Buffer, offset = 0): void {
  setLE64(out, KEYED_DESCRIPTOR.addr, d.addr, offset);
  setLE32(out, KEYED_DESCRIPTOR.length, d.length, offset);
  setLE32(out, KEYED_DESCRIPTOR.key, d.key >>> 0, offset);
}

/**
 * The same record from its fields as 32-bit numbers (the address in two halves), for the data
 * path: no object and no BigInt per descriptor.
 */
export function encodeKeyedDescriptorWords(out: Buffer, offset: number, addrLow: number, addrHigh: number, length: number, key: number): void {
  out.writeUInt32LE(addrLow >>> 0, offset + KEYED_DESCRIPTOR.addr.offset);
  out.writeUInt32LE(addrHigh >>> 0, offset + KEYED_DESCRIPTOR.addr.offset + 4);
  setLE32(out, KEYED_DESCRIPTOR.length, length >>> 0, offset);
  setLE32(out, KEYED_DESCRIPTOR.key, key >>> 0, offset);
}

export function decodeKeyedDescriptor(buf: Buffer, offset = 0): KeyedDescriptor {
  return {
    addr: getLE64(buf, KEYED_DESCRIPTOR.addr, offset),
    length: getLE32(buf, KEYED_DESCRIPTOR.length, offset),
    key: getLE32(buf, KEYED_DESCRIPTOR.key, offset),
  };
}

/** The descriptors after a 16-byte VQ command in one keyed request PDU. */
export function decodeKeyedDescriptors(buf: Buffer, offset: number): KeyedDescriptor[] {
  const n = Math.floor((buf.length - offset) / KEYED_DESCRIPTOR_SIZE);
  const out: KeyedDescriptor[] = new Array(n);
  for (let i = 0; i < n; i++) out[i] = decodeKeyedDescriptor(buf, offset + i * KEYED_DESCRIPTOR_SIZE);
  return out;
}

export type DescriptorProblem =
  | 'none'
  | 'no descriptors'
  | 'too many descriptors'
  | 'trailing bytes'
  | 'lengths do not add up to out_length + in_length'
  | 'descriptor straddles the readable/writable boundary';

/**
 * Check a keyed request against DECISIONS.md item 4 — 1 ≤ N ≤ max, lengths sum to out+in, no
 * descriptor straddles the boundary at out_length (a zero-length descriptor is legal anywhere
 * and moves no bytes) — over `n` descriptors as they came on the wire at `offset` of `buf`: the
 * target keeps the bytes, it decodes no objects.
 */
export function validateKeyedDescriptorBytes(buf: Buffer, offset: number, n: number, outLength: number, inLength: number, maxDescriptors: number): DescriptorProblem {
  if (n === 0) return 'no descriptors';
  if (n > maxDescriptors) return 'too many descriptors';
  let pos = 0;
  for (let i = 0; i < n; i++) {
    const length = descriptorLength(buf, offset + i * KEYED_DESCRIPTOR_SIZE);
    if (pos < outLength && pos + length > outLength) return 'descriptor straddles the readable/writable boundary';
    pos += length;
  }
  if (pos !== outLength + inLength) return 'lengths do not add up to out_length + in_length';
  return 'none';
}

/** The same rule over decoded descriptors (tools and tests). */
export function validateKeyedDescriptors(
  descs: readonly KeyedDescriptor[],
  outLength: number,
  inLength: number,
  maxDescriptors: number,
): DescriptorProblem {
  const buf = Buffer.alloc(descs.length * KEYED_DESCRIPTOR_SIZE);
  descs.forEach((d, i) => encodeKeyedDescriptor(d, buf, i * KEYED_DESCRIPTOR_SIZE));
  return validateKeyedDescriptorBytes(buf, 0, descs.length, outLength, inLength, maxDescriptors);
}
