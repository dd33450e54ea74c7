/** virtio-blk wire constants (virtio 1.2, section 5.2). */

import { fieldTable, setLE32, setLE64, u32, u64 } from './fields.js';

export const SECTOR_SIZE = 512;

export const BlkFeature = {
  SIZE_MAX: 1n,
  SEG_MAX: 2n,
  GEOMETRY: 4n,
  RO: 5n,
  BLK_SIZE: 6n,
  FLUSH: 9n,
  TOPOLOGY: 10n,
  CONFIG_WCE: 11n,
  MQ: 12n,
  DISCARD: 13n,
  WRITE_ZEROES: 14n,
} as const;

export const BlkRequestType = {
  IN: 0,
  OUT: 1,
  FLUSH: 4,
  GET_ID: 8,
  DISCARD: 11,
  WRITE_ZEROES: 13,
} as const;

export const BlkStatus = {
  OK: 0,
  IOERR: 1,
  UNSUPP: 2,
} as const;

/** struct virtio_blk_outhdr (virtio 1.x, "Device Operation"): le32 type, le32 reserved (ioprio), le64 sector. */
export const REQUEST_HEADER = fieldTable({ type: u32(0), reserved: u32(4), sector: u64(8) });
export const REQUEST_HEADER_SIZE = 16;
/** struct virtio_blk_discard_write_zeroes: le64 sector, le32 num_sectors, le32 flags. */
export const SEGMENT = fieldTable({ sector: u64(0), numSectors: u32(8), flags: u32(12) });
export const SEGMENT_SIZE = 16;
export const WRITE_ZEROES_FLAG_UNMAP = 1;
export const ID_BYTES = 20;

/** Offsets in struct virtio_blk_config. */
export const BlkConfig = {
  capacity: 0, // le64, in 512-byte sectors
  size_max: 8, // le32
  seg_max: 12, // le32
  geometry_cylinders: 16, // le16
  geometry_heads: 18, // u8
  geometry_sectors: 19, // u8
  blk_size: 20, // le32
  physical_block_exp: 24, // u8
  alignment_offset: 25, // u8
  min_io_size: 26, // le16
  opt_io_size: 28, // le32
  writeback: 32, // u8
  num_queues: 34, // le16
  max_discard_sectors: 36, // le32
  max_discard_seg: 40, // le32
  discard_sector_alignment: 44, // le32
  max_write_zeroes_sectors: 48, // le32
  max_write_zeroes_seg: 52, // le32
  write_zeroes_may_unmap: 56, // u8
  SIZE: 60,
} as const;

export function encodeRequestHeader(type: number, sector: bigint): Buffer {
  const b = Buffer.alloc(REQUEST_HEADER_SIZE);
  setLE32(b, REQUEST_HEADER.type, type);
  setLE64(b, REQUEST_HEADER.sector, sector);
  return b;
}

export function encodeSegment(sector: bigint, numSectors: number, flags: number): Buffer {
  const b = Buffer.alloc(SEGMENT_SIZE);
  setLE64(b, SEGMENT.sector, sector);
  setLE32(b, SEGMENT.numSectors, numSectors);
  setLE32(b, SEGMENT.flags, flags);
  return b;
}
