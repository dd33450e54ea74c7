import { ensurePackages, installCommand } from '../../scripts/debian-deps.mjs';

/**
 * The anchors' Debian packages: groups of scripts/debian-deps.json (the one list of what the
 * suites, `vof bench` and scripts/rxe drive). stream: fio, nbdkit, iperf3 on this host; keyed:
 * fio, perftest, nvme-cli for the RDMA part (on this host, or in the VM that shares its root).
 */
export const ANCHOR_GROUPS = {
  stream: 'bench-anchors',
  keyed: 'bench-rdma-anchors',
} as const;

/**
 * Installs the anchors' missing Debian packages with apt-get when running as root; otherwise
 * throws with the exact command to run. `log` says what is being installed and why.
 */
export function ensureTools(groups: readonly string[], log: (line: string) => void): void {
  const r = ensurePackages(groups, { who: 'bench', log });
  if (r.missing.length === 0) return;
  const line = installCommand(r.missing);
  if (r.impossible) throw new Error(`the anchors need Debian packages that are missing: ${r.missing.join(', ')} (${r.impossible}); run: ${line}`);
  throw new Error(`${r.error ?? 'apt-get install'}; still missing: ${r.missing.join(', ')} (${line})`);
}
