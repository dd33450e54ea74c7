import { KEYED_DESCRIPTOR_SIZE } from './constants.js';

/** struct virtio_of_keyed_desc { le64 addr; le32 length; le32 key; } (DECISIONS.md item 4). */
export interface KeyedDescriptor {
  readonly addr: bigint;
  readonly length: number;
  readonly key: number;
}

export function encodeKeyedDescriptor(d: KeyedDescriptor, out: Buffer, offset = 0): void {
  out.writeBigUInt64LE(d.addr, offset);
  out.writeUInt32LE(d.length, offset + 8);
  out.writeUInt32LE(d.key >>> 0, offset + 12);
}

/**
 * The same record from its fields as 32-bit numbers (the address in two halves), for the data
 * path: no object and no BigInt per descriptor.
 */
export function encodeKeyedDescriptorWords(out: Buffer, offset: number, addrLow: number, addrHigh: number, length: number, key: number): void {
  out.writeUInt32LE(addrLow >>> 0, offset);
  out.writeUInt32LE(addrHigh >>> 0, offset + 4);
  out.writeUInt32LE(length >>> 0, offset + 8);
  out.writeUInt32LE(key >>> 0, offset + 12);
}

export function decodeKeyedDescriptor(buf: Buffer, offset = 0): KeyedDescriptor {
  return {
    addr: buf.readBigUInt64LE(offset),
    length: buf.readUInt32LE(offset + 8),
    key: buf.readUInt32LE(offset + 12),
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
    const length = buf.readUInt32LE(offset + i * KEYED_DESCRIPTOR_SIZE + 8);
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
