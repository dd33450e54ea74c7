import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { startTarget, VOF_CLI, type StartedTarget } from '../../scripts/start-target.mjs';
import { BlockDevice } from '../initiator/blk/block-device.js';
import type { BlockSystem } from './fio.js';
import { openNvmeof, runPerftestBandwidth, runPerftestLatency } from './keyed-anchors.js';
import { profileSelf } from './profiler.js';
import type { ProgressLine } from './progress-line.js';
import { roundOrder } from './rounds.js';
import { SystemUnavailable, openNbdkit, openNbdkitMemory, openVofNbd, runIperf3, type AnchorContext } from './stream-anchors.js';
import type { BenchRun, Environment, SkippedSystem, Workload } from './types.js';
import { openQsdVduse, openVofVduse } from './vduse-anchors.js';
import { openVofNbdKernel } from './nbd-kernel.js';
import { runVofWorkload } from './vof-workload.js';
import { workloadLabel } from './workloads.js';

export interface MeasureOptions {
  readonly environment: Environment;
  readonly workloads: readonly Workload[];
  readonly timeSec: number;
  readonly rampSec: number;
  /** Passes per system and workload, the systems interleaved within each round. */
  readonly rounds: number;
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
  /** Run the VDUSE systems (vof-vduse, vof-vduse-rdma, qsd-vduse): the kernel's virtio-blk, root only. */
  readonly vduse?: boolean;
  /** Run vof-nbd-kernel (the kernel's nbd client on `vof nbd`): root and the nbd module. */
  readonly nbdKernel?: boolean;
  /** Only these systems (and ceilings, by tool: iperf3, perftest), or every one (null). */
  readonly only?: ReadonlySet<string> | null;
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

/** Every system and ceiling tool the bench knows, by the name `--systems` takes. */
export const SYSTEM_NAMES = [
  'vof-tcp', 'vof-rdma', 'vof-nbd', 'vof-nbd-kernel', 'vof-nbdsrc', 'vof-null', 'vof-null-rdma', 'vof-vduse', 'vof-vduse-rdma',
  'nbdkit', 'nvmeof-rdma', 'nvmeof-tcp', 'nvmeof-rdma-null', 'nvmeof-tcp-null', 'qsd-vduse', 'iperf3', 'perftest',
] as const;

const TVQN = 'bench';
const NULL_TVQN = 'bench-null';
const NBDSRC_TVQN = 'bench-nbdsrc';

/** A raw-transport ceiling (iperf3, perftest): one pass per round, not per workload. */
interface CeilingSystem {
  readonly name: string;
  run(round: number): Promise<BenchRun>;
}

/**
 * Measures every system of one environment: vof over TCP and (where an RDMA address is given)
 * RDMA through the library, then, with anchors, vof through its NBD bridge and the anchors of
 * that environment. Every system is opened first (target, bridge, nbdkit, nvmet all up at
 * once); then, per workload, `rounds` rounds each run every system once, in an order rotated
 * from round to round (rounds.ts says why), and the ceilings get a round each after the
 * workloads. A system that cannot run is recorded as skipped with its reason, never dropped
 * silently; one that fails mid-way is recorded as failed and leaves the later rounds.
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
  /** Runs `body`; on an error, records the system as skipped (unavailable) or failed, and returns null. */
  const attempt = async <T>(system: string, body: () => Promise<T>): Promise<T | null> => {
    try {
      return await body();
    } catch (err) {
      if (err instanceof SystemUnavailable) skip(system, err.message);
      else {
        failures++;
        skip(system, `FAILED: ${(err as Error).message}`);
      }
      return null;
    }
  };
  const systems: BlockSystem[] = [];
  const chosen = (system: string) => !o.only || o.only.has(system);
  const open = async (system: string, body: () => Promise<BlockSystem>) => {
    // Not chosen (--systems): not opened, and not "skipped" either (the user left it out).
    if (!chosen(system)) return;
    o.progress.log(`bench: ${system} (${env}) …`);
    const opened = await attempt(system, body);
    if (opened) systems.push(opened);
  };

  let target: StartedTarget | null = null;
  let nbdSource: { port: number; stop: () => Promise<void> } | null = null;
  /** The started target's tcp:// address (no TVQN), or null with --target. */
  let base: string | null = null;
  let rdmaBase: string | null = null;
  let controlPath: string | null = null;
  const urls: { tcp: string | null; rdma: string | null } = { tcp: null, rdma: null };
  if (o.targetUrl) {
    urls[o.targetUrl.startsWith('rdma:') ? 'rdma' : 'tcp'] = o.targetUrl;
  } else {
    controlPath = join(o.image, '..', `control-${env}-${process.pid}.sock`);
    const listen = ['--control', controlPath, '--listen', 'tcp://127.0.0.1:0', ...(o.rdma ? ['--listen', `rdma://${o.rdma.addr}:0`] : [])];
    const nodeArgs = o.cpuProfDir ? ['--cpu-prof', '--cpu-prof-dir', o.cpuProfDir, '--cpu-prof-name', `target-${env}-${process.pid}.cpuprofile`] : [];
    if (o.cpuProfDir) mkdirSync(o.cpuProfDir, { recursive: true });
    // Beside the image: the null device (the fabric path with no storage), and with anchors an
    // NBD source (nbdkit's memory plugin) to measure the cost of that extra hop.
    const extra = ['--blk', `${NULL_TVQN}=null:${o.sizeBytes}`];
    if (o.anchors && chosen('vof-nbdsrc')) {
      nbdSource = await attempt('vof-nbdsrc', () => openNbdkitMemory(o.sizeBytes));
      if (nbdSource) extra.push('--blk', `${NBDSRC_TVQN}=nbd://127.0.0.1:${nbdSource.port}/`);
    }
    target = await startTarget([...listen, '--blk', `${TVQN}=${o.image}`, ...extra, '--queues', String(o.queues), '--log', 'warn', ...(o.fileIo ? ['--file-io', o.fileIo] : [])], {
      lines: o.rdma ? 2 : 1,
      stderr: 'inherit',
      timeoutMs: env === 'vm' ? 180_000 : 30_000,
      nodeArgs,
    });
    for (const u of target.urls) urls[u.startsWith('rdma:') ? 'rdma' : 'tcp'] = `${u}/${TVQN}`;
    base = target.urls.find((u) => u.startsWith('tcp:')) ?? null;
    rdmaBase = target.urls.find((u) => u.startsWith('rdma:')) ?? null;
  }
  const targetPid = target?.child.pid ?? null;
  const ctx: AnchorContext = { environment: env, rampSec: o.rampSec, timeSec: o.timeSec, sizeBytes: o.sizeBytes, progress: o.progress };

  const vofSystem = async (system: string, url: string): Promise<BlockSystem> => {
    const dev = await BlockDevice.open(url, { maxQueues: o.queues });
    return {
      name: system,
      run: (workload, round) => {
        const once = () => runVofWorkload(dev, { system, round, environment: env, workload, rampSec: o.rampSec, timeSec: o.timeSec, spanBytes: o.sizeBytes, targetPid, targetControl: controlPath, progress: o.progress });
        return o.cpuProfDir ? profileSelf(o.cpuProfDir, `initiator-${system}-${env}-${workloadLabel(workload).replace(/\s+/g, '-')}-r${round}`, once) : once();
      },
      close: () => dev.close(),
    };
  };
  const ceilings: CeilingSystem[] = [];
  if (o.anchors && env === 'host' && chosen('iperf3')) ceilings.push({ name: 'iperf3', run: (r) => runIperf3(ctx, r) });
  if (o.anchors && o.rdma && chosen('perftest')) {
    const { device, addr } = o.rdma;
    for (const tool of ['ib_write_bw', 'ib_read_bw'] as const) ceilings.push({ name: `perftest ${tool}`, run: (r) => runPerftestBandwidth(ctx, tool, device, addr, r) });
    ceilings.push({ name: 'perftest ib_send_lat', run: (r) => runPerftestLatency(ctx, device, addr, r) });
  }

  try {
    if (o.rdma) {
      if (urls.rdma) await open('vof-rdma', () => vofSystem('vof-rdma', urls.rdma!));
      else skip('vof-rdma', 'the --target URL is not rdma://');
    }
    if (urls.tcp) await open('vof-tcp', () => vofSystem('vof-tcp', urls.tcp!));
    else skip('vof-tcp', 'the --target URL is not tcp://');
    if (base) {
      if (nbdSource) await open('vof-nbdsrc', () => vofSystem('vof-nbdsrc', `${base}/${NBDSRC_TVQN}`));
      await open('vof-null', () => vofSystem('vof-null', `${base}/${NULL_TVQN}`));
    }
    if (rdmaBase) await open('vof-null-rdma', () => vofSystem('vof-null-rdma', `${rdmaBase}/${NULL_TVQN}`));
    if (o.nbd) {
      const url = urls.tcp ?? urls.rdma!;
      await open('vof-nbd', () => openVofNbd(ctx, VOF_CLI, url, join(o.image, '..', `nbd-${process.pid}.sock`), targetPid));
      // The same bridge through the kernel's nbd client and block layer: a bridge of its own,
      // so that its CPU is this system's alone.
      if (o.nbdKernel) await open('vof-nbd-kernel', () => openVofNbdKernel(ctx, VOF_CLI, url, join(o.image, '..', `nbd-kernel-${process.pid}.sock`), o.queues, targetPid));
    }
    if (o.anchors && env === 'host') await open('nbdkit', () => openNbdkit(ctx, o.image));
    if (o.anchors && o.rdma) {
      await open('nvmeof-rdma', () => openNvmeof(ctx, 'rdma', o.rdma!.addr, { image: o.image }));
      await open('nvmeof-tcp', () => openNvmeof(ctx, 'tcp', '127.0.0.1', { image: o.image }));
      // The kernel on null_blk, of vof-null's size: the anchors of vof-null-rdma and vof-null.
      await open('nvmeof-rdma-null', () => openNvmeof(ctx, 'rdma', o.rdma!.addr, { nullBytes: o.sizeBytes }));
      await open('nvmeof-tcp-null', () => openNvmeof(ctx, 'tcp', '127.0.0.1', { nullBytes: o.sizeBytes }));
    }
    if (o.vduse) {
      // The kernel's virtio-blk over vof (vof vduse) against the same target, and
      // qemu-storage-daemon's vduse-blk of the same image: the ceiling of the VDUSE path.
      if (urls.tcp) await open('vof-vduse', () => openVofVduse(ctx, 'vof-vduse', VOF_CLI, urls.tcp!, o.queues, targetPid));
      if (urls.rdma) await open('vof-vduse-rdma', () => openVofVduse(ctx, 'vof-vduse-rdma', VOF_CLI, urls.rdma!, o.queues, targetPid));
      await open('qsd-vduse', () => openQsdVduse(ctx, o.image, o.queues));
    }

    // A run that never ends (an I/O that never completes) is a failure with a reason, not a
    // bench that hangs until the VM's timeout and loses every run already made.
    const stallMs = Math.max(300, 30 * (o.rampSec + o.timeSec)) * 1000;
    for (const workload of o.workloads) {
      for (let round = 1; round <= o.rounds; round++) {
        if (o.rounds > 1) o.progress.log(`bench: ${workloadLabel(workload)} (${env}), round ${round}/${o.rounds}: ${roundOrder(systems, round).map((s) => s.name).join(', ')}`);
        for (const system of roundOrder(systems, round)) {
          const run = await attempt(system.name, () => withDeadline(system.run(workload, round), stallMs, `${system.name}: no result ${stallMs / 1000} s after the run started (stalled)`));
          if (run) runs.push(run);
          else {
            // Failed: out of the later rounds (its earlier ones stay in the report). A stalled
            // system's close may stall too: the bench goes on without waiting for it.
            systems.splice(systems.indexOf(system), 1);
            await withDeadline(system.close(), 10_000, 'close').catch(() => undefined);
          }
        }
      }
    }
    for (let round = 1; round <= o.rounds; round++) {
      for (const ceiling of roundOrder(ceilings, round)) {
        o.progress.log(`bench: ${ceiling.name} (${env}), round ${round}/${o.rounds} …`);
        const run = await attempt(ceiling.name, () => ceiling.run(round));
        if (run) runs.push(run);
        else ceilings.splice(ceilings.indexOf(ceiling), 1);
      }
    }
  } finally {
    for (const system of systems) await system.close().catch(() => undefined);
    await target?.stop();
    await nbdSource?.stop();
  }
  return { runs, skipped, failures };
}

/** `p`, or an Error(`what`) when it has not settled within `ms`. */
function withDeadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(what)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}
