/**
 * Field tables: one per wire record, `name → offset, width`, stated once next to the record's
 * spec reference and used by both its encoder and its decoder (and by the named accessors the
 * data path reads single fields with). A table is a frozen object of constant entries built
 * once at module load; the helpers below are small monomorphic functions over one entry, so
 * using a table costs no iteration, object or closure per call — what the hand-written offsets
 * cost.
 *
 * Byte order is the record's: Virtio-oF and vof's records are little-endian (DECISIONS.md item
 * 1), NBD's are big-endian (network order): `le*`/`be*` helpers, one per width. The entry's
 * `kind` makes TypeScript refuse a helper of the wrong width.
 */

export interface U8Field {
  readonly kind: 'u8';
  readonly offset: number;
  readonly width: 1;
}
export interface U16Field {
  readonly kind: 'u16';
  readonly offset: number;
  readonly width: 2;
}
export interface U32Field {
  readonly kind: 'u32';
  readonly offset: number;
  readonly width: 4;
}
export interface U64Field {
  readonly kind: 'u64';
  readonly offset: number;
  readonly width: 8;
}
/** A byte array: a string, a nonce, reserved bytes. */
export interface BytesField {
  readonly kind: 'bytes';
  readonly offset: number;
  readonly width: number;
}
export type Field = U8Field | U16Field | U32Field | U64Field | BytesField;

/** A record's field table. */
export type FieldTable = Readonly<Record<string, Field>>;

export const u8 = (offset: number): U8Field => Object.freeze({ kind: 'u8', offset, width: 1 });
export const u16 = (offset: number): U16Field => Object.freeze({ kind: 'u16', offset, width: 2 });
export const u32 = (offset: number): U32Field => Object.freeze({ kind: 'u32', offset, width: 4 });
export const u64 = (offset: number): U64Field => Object.freeze({ kind: 'u64', offset, width: 8 });
export const bytes = (offset: number, width: number): BytesField => Object.freeze({ kind: 'bytes', offset, width });

/** Freeze a table (the type keeps every entry's literal shape). */
export function fieldTable<T extends FieldTable>(t: T): T {
  return Object.freeze(t);
}

/** Bytes a table spans: the end of its last field (tests check it equals the record's size). */
export function tableSize(t: FieldTable): number {
  let end = 0;
  for (const f of Object.values(t)) end = Math.max(end, f.offset + f.width);
  return end;
}

// `at` is the record's own offset in `b` (an entry of an array, a record after a header): 0 for
// a record at the start of its buffer.

export function getU8(b: Buffer, f: U8Field, at = 0): number {
  return b[at + f.offset]!;
}
export function setU8(b: Buffer, f: U8Field, v: number, at = 0): void {
  b[at + f.offset] = v;
}

export function getLE16(b: Buffer, f: U16Field, at = 0): number {
  return b.readUInt16LE(at + f.offset);
}
export function setLE16(b: Buffer, f: U16Field, v: number, at = 0): void {
  b.writeUInt16LE(v, at + f.offset);
}
export function getLE32(b: Buffer, f: U32Field, at = 0): number {
  return b.readUInt32LE(at + f.offset);
}
export function setLE32(b: Buffer, f: U32Field, v: number, at = 0): void {
  b.writeUInt32LE(v, at + f.offset);
}
export function getLE64(b: Buffer, f: U64Field, at = 0): bigint {
  return b.readBigUInt64LE(at + f.offset);
}
export function setLE64(b: Buffer, f: U64Field, v: bigint, at = 0): void {
  b.writeBigUInt64LE(v, at + f.offset);
}
/** A le64 as two 32-bit halves into a Number (exact to 2^53): no BigInt on the data path. */
export function getLE64Number(b: Buffer, f: U64Field, at = 0): number {
  const o = at + f.offset;
  return b.readUInt32LE(o + 4) * 0x1_0000_0000 + b.readUInt32LE(o);
}
/** A Number (0..2^53) as a le64 written in two 32-bit halves: no BigInt on the data path. */
export function setLE64Number(b: Buffer, f: U64Field, v: number, at = 0): void {
  const o = at + f.offset;
  b.writeUInt32LE(v % 0x1_0000_0000, o);
  b.writeUInt32LE(Math.floor(v / 0x1_0000_0000), o + 4);
}

export function getBE16(b: Buffer, f: U16Field, at = 0): number {
  return b.readUInt16BE(at + f.offset);
}
export function setBE16(b: Buffer, f: U16Field, v: number, at = 0): void {
  b.writeUInt16BE(v, at + f.offset);
}
export function getBE32(b: Buffer, f: U32Field, at = 0): number {
  return b.readUInt32BE(at + f.offset);
}
export function setBE32(b: Buffer, f: U32Field, v: number, at = 0): void {
  b.writeUInt32BE(v, at + f.offset);
}
export function getBE64(b: Buffer, f: U64Field, at = 0): bigint {
  return b.readBigUInt64BE(at + f.offset);
}
export function setBE64(b: Buffer, f: U64Field, v: bigint, at = 0): void {
  b.writeBigUInt64BE(v, at + f.offset);
}
/** A be64 as two 32-bit halves into a Number (exact to 2^53): no BigInt on the data path. */
export function getBE64Number(b: Buffer, f: U64Field, at = 0): number {
  const o = at + f.offset;
  return b.readUInt32BE(o) * 0x1_0000_0000 + b.readUInt32BE(o + 4);
}
/** A Number (0..2^53) as a be64 written in two 32-bit halves: no BigInt on the data path. */
export function setBE64Number(b: Buffer, f: U64Field, v: number, at = 0): void {
  const o = at + f.offset;
  b.writeUInt32BE(Math.floor(v / 0x1_0000_0000), o);
  b.writeUInt32BE(v % 0x1_0000_0000, o + 4);
}

/** The field's bytes, a view into `b` (copy it before `b` is reused). */
export function view(b: Buffer, f: BytesField, at = 0): Buffer {
  return b.subarray(at + f.offset, at + f.offset + f.width);
}
