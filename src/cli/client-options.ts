import { DEFAULT_IVQN } from '../initiator/remote-device.js';
import type { OptionTable } from './options.js';

/** The options every command that connects to a target takes. */
export const IVQN_OPTION = {
  ivqn: {
    type: 'string',
    arg: 'IVQN',
    desc: `this initiator's VQN, matched against the target's --allow (default: ${DEFAULT_IVQN})`,
  },
} as const satisfies OptionTable;

export const URL_HELP = 'URL is tcp://HOST[:PORT]/TVQN, tls://HOST[:PORT]/TVQN or rdma://ADDR[:PORT]/TVQN (port 15771).';
