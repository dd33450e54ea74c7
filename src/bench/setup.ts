import { execFileSync } from 'node:child_process';

/** The programs the anchors run, and the Debian package that brings each one. */
export const ANCHOR_TOOLS = {
  stream: [
    ['fio', 'fio'],
    ['nbdkit', 'nbdkit'],
    ['iperf3', 'iperf3'],
  ],
  keyed: [
    ['fio', 'fio'],
    ['ib_write_bw', 'perftest'],
    ['nvme', 'nvme-cli'],
  ],
} as const;

function have(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/**
 * Installs the anchors' missing Debian packages with apt-get when running as root; otherwise
 * throws with the exact command to run. `log` says what is being installed.
 */
export function ensureTools(tools: readonly (readonly [string, string])[], log: (line: string) => void): void {
  const missing = [...new Set(tools.filter(([cmd]) => !have(cmd)).map(([, pkg]) => pkg))];
  if (missing.length === 0) return;
  const line = `apt-get install -y ${missing.join(' ')}`;
  if (process.getuid?.() !== 0) throw new Error(`the anchors need Debian packages that are missing: ${missing.join(', ')}; run as root: ${line}`);
  log(`bench: installing ${missing.join(' ')} from Debian (apt-get)`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  try {
    execFileSync('apt-get', ['update', '-qq'], { stdio: ['ignore', 'ignore', 'inherit'], env });
    execFileSync('apt-get', ['install', '-y', '-qq', ...missing], { stdio: ['ignore', 'ignore', 'inherit'], env });
  } catch (err) {
    throw new Error(`${line} failed: ${(err as Error).message}`);
  }
  const still = tools.filter(([cmd]) => !have(cmd)).map(([cmd]) => cmd);
  if (still.length) throw new Error(`after ${line}, still missing: ${still.join(', ')}`);
}
