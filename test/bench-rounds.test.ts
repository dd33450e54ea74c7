import { describe, expect, it, vi } from 'vitest';
import { vofBench } from './helpers/vof-bench.js';
import { parsePerfCount, perIoCost } from '../src/bench/per-io.js';
import { computeRatios, formatSpread } from '../src/bench/report.js';
import { median, medianOrNull, roundOrder, spread, summarizeRuns } from '../src/bench/rounds.js';
import type { BenchRun, PerIoCost } from '../src/bench/types.js';

const cpu = { initiatorSec: 1, targetSec: 1, initiatorSecPerGB: 1, targetSecPerGB: 1, initiatorSecPerMillionIos: 1, targetSecPerMillionIos: 1 };
const run = (system: string, round: number, iops: number, p99: number, perIo?: PerIoCost): BenchRun => ({
  system, round, environment: 'host', workload: { rw: 'randread', bs: 4096, qd: 1 }, seconds: 1, ios: iops, iops, mbps: (iops * 4096) / 1e6,
  latencyUs: { p50: p99 / 2, p99, p999: p99 * 2 }, cpu, ...(perIo ? { perIo } : {}),
});

describe('rounds: median, spread and order', () => {
  it('takes the median of odd and even counts, unsorted', () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(median([7])).toBe(7);
    expect(() => median([])).toThrow();
    expect(medianOrNull([null, 5, null, 1, 3])).toBe(3);
    expect(medianOrNull([null])).toBeNull();
  });

  it('gives median, min and max to four significant digits', () => {
    expect(spread([10, 30, 20])).toEqual({ median: 20, min: 10, max: 30 });
    expect(spread([1.23456, 2])).toEqual({ median: 1.617, min: 1.235, max: 2 });
    expect(formatSpread({ median: 20, min: 10, max: 30 })).toBe('20 (10–30)');
    expect(formatSpread({ median: 5, min: 5, max: 5 })).toBe('5');
  });

  it('rotates the systems one place per round, so that none always runs first', () => {
    const systems = ['vof-tcp', 'vof-nbd', 'nbdkit'];
    expect(roundOrder(systems, 1)).toEqual(['vof-tcp', 'vof-nbd', 'nbdkit']);
    expect(roundOrder(systems, 2)).toEqual(['vof-nbd', 'nbdkit', 'vof-tcp']);
    expect(roundOrder(systems, 3)).toEqual(['nbdkit', 'vof-tcp', 'vof-nbd']);
    expect(roundOrder(systems, 4)).toEqual(systems);
    expect(roundOrder([], 2)).toEqual([]);
  });
});

describe('rounds: ratios and summaries', () => {
  it('a ratio is the median of per-round ratios (not the ratio of medians), with min and max', () => {
    // Per round: 100/100 = 1, 200/400 = 0.5, 300/100 = 3; medians alone would give 200/100 = 2.
    const runs = [run('vof-tcp', 1, 100, 10), run('nbdkit', 1, 100, 20), run('nbdkit', 2, 400, 10), run('vof-tcp', 2, 200, 30), run('vof-tcp', 3, 300, 40), run('nbdkit', 3, 100, 10)];
    const [r, ...rest] = computeRatios(runs);
    expect(rest).toEqual([]);
    expect(r).toMatchObject({ system: 'vof-tcp', anchor: 'nbdkit', rounds: 3, iops: 1, min: { iops: 0.5, p99: 0.5 }, max: { iops: 3, p99: 4 }, p99: 3 });
    expect(r!.mbps).toBe(1);
    expect(r!.perRound.map((x) => [x.round, x.iops])).toEqual([[1, 1], [2, 0.5], [3, 3]]);
  });

  it('pairs rounds by number: a round the anchor lacks is left out, and counted out', () => {
    const r = computeRatios([run('vof-tcp', 1, 100, 10), run('vof-tcp', 2, 300, 10), run('nbdkit', 2, 100, 10)]);
    expect(r).toHaveLength(1);
    expect(r[0]).toMatchObject({ rounds: 1, iops: 3, min: { iops: 3 }, max: { iops: 3 } });
  });

  it('the VDUSE systems: vof-vduse[-rdma] against the library on its transport, qsd-vduse and the kernel target', () => {
    const systems = ['vof-vduse', 'vof-vduse-rdma', 'vof-tcp', 'vof-rdma', 'qsd-vduse', 'nvmeof-tcp', 'nvmeof-rdma-null'];
    const pairs = computeRatios(systems.map((s) => run(s, 1, 100, 10))).map((r) => `${r.system}/${r.anchor}`);
    expect(pairs).toEqual(expect.arrayContaining(['vof-vduse/vof-tcp', 'vof-vduse-rdma/vof-rdma', 'vof-vduse/qsd-vduse', 'vof-vduse-rdma/qsd-vduse', 'vof-vduse/nvmeof-tcp']));
    // Not across transports, and a file export not against null_blk.
    expect(pairs).not.toContain('vof-vduse-rdma/vof-tcp');
    expect(pairs).not.toContain('vof-vduse/vof-rdma');
    expect(pairs).not.toContain('vof-vduse/nvmeof-rdma-null');
  });

  it('vof-nbd-kernel: against the library over TCP, fio\'s nbd engine on the same bridge, vof-vduse and the kernel targets', () => {
    const systems = ['vof-nbd-kernel', 'vof-nbd', 'vof-vduse', 'vof-tcp', 'vof-rdma', 'qsd-vduse', 'nvmeof-tcp', 'nvmeof-tcp-null'];
    const pairs = computeRatios(systems.map((s) => run(s, 1, 100, 10))).map((r) => `${r.system}/${r.anchor}`);
    expect(pairs).toEqual(expect.arrayContaining(['vof-nbd-kernel/vof-tcp', 'vof-nbd-kernel/vof-nbd', 'vof-vduse/vof-nbd-kernel', 'vof-nbd-kernel/qsd-vduse', 'vof-nbd-kernel/nvmeof-tcp']));
    // One direction per pair, not across transports, a file export not against null_blk.
    expect(pairs).not.toContain('vof-nbd/vof-nbd-kernel');
    expect(pairs).not.toContain('vof-nbd-kernel/vof-vduse');
    expect(pairs).not.toContain('vof-nbd-kernel/vof-rdma');
    expect(pairs).not.toContain('vof-nbd-kernel/nvmeof-tcp-null');
  });

    it('summarizes each system over its rounds, per-I/O figures as medians of the known ones', () => {
    const side = (userUs: number | null) => ({ userUs, systemUs: 1, syscalls: null, contextSwitches: 2 });
    const cost = (u: number | null, heap: number | null): PerIoCost => ({ initiator: side(u), target: side(1), heapBytes: heap, gcs: 0.001, unavailable: heap === null ? { heap: 'why' } : {} });
    const [s, t] = summarizeRuns([run('vof-tcp', 1, 100, 10, cost(1, 100)), run('nbdkit', 1, 50, 5), run('vof-tcp', 2, 300, 30, cost(null, null)), run('vof-tcp', 3, 200, 20, cost(3, 300))]);
    expect(s).toMatchObject({ system: 'vof-tcp', rounds: 3, iops: { median: 200, min: 100, max: 300 }, p99Us: { median: 20, min: 10, max: 30 } });
    expect(s!.perIo).toMatchObject({ initiator: { userUs: 2, systemUs: 1, syscalls: null, contextSwitches: 2 }, heapBytes: 200, gcs: 0.001, unavailable: { heap: 'why' } });
    expect(t).toMatchObject({ system: 'nbdkit', rounds: 1, perIo: null });
  });
});

describe('per-I/O costs', () => {
  it('reads perf stat CSV counts, <not counted> as none', () => {
    const out = 'Events enabled\n1074,,raw_syscalls:sys_enter,25124271,100.00,,\n<not counted>,,context-switches,0,100.00,,\n';
    expect(parsePerfCount(out)).toBe(1074);
    expect(parsePerfCount(out, 'context-switches')).toBe(0);
    expect(parsePerfCount('perf: permission denied')).toBeNull();
  });

  it('divides each side by the I/Os, CPU in µs, and says why a figure is missing', () => {
    const c = perIoCost(
      1000,
      { userSec: 0.01, systemSec: 0.002, syscalls: 3000, contextSwitches: 500, unavailable: {} },
      { userSec: null, systemSec: null, syscalls: null, contextSwitches: null, unavailable: { cpu: 'kernel' } },
      { allocatedBytes: 64_000, gcs: 2 },
    );
    expect(c.initiator).toEqual({ userUs: 10, systemUs: 2, syscalls: 3, contextSwitches: 0.5 });
    expect(c.target).toEqual({ userUs: null, systemUs: null, syscalls: null, contextSwitches: null });
    expect(c).toMatchObject({ heapBytes: 64, gcs: 0.002, unavailable: { 'target.cpu': 'kernel' } });
    expect(perIoCost(10, c as never, c as never, 'fio').unavailable.heap).toBe('fio');
  });
});

describe('perf switched off', () => {
  it('VOF_BENCH_PERF=off: no perf, the per-I/O figures say why', async () => {
    vi.resetModules();
    process.env.VOF_BENCH_PERF = 'off';
    try {
      const { syscallCountingUnavailable } = await import('../src/bench/per-io.js');
      expect(syscallCountingUnavailable()).toBe('perf switched off (VOF_BENCH_PERF=off)');
    } finally {
      delete process.env.VOF_BENCH_PERF;
      vi.resetModules();
    }
  });
});

describe('vof bench --systems', () => {
  it('an unknown name is a usage error listing the names (exit 2)', async () => {
    const r = await vofBench(['--systems', 'vof-tcp,nope', '--rdma', 'off'], 30_000);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--systems takes a comma-separated list of vof-tcp, .*qsd-vduse.*; unknown: nope/);
  });

  it('runs only the systems named', async () => {
    const r = await vofBench(['--quick', '--rdma', 'off', '--systems', 'vof-null', '--rw', 'randread', '--time', '0.3', '--ramp', '0', '--size', '1m'], 60_000);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^vof-null +host +randread 4k qd1 /m);
    expect(r.stdout).not.toMatch(/^vof-tcp /m);
  }, 60_000);
});

describe('vof bench --rounds', () => {
  it.each([['0'], ['-1'], ['x'], ['1.5']])('--rounds=%s is a usage error (exit 2)', async (n) => {
    const r = await vofBench([`--rounds=${n}`, '--rdma', 'off'], 30_000);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--rounds must be an integer from 1 to 100/);
  });

  it('--quick defaults to one round and says the figures are a single pass', async () => {
    const r = await vofBench(['--quick', '--rdma', 'off', '--rw', 'randread', '--time', '0.3', '--ramp', '0', '--size', '1m'], 60_000);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/a single pass per system and workload \(--rounds 1\)/);
  }, 60_000);
});
