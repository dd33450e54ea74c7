import { blockRun, machineBusySeconds, processCpuSeconds, round } from './cpu.js';
import type { ProgressLine } from './progress-line.js';
import { run } from './tools.js';
import type { BenchRun, Environment, Workload } from './types.js';
import { workloadLabel } from './workloads.js';

export interface FioOptions {
  readonly system: string;
  readonly environment: Environment;
  readonly workload: Workload;
  readonly rampSec: number;
  readonly timeSec: number;
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
  readonly elapsed: number;
}

/**
 * Runs fio once for a workload (one job, `iodepth` = qd, time-based, ramp first) and turns its
 * JSON into a BenchRun. Latency is fio's total latency (submission to completion,
 * lat_percentiles=1). The initiator's CPU is fio's usr+sys over its measured runtime, plus any
 * helper processes; the target's is read before and after and prorated to the measured runtime.
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
  const wall0 = Date.now();
  let out: string;
  try {
    out = await run('fio', args, { timeoutMs: (o.rampSec + o.timeSec + 120) * 1000 });
  } finally {
    clearInterval(ticker);
    o.progress.clear();
  }
  const wall = (Date.now() - wall0) / 1000;
  const target1 = targetPid !== null ? processCpuSeconds(targetPid) : o.target === 'machine' ? machineBusySeconds() : null;
  const helpers1 = sumCpu(o.initiatorPids ?? []);

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
  return blockRun({
    system: o.system,
    environment: o.environment,
    workload: w,
    seconds,
    ios,
    bytes,
    latencyUs: { p50: pick('50'), p99: pick('99'), p999: pick('99.9') },
    initiatorSec,
    targetSec,
    note: o.note,
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

/** runFio for each workload in turn. */
export async function runFioWorkloads(o: Omit<FioOptions, 'workload'> & { readonly workloads: readonly Workload[] }): Promise<BenchRun[]> {
  const runs: BenchRun[] = [];
  for (const workload of o.workloads) runs.push(await runFio({ ...o, workload }));
  return runs;
}
