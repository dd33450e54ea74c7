import { fileURLToPath } from 'node:url';
import { cpuCost, round } from './cpu.js';
import { fioSystem, type BlockSystem } from './fio.js';
import { SystemUnavailable, type AnchorContext } from './stream-anchors.js';
import { run, startDaemon } from './tools.js';
import type { BenchRun } from './types.js';

const NVMEOF_SCRIPT = fileURLToPath(new URL('../../bench/nvmeof.sh', import.meta.url));

/** What an nvmet namespace exports: the bench image, or a null_blk device of that many bytes. */
export type NvmeofBacking = { readonly image: string } | { readonly nullBytes: number };

/** Each kernel system's own nvmet port (and subsystem, named after the system): they are all up at once. */
const NVMEOF_PORTS: Record<string, number> = { 'nvmeof-rdma': 4420, 'nvmeof-tcp': 4421, 'nvmeof-rdma-null': 4422, 'nvmeof-tcp-null': 4423 };

/**
 * The kernel's NVMe-oF target and host over `transport` on this machine: bench/nvmeof.sh exports
 * the image (buffered, like vof's file backend) or a null_blk device of the same size (like vof's
 * null:SIZE) with nvmet, connects with `nvme connect`, and fio with libaio and O_DIRECT drives
 * the namespace. The target is the kernel, so its CPU is the whole machine's busy time during the
 * run less fio's own.
 */
export async function openNvmeof(ctx: AnchorContext, transport: 'rdma' | 'tcp', addr: string, backing: NvmeofBacking): Promise<BlockSystem> {
  const system = 'image' in backing ? `nvmeof-${transport}` : `nvmeof-${transport}-null`;
  const what = 'image' in backing ? backing.image : `null:${Math.ceil(backing.nullBytes / 1048576)}`;
  const dev = (await run('bash', [NVMEOF_SCRIPT, 'up', transport, addr, what, String(NVMEOF_PORTS[system]), system])).trim().split('\n').at(-1)!;
  return fioSystem(
    {
      ...ctx,
      system,
      engine: ['--ioengine=libaio', '--direct=1', `--filename=${dev}`],
      target: 'machine',
      note: `kernel target, ${'image' in backing ? 'the image (buffered_io)' : 'a null_blk device'} as ${dev} over nvme-${transport}: targetSec = machine busy CPU during the run minus fio's (includes the kernel host side)`,
    },
    async () => {
      await run('bash', [NVMEOF_SCRIPT, 'down', system]).catch(() => undefined);
    },
  );
}

/**
 * One perftest client run against its own server on the same device; returns the client's
 * stdout. The client gives up at once when the server is not listening yet (slow under TCG), so
 * it is retried while the server lives.
 */
async function perftest(tool: string, args: readonly string[], addr: string, port: number): Promise<string> {
  const server = startDaemon(tool, [...args, '-p', String(port)]);
  try {
    for (let attempt = 1; ; attempt++) {
      await new Promise((r) => setTimeout(r, 1500));
      try {
        return await run(tool, [...args, '-p', String(port), addr], { timeoutMs: 120_000 });
      } catch (err) {
        const refused = /Couldn't connect|Unable to init the socket connection/.test((err as Error).message);
        if (!refused || attempt >= 20 || server.child.exitCode !== null) throw err;
      }
    }
  } finally {
    await server.stop();
  }
}

/** The first line of numbers after perftest's header line containing `header`. */
function perftestRow(out: string, header: RegExp): number[] {
  const lines = out.split('\n');
  const h = lines.findIndex((l) => header.test(l));
  const row = lines.slice(h + 1).find((l) => /^\s*\d+\s+\d+/.test(l));
  if (h < 0 || !row) throw new Error(`cannot read perftest output:\n${out.slice(-1500)}`);
  return row.trim().split(/\s+/).map(Number);
}

let nextPort = 18515;

/**
 * perftest's ib_write_bw or ib_read_bw on the rxe device, client and server on this machine,
 * 128 KiB messages: the raw-verbs throughput ceiling. perftest's MB/sec are MiB/s; they are
 * converted to 10^6 bytes.
 */
export async function runPerftestBandwidth(ctx: AnchorContext, tool: 'ib_write_bw' | 'ib_read_bw', device: string, addr: string, roundNumber: number): Promise<BenchRun> {
  const secs = Math.max(2, Math.round(ctx.timeSec));
  const rw = tool === 'ib_write_bw' ? 'rdma-write' : 'rdma-read';
  ctx.progress.show(`perftest ${tool}: ${secs} s`);
  const bs = 131072;
  const out = await perftest(tool, ['-d', device, '-s', String(bs), '-D', String(secs), '-F'], addr, nextPort++);
  ctx.progress.clear();
  const [, , , avg] = perftestRow(out, /#bytes\s+#iterations\s+BW peak/);
  const mbps = (avg! * 1048576) / 1e6;
  const ios = Math.round((mbps * 1e6 * secs) / bs);
  return {
    system: 'perftest',
    round: roundNumber,
    environment: ctx.environment,
    workload: { rw, bs, qd: 128 },
    seconds: secs,
    ios,
    iops: round((mbps * 1e6) / bs),
    mbps: round(mbps),
    latencyUs: null,
    cpu: cpuCost(null, null, ios * bs, ios),
    note: `${tool} -s ${bs} -D ${secs} (tx depth 128, perftest's default); CPU not measured`,
  };
}

/** ib_send_lat with 4 KiB messages: the round-trip floor (one-way latency, as perftest reports it). */
export async function runPerftestLatency(ctx: AnchorContext, device: string, addr: string, roundNumber: number): Promise<BenchRun> {
  ctx.progress.show('perftest ib_send_lat');
  const iterations = 1000;
  const out = await perftest('ib_send_lat', ['-d', device, '-s', '4096', '-n', String(iterations), '-F'], addr, nextPort++);
  ctx.progress.clear();
  // #bytes #iterations t_min t_max t_typical t_avg t_stdev 99% 99.9%
  const row = perftestRow(out, /#bytes\s+#iterations\s+t_min/);
  const [, , , , typical, avg, , p99, p999] = row;
  if (![typical, avg, p99, p999].every((x) => Number.isFinite(x) && x! > 0)) {
    // perftest converts CPU cycles to µs with its own clock calibration, which can fail under
    // QEMU TCG: it then prints inf. Its bandwidth tests time with the clock and are unaffected.
    throw new SystemUnavailable(`ib_send_lat printed no usable latency (${row.slice(2).join(' ')}): perftest's cycle-counter calibration failed on this CPU`);
  }
  return {
    system: 'perftest',
    round: roundNumber,
    environment: ctx.environment,
    workload: { rw: 'send-lat', bs: 4096, qd: 1 },
    seconds: round((iterations * avg!) / 1e6),
    ios: iterations,
    iops: round(1e6 / avg!),
    mbps: round((4096 * 1e6) / avg! / 1e6),
    // ib_send_lat's t_typical is its median.
    latencyUs: { p50: round(typical!), p99: round(p99!), p999: round(p999!) },
    cpu: cpuCost(null, null, iterations * 4096, iterations),
    note: `ib_send_lat -s 4096 -n ${iterations}: one-way latency (half the ping-pong round trip)`,
  };
}
