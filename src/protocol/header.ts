import { fieldTable, u16 } from './fields.js';

/**
 * The four bytes every 16-byte command and every completion start with (seed 003: each
 * `struct virtio_of_command_*` opens with `le16 opcode; le16 command_id;`, each
 * `struct virtio_of_completion_*` with `le16 status; le16 command_id;`). Every record's table
 * spreads one of these, so the two fields are stated once for all of them.
 */
export const COMMAND_HEADER = fieldTable({ opcode: u16(0), commandId: u16(2) });
export const COMPLETION_HEADER = fieldTable({ status: u16(0), commandId: u16(2) });
