// Soft-RoCE harness self-test. Part of the RDMA suite (vitest.rdma.config.ts), so it runs where
// an rxe device exists: normally inside the VM of scripts/rxe (npm run rxe / rdma-suite.mjs).
// It checks what every other RDMA test relies on: the device is visible to libibverbs, its port
// is ACTIVE with a 4096-byte MTU, and RDMA traffic flows between two rxe "hosts" built by the
// harness's own setup script (scripts/rxe/hosts.sh), measured with perftest's ib_write_bw.
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { needs } from '../helpers/deps.js';

const dev = process.env.VOF_RDMA_DEV || 'rxe0';
const expectMtu = process.env.VOF_RDMA_EXPECT_MTU || '4096';
const hostsSh = fileURLToPath(new URL('../../scripts/rxe/hosts.sh', import.meta.url));

// ibv_devices/ibv_devinfo, ib_write_bw under taskset, and hosts.sh's ip and sysctl.
const tools = needs('test/rdma/harness.test.ts (the soft-RoCE harness self-test)', ['ibverbs-utils', 'perftest', 'util-linux', 'iproute2', 'procps']);

function run(cmd: string, args: string[], timeout = 60_000) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout });
  if (r.error) throw new Error(`${cmd} ${args.join(' ')}: ${r.error.message}`);
  return { code: r.status, out: r.stdout, err: r.stderr, all: `${r.stdout}\n${r.stderr}` };
}

/** Whether some socket listens on TCP `port` (IPv4 or IPv6) in this network namespace. */
function listening(port: number): boolean {
  const hex = `:${port.toString(16).toUpperCase().padStart(4, '0')} `;
  return ['/proc/net/tcp', '/proc/net/tcp6'].some((f) => {
    try {
      return readFileSync(f, 'utf8')
        .split('\n')
        .some((l) => l.includes(hex) && l.trim().split(/\s+/)[3] === '0A' && l.trim().split(/\s+/)[1].endsWith(hex.trim()));
    } catch {
      return false;
    }
  });
}

describe.skipIf(!tools.ok)(`soft-RoCE device ${dev}${tools.skipNote}`, () => {
  it('is listed by ibv_devices', () => {
    const r = run('ibv_devices', []);
    expect(r.code, r.all).toBe(0);
    expect(r.out).toMatch(new RegExp(`^\\s*${dev}\\s`, 'm'));
  });

  it(`has an ACTIVE port with active_mtu ${expectMtu}`, () => {
    const r = run('ibv_devinfo', ['-d', dev]);
    expect(r.code, r.all).toBe(0);
    expect(r.out).toMatch(/state:\s+PORT_ACTIVE/);
    expect(r.out).toMatch(new RegExp(`active_mtu:\\s+${expectMtu}\\b`));
  });
});

// Two hosts on their own subnet and names, so they never collide with the device the suite runs
// on (dummy0 10.177.0.1 / rxe0 in the VM, or the --hosts devices on 10.177.0.0/24).
// Note: these are not network namespaces. rdma_rxe of Linux 6.1 and 6.12 receives only in the initial
// namespace (see hosts.sh), so the two hosts are two veth ends with their own address and rxe
// device, joined by a bridge; policy routing makes the traffic really cross the veths.
describe.skipIf(!tools.ok)(`ib_write_bw between two rxe hosts${tools.skipNote}`, () => {
  const prefix = 'voft';
  const subnet = '10.177.1';
  const [srvDev, cliDev] = [`${prefix}rxe2`, `${prefix}rxe1`];
  const srvAddr = `${subnet}.2`;
  const port = '18777';
  const perf = ['-s', '65536', '-n', '200', '-F', '-p', port];

  beforeAll(() => {
    const r = run('bash', [hostsSh, 'up', '2', '--prefix', prefix, '--subnet', subnet], 120_000);
    if (r.code !== 0) throw new Error(`hosts.sh up failed (exit ${r.code}); needs root and rdma_rxe:\n${r.all}`);
  });

  afterAll(() => {
    const r = run('bash', [hostsSh, 'down', '2', '--prefix', prefix], 120_000);
    expect(r.code, `hosts.sh down: ${r.all}`).toBe(0);
  });

  it('moves data and reports a positive average bandwidth', async () => {
    // Both ends on one vCPU: perftest times with the CPU's cycle counter, and a process moved
    // between TCG vCPUs mid-run once reported a 0.00 MB/s average after a heavy test file.
    const server = spawn('taskset', ['-c', '0', 'ib_write_bw', '-d', srvDev, ...perf], { stdio: ['ignore', 'pipe', 'pipe'] });
    let srvOut = '';
    server.stdout.on('data', (d) => (srvOut += d));
    server.stderr.on('data', (d) => (srvOut += d));
    const serverExit = new Promise<number | null>((resolve) => server.on('exit', (c) => resolve(c)));
    try {
      // Connecting before the server listens is refused. Its "Waiting for client" banner is
      // stuck in stdio buffers (stdout is a pipe), so watch for the TCP listener instead.
      const t0 = Date.now();
      while (!listening(Number(port))) {
        if (server.exitCode !== null) throw new Error(`ib_write_bw server exited early (${server.exitCode}):\n${srvOut}`);
        if (Date.now() - t0 > 60_000) throw new Error(`ib_write_bw server not ready after 60 s:\n${srvOut}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      const client = run('taskset', ['-c', '0', 'ib_write_bw', '-d', cliDev, ...perf, srvAddr], 120_000);
      expect(client.code, `client:\n${client.all}\nserver:\n${srvOut}`).toBe(0);
      expect(await serverExit, `server:\n${srvOut}`).toBe(0);
      // " #bytes  #iterations  BW peak[MB/sec]  BW average[MB/sec]  MsgRate[Mpps]" then the row.
      expect(client.out).toMatch(/BW average\[MB\/sec\]/);
      const row = client.out.match(/^\s*65536\s+200\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)/m);
      expect(row, client.out).not.toBeNull();
      expect(Number(row![2]), `client:\n${client.out}`).toBeGreaterThan(0);
    } finally {
      if (server.exitCode === null) server.kill('SIGKILL');
    }
  });
});
