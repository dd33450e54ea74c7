import { readFileSync } from 'node:fs';
import type { BenchRun, CpuCost, Environment, PerIoCost, Workload } from './types.js';

/**
 * Clock ticks per second of /proc's CPU times: USER_HZ, which the kernel fixes at 100 for user
 * space on x86 and arm (what `getconf CLK_TCK` prints). A constant rather than a getconf child:
 * spawning one under load cost the initiator ~0.7 s in a profile.
 */
const USER_HZ = 100;
const clockTicks = () => USER_HZ;

/** User and system CPU seconds (utime, stime) a process has used so far, from /proc/PID/stat; null if it is gone. */
export function processCpuTimes(pid: number): { user: number; system: number } | null {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // The command name (field 2) is in parentheses and may contain spaces: split after it.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
  return { user: Number(fields[11]) / clockTicks(), system: Number(fields[12]) / clockTicks() };
}

/** CPU seconds (utime + stime) a process has used so far; null if it is gone. */
export function processCpuSeconds(pid: number): number | null {
  const t = processCpuTimes(pid);
  return t === null ? null : t.user + t.system;
}

/** CPU seconds the whole machine has been busy (all CPUs, everything but idle and iowait), from /proc/stat. */
export function machineBusySeconds(): number {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0]!;
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, , , irq, softirq, steal] = v as [number, number, number, number, number, number, number, number];
  return (user + nice + system + irq + softirq + (steal ?? 0)) / clockTicks();
}

/** This process's own CPU seconds (user + system). */
export function selfCpuSeconds(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

/** Per-GB and per-million-I/O figures from raw CPU seconds. */
export function cpuCost(initiatorSec: number | null, targetSec: number | null, bytes: number, ios: number): CpuCost {
  const per = (sec: number | null, n: number, unit: number) => (sec === null || n <= 0 ? null : round((sec * unit) / n));
  return {
    initiatorSec: initiatorSec === null ? null : round(initiatorSec),
    targetSec: targetSec === null ? null : round(targetSec),
    initiatorSecPerGB: per(initiatorSec, bytes, 1e9),
    targetSecPerGB: per(targetSec, bytes, 1e9),
    initiatorSecPerMillionIos: per(initiatorSec, ios, 1e6),
    targetSecPerMillionIos: per(targetSec, ios, 1e6),
  };
}

/** Four significant digits: enough for a benchmark, short in JSON. */
export function round(x: number): number {
  return x === 0 || !Number.isFinite(x) ? x : Number(x.toPrecision(4));
}

/** A run of a block workload from its raw counts: rates, latency in µs and CPU cost. */
export function blockRun(r: {
  system: string;
  round: number;
  environment: Environment;
  workload: Workload;
  seconds: number;
  ios: number;
  bytes: number;
  latencyUs: BenchRun['latencyUs'];
  initiatorSec: number | null;
  targetSec: number | null;
  note?: string | undefined;
  perIo: PerIoCost;
}): BenchRun {
  return {
    system: r.system,
    round: r.round,
    environment: r.environment,
    workload: r.workload,
    seconds: round(r.seconds),
    ios: r.ios,
    iops: round(r.ios / r.seconds),
    mbps: round(r.bytes / r.seconds / 1e6),
    latencyUs: r.latencyUs,
    cpu: cpuCost(r.initiatorSec, r.targetSec, r.bytes, r.ios),
    ...(r.note ? { note: r.note } : {}),
    perIo: r.perIo,
  };
}
