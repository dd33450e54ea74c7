import { createHistogram, performance } from 'node:perf_hooks';
import type { BlockDevice } from '../initiator/blk/block-device.js';
import { blockRun, processCpuSeconds, round, selfCpuSeconds } from './cpu.js';
import type { ProgressLine } from './progress-line.js';
import type { BenchRun, MeasuredRun } from './types.js';
import { workloadLabel } from './workloads.js';
import { HeapWindow, perIoCost, SideWindow, unmeasured } from './per-io.js';
import { ResourceProbe } from './resource-probe.js';

export interface VofWorkloadOptions extends MeasuredRun {
  /** Bytes of the disk the offsets spread over (at most its capacity). */
  readonly spanBytes: number;
  /** The target's process id when the bench started it (its CPU is measured), else null. */
  readonly targetPid: number | null;
  /** The target's control socket when the bench started it (its registration counter), else null. */
  readonly targetControl: string | null;
  readonly progress: ProgressLine;
}

/**
 * xorshift32: cheap, deterministic offsets that do not cost the initiator measurable CPU. The
 * state lives in a Uint32Array: a uint32 above 2^30 in a plain variable is a heap number,
 * one allocation per offset in the initiator's measured heap.
 */
export function randomSource(seed: number): () => number {
  const x = new Uint32Array([seed >>> 0 || 1]);
  return () => {
    x[0] ^= x[0]! << 13;
    x[0] ^= x[0]! >>> 17;
    x[0] ^= x[0]! << 5;
    return x[0]!;
  };
}

/**
 * Runs one workload through the library: `qd` workers each keep one I/O in flight, for the ramp
 * and then the measurement. Only I/Os issued during the measurement count; their latencies go
 * into an HDR histogram (perf_hooks), and the initiator's (this process) and the target's CPU
 * time are read at the start and end of the measurement, as are their per-I/O costs (per-io.ts:
 * the initiator is this process, so its JS heap allocation and GCs are measured too).
 */
export async function runVofWorkload(dev: BlockDevice, o: VofWorkloadOptions): Promise<BenchRun> {
  const { workload: w } = o;
  const write = w.rw === 'randwrite' || w.rw === 'write';
  const random = w.rw.startsWith('rand');
  const slots = Math.floor(Math.min(o.spanBytes, dev.capacity) / w.bs);
  if (slots < 1) throw new Error(`the disk (${dev.capacity} bytes) is smaller than one ${w.bs}-byte I/O`);
  const next = randomSource(0x9e3779b9 ^ (w.bs * 31 + w.qd));
  let cursor = 0;
  const offset = () => (random ? next() % slots : cursor++ % slots) * w.bs;

  const histogram = createHistogram();
  let measuring = false;
  let stopping = false;
  let ios = 0;
  let measureStart = 0n;
  let cpuSelf0 = 0;
  let cpuTarget0: number | null = null;
  const probe = new ResourceProbe(o.targetPid, o.targetControl);
  // Opened now, during the ramp: perf attaches before the window and only counts inside it.
  const initiatorSide = new SideWindow(null);
  const targetSide = o.targetPid === null ? null : new SideWindow([o.targetPid]);
  const heap = new HeapWindow();

  // Each worker keeps one I/O in flight through the callback entry points (submitRead,
  // submitWrite), its callbacks made once: the initiator's per-I/O JS heap and GC columns
  // then measure vof itself, not a Promise per I/O of this loop's own.
  let failure: Error | null = null;
  const worker = (buf: Buffer) =>
    new Promise<void>((resolve) => {
      let counted = false;
      // The issue time in ms (performance.now()), in a typed array: not a heap number or BigInt per I/O.
      const t0 = new Float64Array(1);
      const issue = (): void => {
        if (stopping || failure) return resolve();
        counted = measuring;
        t0[0] = performance.now();
        try {
          if (write) dev.submitWrite(offset(), buf, done);
          else dev.submitRead(offset(), buf, done);
        } catch (err) {
          failure ??= err as Error;
          resolve();
        }
      };
      const done = (err: Error | null): void => {
        if (err) {
          failure ??= err;
          return resolve();
        }
        if (counted) {
          histogram.record(Math.max(1, Math.round((performance.now() - t0[0]!) * 1e6)));
          ios++;
        }
        issue();
      };
      issue();
    });
  const failed = () => {
    if (failure) throw failure;
  };

  const label = `${o.system} ${workloadLabel(w)}`;
  const started = Date.now();
  const ticker = setInterval(() => {
    const elapsed = (Date.now() - started) / 1000;
    if (!measuring) return o.progress.show(`${label}: ramp ${elapsed.toFixed(0)}/${o.rampSec} s`);
    probe.sample();
    const secs = Number(process.hrtime.bigint() - measureStart) / 1e9;
    o.progress.show(`${label}: ${(elapsed - o.rampSec).toFixed(0)}/${o.timeSec} s  ${Math.round(ios / secs)} IOPS  ${((ios * w.bs) / secs / 1e6).toFixed(1)} MB/s`);
  }, 250);

  const phases = new Promise<void>((resolve) => {
    setTimeout(async () => {
      await probe.start();
      await Promise.all([initiatorSide.start(), targetSide?.start()]);
      heap.start();
      cpuSelf0 = selfCpuSeconds();
      cpuTarget0 = o.targetPid === null ? null : processCpuSeconds(o.targetPid);
      measureStart = process.hrtime.bigint();
      measuring = true;
      setTimeout(() => {
        stopping = true;
        resolve();
      }, o.timeSec * 1000);
    }, o.rampSec * 1000);
  });
  // I/O buffers from the transport (RemoteDevice.allocateBuffer): registered memory the RDMA
  // target reads and writes in place, as an application that cares about speed would use;
  // plain Buffers on TCP.
  const buffers = Array.from({ length: w.qd }, () => dev.device.allocateBuffer(w.bs).fill(0xa5));
  const workers = buffers.map((b) => worker(b));
  try {
    // A failed I/O ends its worker: the others run on to the end of the window, then it is thrown.
    await phases;
    await Promise.all(workers);
    failed();
  } catch (err) {
    // The window is abandoned: its perf processes must not outlive the run.
    initiatorSide.dispose();
    targetSide?.dispose();
    throw err;
  } finally {
    stopping = true;
    clearInterval(ticker);
    o.progress.clear();
    await Promise.allSettled(workers);
    for (const b of buffers) dev.device.freeBuffer(b);
  }
  const seconds = Number(process.hrtime.bigint() - measureStart) / 1e9;
  const cpuSelf = selfCpuSeconds() - cpuSelf0;
  const cpuTargetNow = o.targetPid === null ? null : processCpuSeconds(o.targetPid);
  const heapUse = heap.stop();
  const [initiatorTotals, targetTotals] = await Promise.all([initiatorSide.stop(), targetSide?.stop() ?? unmeasured('the target was not started by the bench (--target URL)')]);
  const cpuTarget = cpuTarget0 === null || cpuTargetNow === null ? null : cpuTargetNow - cpuTarget0;
  const us = (p: number) => round(histogram.percentile(p) / 1000);
  const resources = await probe.stop();
  const run = blockRun({
    system: o.system,
    round: o.round,
    environment: o.environment,
    workload: w,
    seconds,
    ios,
    bytes: ios * w.bs,
    latencyUs: { p50: us(50), p99: us(99), p999: us(99.9) },
    initiatorSec: cpuSelf,
    targetSec: cpuTarget,
    perIo: perIoCost(ios, initiatorTotals, targetTotals, heapUse),
  });
  return { ...run, resources };
}
