import { parseArgs } from 'node:util';
import type { DeviceInfo } from '../transport/rdma/native-binding.js';
import { CliError } from './cli-error.js';

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
  const { values, positionals } = parseArgs({ args: argv, options: { json: { type: 'boolean' } }, allowPositionals: true });
  if (positionals.length > 0) throw new CliError('usage: vof devices [--json]', 2);
  // Loaded here, not at start-up: the other commands must work without the addon.
  const { listRdmaDevices } = await import('../transport/rdma/rdma-devices.js');
  const devices = listRdmaDevices();
  process.stdout.write(values.json ? `${JSON.stringify(devices, null, 2)}\n` : describe(devices));
  return 0;
}
