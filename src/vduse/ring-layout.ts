/**
 * The split virtqueue's records as the virtio 1.2 spec lays them out (2.7), for a device that
 * negotiated VIRTIO_F_VERSION_1: every multi-byte field is little-endian.
 *
 *   struct virtq_desc  { le64 addr; le32 len; le16 flags; le16 next; }          16 bytes, table aligned 16
 *   struct virtq_avail { le16 flags; le16 idx; le16 ring[size]; le16 used_event; }   aligned 2
 *   struct virtq_used  { le16 flags; le16 idx; struct { le32 id; le32 len; } ring[size];
 *                        le16 avail_event; }                                         aligned 4
 *
 * used_event and avail_event exist only with VIRTIO_F_EVENT_IDX.
 */

/** Size of one descriptor (struct virtq_desc). */
export const DESC_BYTES = 16;
/** Offsets inside a descriptor. */
export const DESC_ADDR = 0;
export const DESC_LEN = 8;
export const DESC_FLAGS = 12;
export const DESC_NEXT = 14;

/** The buffer continues in the descriptor named by `next`. */
export const VIRTQ_DESC_F_NEXT = 1;
/** The buffer is device-writable (else device-readable). */
export const VIRTQ_DESC_F_WRITE = 2;
/** The buffer is a table of descriptors (VIRTIO_F_INDIRECT_DESC). */
export const VIRTQ_DESC_F_INDIRECT = 4;

/** avail.flags: the driver asks for no interrupt (ignored by the device under event idx). */
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
/** used.flags: the device asks for no kick (ignored by the driver under event idx). */
export const VIRTQ_USED_F_NO_NOTIFY = 1;

/** Largest split queue size (2.7: "The maximum Queue Size value is 32768"); sizes are powers of 2. */
export const MAX_QUEUE_SIZE = 32768;

/** The ring areas' alignments (2.7, table "Virtqueue Part Alignment"). */
export const DESC_ALIGN = 16;
export const AVAIL_ALIGN = 2;
export const USED_ALIGN = 4;

export function descTableBytes(size: number): number {
  return DESC_BYTES * size;
}

/** Bytes of the available ring (the driver area), with used_event under event idx. */
export function availRingBytes(size: number, eventIdx: boolean): number {
  return 4 + 2 * size + (eventIdx ? 2 : 0);
}

/** Bytes of the used ring (the device area), with avail_event under event idx. */
export function usedRingBytes(size: number, eventIdx: boolean): number {
  return 4 + 8 * size + (eventIdx ? 2 : 0);
}

/**
 * The spec's vring_need_event (2.7.10): true when `event` lies in the half-open window
 * [old, newIdx) of 16-bit indices, i.e. the other side asked to be told once the index moved
 * past `event`, and this batch moved it from `old` to `newIdx`.
 */
export function needEvent(event: number, newIdx: number, old: number): boolean {
  return ((newIdx - event - 1) & 0xffff) < ((newIdx - old) & 0xffff);
}
