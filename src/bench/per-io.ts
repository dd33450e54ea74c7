import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import { GCProfiler, getHeapStatistics } from 'node:v8';
import { processCpuTimes, round } from './cpu.js';
import type { PerIoCost, SideCostPerIo } from './types.js';

/**
 * Per-I/O costs of one measurement window, per side (initiator, target):
 *
 * - user and system CPU: this process from process.cpuUsage(), other processes from the utime
 *   and stime of /proc/PID/stat (10 ms ticks: a 1 s window of a busy process is within ~1 %).
 * - system calls: perf counting the raw_syscalls:sys_enter tracepoint of the side's processes
 *   (`perf stat -p`, all threads, inherited by threads and children made later). Counting a
 *   tracepoint costs the traced process a few tens of ns per call; `strace -c` would stop it on
 *   every call (ptrace), slowing an I/O-bound process several times over, so it is not used.
 *   Where perf cannot count it (no perf, no tracefs, not root), the figure is null with perf's
 *   reason.
 * - context switches (voluntary + involuntary): this process from getrusage
 *   (process.resourceUsage(), every thread, live or ended); other processes from the same perf
 *   (its context-switches software event), because /proc only has per-thread counts and those of
 *   a thread that ends inside the window (nbdkit's connection threads) vanish; without perf,
 *   null.
 * - vof's in-process initiator only: JS heap bytes allocated and GCs, see HeapWindow.
 */

/** The tracepoint perf counts: every system call entry, whatever the call. */
const SYSCALL_EVENT = 'raw_syscalls:sys_enter';
const SWITCH_EVENT = 'context-switches';

let perfProbe: string | null | undefined;

/** Null when perf can count system calls here; otherwise why not. Probed once (a short `perf stat -- true`). */
export function syscallCountingUnavailable(): string | null {
  if (perfProbe !== undefined) return perfProbe;
  // Switching perf's counters on and off patches the kernel's text (its static keys, e.g. the
  // context-switch event's in __schedule); under QEMU TCG the soft-RoCE VM's 6.12 guest can take
  // that patching's int3 as a fatal Oops (seen in the VDUSE bench run). VOF_BENCH_PERF=off leaves
  // the system-call and context-switch figures out, with this reason, and keeps the rest.
  if (process.env.VOF_BENCH_PERF === 'off') return (perfProbe = 'perf switched off (VOF_BENCH_PERF=off)');
  const r = spawnSync('perf', ['stat', '-x,', '-e', SYSCALL_EVENT, '--', 'true'], { encoding: 'utf8', timeout: 10_000 });
  if (r.error) perfProbe = `perf cannot run (${(r.error as NodeJS.ErrnoException).code ?? r.error.message}): install linux-perf`;
  else perfProbe = parsePerfCount(r.stderr) === null ? `perf cannot count ${SYSCALL_EVENT}: ${r.stderr.trim().split('\n').slice(-2).join(' ').slice(0, 200)}` : null;
  return perfProbe;
}

/** The count of perf stat's CSV (-x,) line for `event`; `<not counted>` (never scheduled in the window) is 0. */
export function parsePerfCount(stderr: string, event = SYSCALL_EVENT): number | null {
  const line = stderr.split('\n').find((l) => l.split(',')[2] === event);
  if (!line) return null;
  const field = line.split(',')[0]!;
  if (field === '<not counted>') return 0;
  return /^\d+$/.test(field) ? Number(field) : null;
}

/**
 * perf stat attached to `pids` (system calls and context switches), started with its counters disabled (-D -1) and switched on and
 * off through its control descriptors (--control fd:3,4, answered with "ack"), so that the count
 * covers exactly the measurement window, not perf's start-up or the ramp. Opened ahead of the
 * window (during the ramp), read once at its end.
 */
export class PerfWindow {
  private readonly child: ChildProcess;
  private stderr = '';
  private readonly exited: Promise<void>;

  constructor(pids: readonly number[]) {
    this.child = spawn('perf', ['stat', '-x,', '-e', `${SYSCALL_EVENT},${SWITCH_EVENT}`, '-p', pids.join(','), '-D', '-1', '--control', 'fd:3,4'], { stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe'] });
    this.child.stderr!.on('data', (d: Buffer) => (this.stderr = (this.stderr + d.toString()).slice(-4000)));
    this.child.once('error', (e) => (this.stderr += `\n${e.message}`));
    this.exited = new Promise((r) => this.child.once('close', () => r()));
  }

  /** Sends a control command and waits for perf's ack; false if perf is gone or silent for 5 s. */
  private command(cmd: 'enable' | 'disable'): Promise<boolean> {
    const ack = this.child.stdio[4] as Readable;
    return new Promise((resolve) => {
      const done = (ok: boolean) => {
        clearTimeout(timer);
        ack.off('data', onAck);
        resolve(ok);
      };
      const onAck = () => done(true);
      const timer = setTimeout(() => done(false), 5000);
      ack.on('data', onAck);
      void this.exited.then(() => done(false));
      (this.child.stdio[3] as Writable).write(`${cmd}\n`);
    });
  }

  async start(): Promise<string | null> {
    return (await this.command('enable')) ? null : `perf stat did not start counting: ${this.stderr.trim().slice(-200)}`;
  }

  /** The system calls and context switches counted since start(), or perf's complaint. */
  async stop(): Promise<{ syscalls: number; contextSwitches: number } | string> {
    await this.command('disable');
    this.child.kill('SIGINT');
    await this.exited;
    const syscalls = parsePerfCount(this.stderr);
    const contextSwitches = parsePerfCount(this.stderr, SWITCH_EVENT);
    return syscalls === null || contextSwitches === null ? `perf stat gave no count: ${this.stderr.trim().slice(-200)}` : { syscalls, contextSwitches };
  }

  /** Ends perf if the window is abandoned (the run failed). */
  dispose(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }
}

/** Raw totals of one side over one window; null where unmeasured, with the reason in `unavailable`. */
export interface SideTotals {
  readonly userSec: number | null;
  readonly systemSec: number | null;
  readonly syscalls: number | null;
  readonly contextSwitches: number | null;
  readonly unavailable: Readonly<Record<string, string>>;
}

export const unmeasured = (why: string): SideTotals => ({
  userSec: null,
  systemSec: null,
  syscalls: null,
  contextSwitches: null,
  unavailable: { cpu: why, syscalls: why, contextSwitches: why },
});

/** Two sets of processes that form one side (fio and the vof nbd bridge): sums, null if either is null. */
export function addTotals(a: SideTotals, b: SideTotals): SideTotals {
  const add = (x: number | null, y: number | null) => (x === null || y === null ? null : x + y);
  return {
    userSec: add(a.userSec, b.userSec),
    systemSec: add(a.systemSec, b.systemSec),
    syscalls: add(a.syscalls, b.syscalls),
    contextSwitches: add(a.contextSwitches, b.contextSwitches),
    unavailable: { ...a.unavailable, ...b.unavailable },
  };
}

interface Counters {
  readonly userSec: number;
  readonly systemSec: number;
  /** This process only (getrusage); other processes' come from perf. */
  readonly contextSwitches: number | null;
}

/** This process, every thread: getrusage through Node. */
function selfCounters(): Counters {
  const u = process.cpuUsage();
  const r = process.resourceUsage();
  return { userSec: u.user / 1e6, systemSec: u.system / 1e6, contextSwitches: r.voluntaryContextSwitches + r.involuntaryContextSwitches };
}

/** Other processes' CPU, summed, from /proc; null if one of them is gone. */
function processCounters(pids: readonly number[]): Counters | null {
  let userSec = 0;
  let systemSec = 0;
  for (const pid of pids) {
    const cpu = processCpuTimes(pid);
    if (cpu === null) return null;
    userSec += cpu.user;
    systemSec += cpu.system;
  }
  return { userSec, systemSec, contextSwitches: null };
}

/**
 * One side's CPU, context switches and system calls over a measurement window: construct it
 * before the window (it starts perf, attached but not counting), start() at the window's start,
 * stop() at its end. `pids` null means this process.
 */
export class SideWindow {
  private readonly perf: PerfWindow | null;
  private readonly perfUnavailable: string | null;
  private c0: Counters | null = null;
  private startFailed: string | null = null;

  constructor(private readonly pids: readonly number[] | null) {
    this.perfUnavailable = syscallCountingUnavailable();
    this.perf = this.perfUnavailable === null ? new PerfWindow(pids ?? [process.pid]) : null;
  }

  private read(): Counters | null {
    return this.pids === null ? selfCounters() : processCounters(this.pids);
  }

  async start(): Promise<void> {
    if (this.perf) this.startFailed = await this.perf.start();
    this.c0 = this.read();
  }

  async stop(): Promise<SideTotals> {
    const c1 = this.read();
    const counted = this.startFailed ?? (this.perf ? await this.perf.stop() : this.perfUnavailable!);
    this.dispose();
    const unavailable: Record<string, string> = {};
    if (typeof counted === 'string') unavailable.syscalls = counted;
    const c0 = this.c0;
    const lost = c0 === null || c1 === null;
    if (lost) unavailable.cpu = 'the process ended during the measurement';
    // This process's switches from getrusage, other processes' from perf (see the top of this file).
    let contextSwitches: number | null = null;
    if (this.pids === null) contextSwitches = lost ? null : c1.contextSwitches! - c0.contextSwitches!;
    else if (typeof counted !== 'string') contextSwitches = counted.contextSwitches;
    if (contextSwitches === null) {
      unavailable.contextSwitches = lost
        ? unavailable.cpu!
        : "needs perf: /proc has only per-thread counts, which miss the threads that start and end inside the window (nbdkit's per connection)";
    }
    return {
      userSec: lost ? null : c1.userSec - c0.userSec,
      systemSec: lost ? null : c1.systemSec - c0.systemSec,
      syscalls: typeof counted === 'string' ? null : counted.syscalls,
      contextSwitches,
      unavailable,
    };
  }

  dispose(): void {
    this.perf?.dispose();
  }
}

/**
 * JS heap bytes allocated, and GCs, in this process over a window. Node 20 has no allocated-bytes
 * counter (v8.getHeapStatistics() gives the heap in use, not what went through it, and
 * process.memoryUsage() deltas miss whatever a GC freed in between), so the allocation is
 * reconstructed: the heap in use grows only by allocation between collections, so allocated =
 * used(end) − used(start) + Σ over the window's GCs of used(before GC) − used(after GC), with
 * each GC's before/after taken by v8.GCProfiler (which also counts the GCs). Buffers' backing
 * stores live outside the JS heap and are not counted; the figure includes the bench loop's own
 * promises and histogram records, the same for every run.
 */
export class HeapWindow {
  private readonly profiler = new GCProfiler();
  private used0 = 0;

  start(): void {
    this.used0 = getHeapStatistics().used_heap_size;
    this.profiler.start();
  }

  stop(): { allocatedBytes: number; gcs: number } {
    const { statistics } = this.profiler.stop();
    const used1 = getHeapStatistics().used_heap_size;
    const freed = statistics.reduce((sum, gc) => sum + gc.beforeGC.heapStatistics.usedHeapSize - gc.afterGC.heapStatistics.usedHeapSize, 0);
    return { allocatedBytes: used1 - this.used0 + freed, gcs: statistics.length };
  }
}

function perIoSide(t: SideTotals, ios: number, side: 'initiator' | 'target', unavailable: Record<string, string>): SideCostPerIo {
  for (const [k, why] of Object.entries(t.unavailable)) unavailable[`${side}.${k}`] = why;
  const per = (x: number | null, scale = 1) => (x === null || ios <= 0 ? null : round((x * scale) / ios));
  return { userUs: per(t.userSec, 1e6), systemUs: per(t.systemSec, 1e6), syscalls: per(t.syscalls), contextSwitches: per(t.contextSwitches) };
}

/** The per-I/O figures of a run from its sides' totals (and, for vof, the heap window's). */
export function perIoCost(ios: number, initiator: SideTotals, target: SideTotals, heap: { allocatedBytes: number; gcs: number } | string): PerIoCost {
  const unavailable: Record<string, string> = {};
  const cost = { initiator: perIoSide(initiator, ios, 'initiator', unavailable), target: perIoSide(target, ios, 'target', unavailable) };
  if (typeof heap === 'string') unavailable.heap = heap;
  const per = (x: number) => (ios > 0 ? round(x / ios) : null);
  return { ...cost, heapBytes: typeof heap === 'string' ? null : per(heap.allocatedBytes), gcs: typeof heap === 'string' ? null : per(heap.gcs), unavailable };
}
