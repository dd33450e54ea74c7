import { formatStatus, opcodeName, statusName } from '../protocol/constants.js';

/** A command the target answered with a non-SUCCESS status. */
export class VofError extends Error {
  override name = 'VofError';
  readonly statusName: string;
  constructor(
    readonly status: number,
    readonly opcode: number,
    detail?: string,
  ) {
    super(`${formatStatus(status)} on ${opcodeName(opcode)}${detail ? `: ${detail}` : ''}`);
    this.statusName = statusName(status);
  }
}

/** The connection to the target broke (closed, timed out, keepalive lost). */
export class VofConnectionError extends Error {
  override name = 'VofConnectionError';
}
