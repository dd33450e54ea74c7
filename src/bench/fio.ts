import { existsSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { blockRun, machineBusySeconds, processCpuSeconds, round } from './cpu.js';
import { addTotals, parsePerfCount, perIoCost, SideWindow, syscallCountingUnavailable, unmeasured, type SideTotals } from './per-io.js';
import type { ProgressLine } from './progress-line.js';
import { run, waitFor } from './tools.js';
import type { BenchRun, MeasuredRun, Workload } from './types.js';
import { workloadLabel } from './workloads.js';

export interface FioOptions extends MeasuredRun {
  readonly sizeBytes: number;
  /** Engine arguments: e.g. ['--ioengine=nbd', '--uri=nbd://…'] or ['--ioengine=libaio', '--direct=1', '--filename=/dev/nvme0n1']. */
  readonly engine: readonly string[];
  /** Where the target's CPU comes from: a process id, the whole machine minus fio ('machine'), or nothing. */
  readonly target: { pid: number } | 'machine' | null;
  /** Further processes that belong to the initiator side (e.g. the vof nbd bridge). */
  readonly initiatorPids?: readonly number[];
  readonly progress: ProgressLine;
  readonly note?: string;
}

interface FioPercentiles {
  readonly percentile?: Record<string, number>;
}
interface FioDir {
  readonly io_bytes: number;
  readonly total_ios: number;
  readonly runtime: number;
  readonly lat_ns?: FioPercentiles;
  readonly clat_ns?: FioPercentiles;
}
interface FioJob {
  readonly error: number;
  readonly read: FioDir;
  readonly write: FioDir;
  readonly usr_cpu: number;
  readonly sys_cpu: number;
  /** Context switches of the job over the measured runtime (fio clears it after the ramp). */
  readonly ctx: number;
  readonly elapsed: number;
}

let perfOutputs = 0;

/**
 * Runs fio once for a workload (one job, `iodepth` = qd, time-based, ramp first) and turns its
 * JSON into a BenchRun. Latency is fio's total latency (submission to completion,
 * lat_percentiles=1). The initiator's CPU is fio's usr+sys over its measured runtime, plus any
 * helper processes; the target's is read before and after and prorated to the measured runtime.
 *
 * Per-I/O costs: fio's user and system CPU and context switches are its own (its job, over the
 * measured runtime); its system calls are counted by perf wrapped around it with the counting
 * delayed by the ramp (-D), so the count also holds fio's last teardown calls and misses its
 * first ramp's start-up offset (tens of ms against a measurement of seconds). The target's and
 * the helpers' windows open a ramp after fio starts and close when it exits, the same span.
 */
export async function runFio(o: FioOptions): Promise<BenchRun> {
  const w = o.workload;
  const args = [
    '--name=vofbench',
    ...o.engine,
    `--rw=${w.rw}`,
    `--bs=${w.bs}`,
    `--iodepth=${w.qd}`,
    `--size=${o.sizeBytes}`,
    '--time_based=1',
    `--runtime=${o.timeSec}`,
    `--ramp_time=${o.rampSec}`,
    '--lat_percentiles=1',
    '--percentile_list=50:99:99.9',
    '--randrepeat=0',
    '--norandommap=1',
    '--numjobs=1',
    '--output-format=json',
  ];
  const label = `${o.system} ${workloadLabel(w)}`;
  const started = Date.now();
  const ticker = setInterval(() => o.progress.show(`${label}: fio ${((Date.now() - started) / 1000).toFixed(0)}/${o.rampSec + o.timeSec} s`), 250);
  const targetPid = o.target !== null && o.target !== 'machine' ? o.target.pid : null;
  const helpers0 = sumCpu(o.initiatorPids ?? []);
  const target0 = targetPid !== null ? processCpuSeconds(targetPid) : o.target === 'machine' ? machineBusySeconds() : null;
  const perfUnavailable = syscallCountingUnavailable();
  const perfOut = join(tmpdir(), `vof-bench-perf-${process.pid}-${perfOutputs++}.txt`);
  const [cmd, cmdArgs] = perfUnavailable === null ? ['perf', ['stat', '-x,', '-e', 'raw_syscalls:sys_enter', '-D', String(Math.round(o.rampSec * 1000)), '-o', perfOut, '--', 'fio', ...args]] : ['fio', args];
  // The other processes' windows: open (perf attached) now, counting from the ramp's end.
  const targetSide = targetPid !== null ? new SideWindow([targetPid]) : null;
  const helperSide = o.initiatorPids?.length ? new SideWindow(o.initiatorPids) : null;
  let windowsStarted: Promise<unknown> | null = null;
  const rampTimer = setTimeout(() => (windowsStarted = Promise.all([targetSide?.start(), helperSide?.start()])), o.rampSec * 1000);
  const wall0 = Date.now();
  let out: string;
  try {
    out = await run(cmd, cmdArgs, { timeoutMs: (o.rampSec + o.timeSec + 120) * 1000 });
    if (windowsStarted === null) throw new Error(`fio ended before its ramp did (${label})`);
  } catch (err) {
    targetSide?.dispose();
    helperSide?.dispose();
    rmSync(perfOut, { force: true });
    throw err;
  } finally {
    clearTimeout(rampTimer);
    clearInterval(ticker);
    o.progress.clear();
  }
  await windowsStarted;
  const [targetTotals, helperTotals] = await Promise.all([targetSide?.stop(), helperSide?.stop()]);
  const wall = (Date.now() - wall0) / 1000;
  const target1 = targetPid !== null ? processCpuSeconds(targetPid) : o.target === 'machine' ? machineBusySeconds() : null;
  const helpers1 = sumCpu(o.initiatorPids ?? []);
  let fioSyscalls: number | string = perfUnavailable ?? 'perf wrote no count';
  if (perfUnavailable === null) {
    try {
      fioSyscalls = parsePerfCount(readFileSync(perfOut, 'utf8')) ?? fioSyscalls;
    } catch {
      // No file: perf could not start fio's counting; the reason stays.
    } finally {
      rmSync(perfOut, { force: true });
    }
  }

  const json = JSON.parse(out.slice(out.indexOf('{'))) as { jobs: FioJob[] };
  const job = json.jobs[0]!;
  if (job.error) throw new Error(`fio reported error ${job.error} for ${label}`);
  const dir = job.read.total_ios >= job.write.total_ios ? job.read : job.write;
  const seconds = dir.runtime / 1000;
  const ios = job.read.total_ios + job.write.total_ios;
  const bytes = job.read.io_bytes + job.write.io_bytes;
  const pct = (dir.lat_ns?.percentile ?? dir.clat_ns?.percentile)!;
  const pick = (p: string) => round((pct[Object.keys(pct).find((k) => Number(k) === Number(p))!] ?? NaN) / 1000);
  const share = Math.min(1, seconds / Math.max(wall, seconds));
  const fioCpu = ((job.usr_cpu + job.sys_cpu) / 100) * seconds;
  const helperCpu = helpers0 !== null && helpers1 !== null ? (helpers1 - helpers0) * share : 0;
  const initiatorSec = fioCpu + helperCpu;
  let targetSec: number | null = null;
  if (target0 !== null && target1 !== null) {
    targetSec = (target1 - target0) * share;
    // 'machine': everything the machine did during the run, less what fio itself used.
    if (o.target === 'machine') targetSec = Math.max(0, targetSec - fioCpu);
  }
  const fioTotals: SideTotals = {
    userSec: (job.usr_cpu / 100) * seconds,
    systemSec: (job.sys_cpu / 100) * seconds,
    syscalls: typeof fioSyscalls === 'number' ? fioSyscalls : null,
    contextSwitches: job.ctx,
    unavailable: typeof fioSyscalls === 'number' ? {} : { syscalls: fioSyscalls },
  };
  const targetWhy = o.target === 'machine' ? 'the target is the kernel: no process of its own (its CPU is in cpu.targetSec, machine-wide)' : 'the target was not started by the bench';
  return blockRun({
    system: o.system,
    round: o.round,
    environment: o.environment,
    workload: w,
    seconds,
    ios,
    bytes,
    latencyUs: { p50: pick('50'), p99: pick('99'), p999: pick('99.9') },
    initiatorSec,
    targetSec,
    note: o.note,
    perIo: perIoCost(ios, helperTotals ? addTotals(fioTotals, helperTotals) : fioTotals, targetTotals ?? unmeasured(targetWhy), 'the initiator is fio, not this process: no JS heap to measure'),
  });
}

function sumCpu(pids: readonly number[]): number | null {
  let sum = 0;
  for (const pid of pids) {
    const s = processCpuSeconds(pid);
    if (s === null) return null;
    sum += s;
  }
  return sum;
}

/** A block system open for the whole environment, measured one workload pass at a time. */
export interface BlockSystem {
  readonly name: string;
  run(workload: Workload, round: number): Promise<BenchRun>;
  close(): Promise<void>;
}

/** A system driven by fio with fixed engine options; `close` ends whatever serves it. */
export function fioSystem(ctx: Omit<FioOptions, 'workload' | 'round'>, close: () => Promise<void>): BlockSystem {
  return { name: ctx.system, run: (workload, round) => runFio({ ...ctx, workload, round }), close };
}

/**
 * fio (libaio, O_DIRECT) on a kernel block device (/dev/vdX, /dev/nbdN) that `setUp` brings up,
 * once it exists; `stop` tears it down when the bench is done with it, or at once if it never
 * came (or `setUp` failed half-way).
 */
export async function fioOnKernelDevice(
  ctx: Omit<FioOptions, 'workload' | 'round' | 'system' | 'engine' | 'target' | 'initiatorPids' | 'note'>,
  system: string,
  setUp: () => Promise<string>,
  stop: () => Promise<void>,
  sides: (dev: string) => Pick<FioOptions, 'target' | 'initiatorPids' | 'note'>,
): Promise<BlockSystem> {
  let dev: string;
  try {
    dev = await setUp();
    await waitFor(`${dev}`, () => existsSync(dev), 60_000);
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
  return fioSystem({ ...ctx, system, engine: ['--ioengine=libaio', '--direct=1', `--filename=${dev}`], ...sides(dev) }, stop);
}
