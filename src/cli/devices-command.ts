import type { DeviceInfo } from '../transport/rdma/native-binding.js';
import { CliError } from './cli-error.js';
import { parseCommand, usage, type CommandSpec } from './options.js';

export const DEVICES_COMMAND = {
  name: 'devices',
  args: '',
  summary: 'List RDMA devices with port state, MTU and GIDs.',
  options: {
    json: { type: 'boolean', desc: 'print JSON: the list, or {"error": ...} when RDMA is unavailable (exit 1)' },
  },
} as const satisfies CommandSpec;

function describe(devices: readonly DeviceInfo[]): string {
  if (devices.length === 0) {
    return 'no RDMA devices (soft-RoCE: `rdma link add rxe0 type rxe netdev IFACE`; see the README)\n';
  }
  const lines: string[] = [];
  for (const d of devices) {
    lines.push(`${d.name}  node GUID ${d.nodeGuid}${d.error ? `  (${d.error})` : ''}`);
    for (const p of d.ports) {
      lines.push(`  port ${p.port}: ${p.state}, ${p.linkLayer}, active MTU ${p.activeMtu}`);
      for (const g of p.gids) lines.push(`    GID[${g.index}] ${g.gid}`);
    }
  }
  return `${lines.join('\n')}\n`;
}

/** vof devices [--json]: what the RDMA transport can use on this machine. */
export async function runDevices(argv: string[]): Promise<number> {
  const parsed = parseCommand(DEVICES_COMMAND, argv);
  if (!parsed) return 0;
  const { values, positionals } = parsed;
  if (positionals.length > 0) throw usage(DEVICES_COMMAND, 'no arguments expected');
  // Loaded here, not at start-up: the other commands must work without the addon.
  const { listRdmaDevices } = await import('../transport/rdma/rdma-devices.js');
  let devices: readonly DeviceInfo[];
  try {
    devices = listRdmaDevices();
  } catch (err) {
    if (!values.json) throw err;
    // --json promises JSON on stdout, failure included; the error also goes to stderr.
    const e = err as Error;
    process.stdout.write(`${JSON.stringify({ error: `${e.name}: ${e.message}` }, null, 2)}\n`);
    throw new CliError(`${e.name}: ${e.message}`, 1);
  }
  process.stdout.write(values.json ? `${JSON.stringify(devices, null, 2)}\n` : describe(devices));
  return 0;
}
