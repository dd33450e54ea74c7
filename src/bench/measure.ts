import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { startTarget, VOF_CLI, type StartedTarget } from '../../scripts/start-target.mjs';
import { BlockDevice } from '../devices/blk/block-device.js';
import { runNvmeof, runPerftestBandwidth, runPerftestLatency } from './keyed-anchors.js';
import { profileSelf } from './profiler.js';
import type { ProgressLine } from './progress-line.js';
import { SystemUnavailable, runIperf3, runNbdkit, runVofNbd, type AnchorContext } from './stream-anchors.js';
import type { BenchRun, Environment, SkippedSystem, Workload } from './types.js';
import { runVofWorkload } from './vof-workload.js';
import { workloadLabel } from './workloads.js';

export interface MeasureOptions {
  readonly environment: Environment;
  readonly workloads: readonly Workload[];
  readonly timeSec: number;
  readonly rampSec: number;
  readonly sizeBytes: number;
  readonly queues: number;
  /** Scratch image the bench made (target, nbdkit and nvmet all export it). */
  readonly image: string;
  /** A target to use instead of starting one (tcp:// or rdma:// device URL). */
  readonly targetUrl: string | null;
  /** IPv4 address of a local RDMA device to run the keyed part here, or null. */
  readonly rdma: { readonly addr: string; readonly device: string } | null;
  readonly anchors: boolean;
  /** Run vof-nbd (needs fio and the `vof nbd` command). */
  readonly nbd: boolean;
  readonly cpuProfDir: string | null;
  /** The target's --file-io (auto, uring, libuv), or null for its default. */
  readonly fileIo?: string | null;
  readonly progress: ProgressLine;
}

export interface Measured {
  readonly runs: BenchRun[];
  readonly skipped: SkippedSystem[];
  /** Systems that failed (not merely unavailable): the bench exits non-zero. */
  readonly failures: number;
}

const TVQN = 'bench';

/**
 * Measures every system of one environment: vof over TCP and (where an RDMA address is given)
 * RDMA through the library, then, with anchors, vof through its NBD bridge and the anchors of
 * that environment. A system that cannot run is recorded as skipped with its reason, never
 * dropped silently.
 */
export async function measureEnvironment(o: MeasureOptions): Promise<Measured> {
  const runs: BenchRun[] = [];
  const skipped: SkippedSystem[] = [];
  let failures = 0;
  const env = o.environment;
  const skip = (system: string, reason: string) => {
    skipped.push({ system, environment: env, reason });
    o.progress.log(`bench: SKIPPED ${system} (${env}): ${reason}`);
  };
  const attempt = async (system: string, body: () => Promise<BenchRun[]>) => {
    o.progress.log(`bench: ${system} (${env}) …`);
    try {
      const r = await body();
      runs.push(...r);
    } catch (err) {
      if (err instanceof SystemUnavailable) return skip(system, err.message);
      failures++;
      skip(system, `FAILED: ${(err as Error).message}`);
    }
  };

  let target: StartedTarget | null = null;
  let controlPath: string | null = null;
  const urls: { tcp: string | null; rdma: string | null } = { tcp: null, rdma: null };
  if (o.targetUrl) {
    urls[o.targetUrl.startsWith('rdma:') ? 'rdma' : 'tcp'] = o.targetUrl;
  } else {
    controlPath = join(o.image, '..', `control-${env}-${process.pid}.sock`);
    const listen = ['--control', controlPath, '--listen', 'tcp://127.0.0.1:0', ...(o.rdma ? ['--listen', `rdma://${o.rdma.addr}:0`] : [])];
    const nodeArgs = o.cpuProfDir ? ['--cpu-prof', '--cpu-prof-dir', o.cpuProfDir, '--cpu-prof-name', `target-${env}-${process.pid}.cpuprofile`] : [];
    if (o.cpuProfDir) mkdirSync(o.cpuProfDir, { recursive: true });
    target = await startTarget([...listen, '--blk', `${TVQN}=${o.image}`, '--queues', String(o.queues), '--log', 'warn', ...(o.fileIo ? ['--file-io', o.fileIo] : [])], {
      lines: o.rdma ? 2 : 1,
      stderr: 'inherit',
      timeoutMs: env === 'vm' ? 180_000 : 30_000,
      nodeArgs,
    });
    for (const u of target.urls) urls[u.startsWith('rdma:') ? 'rdma' : 'tcp'] = `${u}/${TVQN}`;
  }
  const targetPid = target?.child.pid ?? null;
  const ctx: AnchorContext = { environment: env, workloads: o.workloads, rampSec: o.rampSec, timeSec: o.timeSec, sizeBytes: o.sizeBytes, progress: o.progress };

  const vofSystem = async (system: string, url: string) => {
    const dev = await BlockDevice.open(url, { maxQueues: o.queues });
    const out: BenchRun[] = [];
    try {
      for (const workload of o.workloads) {
        const once = () => runVofWorkload(dev, { system, environment: env, workload, rampSec: o.rampSec, timeSec: o.timeSec, spanBytes: o.sizeBytes, targetPid, targetControl: controlPath, progress: o.progress });
        out.push(o.cpuProfDir ? await profileSelf(o.cpuProfDir, `initiator-${system}-${env}-${workloadLabel(workload).replace(/\s+/g, '-')}`, once) : await once());
      }
    } finally {
      await dev.close();
    }
    return out;
  };

  try {
    if (o.rdma) {
      if (urls.rdma) await attempt('vof-rdma', () => vofSystem('vof-rdma', urls.rdma!));
      else skip('vof-rdma', 'the --target URL is not rdma://');
    }
    if (urls.tcp) await attempt('vof-tcp', () => vofSystem('vof-tcp', urls.tcp!));
    else skip('vof-tcp', 'the --target URL is not tcp://');
    if (o.nbd) {
      const url = urls.tcp ?? urls.rdma!;
      await attempt('vof-nbd', () => runVofNbd(ctx, VOF_CLI, url, join(o.image, '..', `nbd-${process.pid}.sock`), targetPid));
    }
    if (o.anchors && env === 'host') {
      await attempt('nbdkit', () => runNbdkit(ctx, o.image));
      await attempt('iperf3', async () => [await runIperf3(ctx)]);
    }
    if (o.anchors && o.rdma) {
      for (const tool of ['ib_write_bw', 'ib_read_bw'] as const) await attempt(`perftest ${tool}`, async () => [await runPerftestBandwidth(ctx, tool, o.rdma!.device, o.rdma!.addr)]);
      await attempt('perftest ib_send_lat', async () => [await runPerftestLatency(ctx, o.rdma!.device, o.rdma!.addr)]);
      await attempt('nvmeof-rdma', () => runNvmeof(ctx, 'rdma', o.rdma!.addr, o.image));
      await attempt('nvmeof-tcp', () => runNvmeof(ctx, 'tcp', '127.0.0.1', o.image));
    }
  } finally {
    await target?.stop();
  }
  return { runs, skipped, failures };
}
