import { decodeAdminCommand, decodeAdminStatus, encodeAdminCommand, encodeAdminStatus } from './admin-command.js';

/** An admin command as the command handlers see it, whatever header carried it. */
export interface AdminRequest {
  readonly cls: number;
  readonly command: number;
  readonly data: Buffer;
}

export interface AdminResponse {
  readonly result: Buffer;
  readonly statusType: number;
  readonly status: number;
}

/**
 * How class, command and status travel in an admin virtqueue buffer. vof speaks the seed's
 * format (`u8 class; u8 command; data[]` / `result[]; u8 status_type:4; u8 status`); a later
 * header (virtio 1.3's opcode / group_type / group_member_id) would be a second implementation
 * of this interface, negotiated by its own feature, with the command handlers untouched.
 */
export interface AdminHeaderFormat {
  readonly name: string;
  /** null when the device-readable part is too short to hold a header. */
  decodeRequest(readable: Buffer): AdminRequest | null;
  /** Bytes of the device-writable part that a result may use, or -1 when not even the status fits. */
  resultCapacity(inLength: number): number;
  /**
   * Write the response into the device-writable buffer: all of it, the result zero-padded
   * before the status. Returns the bytes written (0 when not even the status fits).
   */
  encodeResponse(response: AdminResponse, into: Buffer): number;
  encodeRequest(request: AdminRequest): Buffer;
  /** Split what the device wrote into result and status; null when it wrote too little to hold a status. */
  decodeResponse(written: Buffer): AdminResponse | null;
}

const STATUS_BYTES = 2;

/** The Admin Virtqueue RFC's header (seed 000): the only format vof speaks today. */
export const seedAdminHeader: AdminHeaderFormat = {
  name: 'virtio-admin-rfc-v1',
  decodeRequest: (readable) => decodeAdminCommand(readable),
  resultCapacity: (inLength) => (inLength < STATUS_BYTES ? -1 : inLength - STATUS_BYTES),
  encodeResponse(response, into) {
    const room = into.length - STATUS_BYTES;
    if (room < 0) return 0;
    const n = response.result.copy(into, 0, 0, Math.min(room, response.result.length));
    into.fill(0, n, room);
    encodeAdminStatus(response.statusType, response.status).copy(into, room);
    return into.length;
  },
  encodeRequest: (request) => encodeAdminCommand(request),
  decodeResponse(written) {
    if (written.length < STATUS_BYTES) return null;
    const { statusType, status } = decodeAdminStatus(written);
    return { result: written.subarray(0, written.length - STATUS_BYTES), statusType, status };
  },
};
