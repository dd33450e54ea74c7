import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { needs } from './helpers/deps.js';
import { vofBench } from './helpers/vof-bench.js';
import { computeRatios } from '../src/bench/report.js';
import { roundOrder } from '../src/bench/rounds.js';
import type { BenchReport, BenchRun } from '../src/bench/types.js';
import { DEFAULT_WORKLOADS, parseSize, sameWorkload, workloadMatrix } from '../src/bench/workloads.js';

// Two workloads (not the default five) and no ramp keep two rounds of three systems within the
// time one round of the default matrix took.
const WORKLOADS = workloadMatrix('randread,write', '4k', '8');
const ROUNDS = 2;
// The anchors (fio, nbdkit, iperf3): `vof bench` installs them itself as root, and so does `npm test`.
const anchors = needs('test/bench.test.ts (vof bench --quick --anchors)', ['bench-anchors']);

describe.skipIf(!anchors.ok)(`vof bench --quick --anchors --rounds 2 (host: vof over TCP, vof nbd, nbdkit, iperf3)${anchors.skipNote}`, () => {
  const dir = mkdtempSync(join(tmpdir(), 'vof-bench-test-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  let result: Awaited<ReturnType<typeof vofBench>>;
  let report: BenchReport;

  it('runs end to end, writes the JSON report and the chart', async () => {
    result = await vofBench(['--quick', '--anchors', '--rdma', 'off', '--rounds', String(ROUNDS), '--ramp', '0', '--rw', 'randread,write', '--qd', '8', '--json', join(dir, 'out.json'), '--chart', join(dir, 'out.svg')]);
    expect(result.code, result.stderr + result.stdout).toBe(0);
    report = JSON.parse(readFileSync(join(dir, 'out.json'), 'utf8')) as BenchReport;
    const svg = readFileSync(join(dir, 'out.svg'), 'utf8');
    expect(svg).toMatch(/^<svg[^>]*xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
    for (const system of ['vof-tcp', 'nbdkit']) expect(svg).toContain(system);
    expect(result.stdout).toMatch(/vof-tcp ÷ nbdkit/);
  }, 180_000);

  it('has the documented top level and machine', () => {
    expect(report.version).toBe(2);
    expect(report.settings.rounds).toBe(ROUNDS);
    expect(Object.keys(report)).toEqual(expect.arrayContaining(['machine', 'runs', 'summaries', 'ratios', 'skipped', 'settings']));
    expect(report.machine.cpus).toBeGreaterThan(0);
    expect(report.machine.kernel).toBeTruthy();
  });

  it('has one run per system, workload and round, every figure positive', () => {
    for (const system of ['vof-tcp', 'nbdkit']) {
      const runs = report.runs.filter((r) => r.system === system);
      expect(runs.map((r) => [r.workload, r.round])).toEqual(WORKLOADS.flatMap((w) => [[w, 1], [w, 2]]));
      for (const r of runs) {
        expect(r.environment).toBe('host');
        expect(r.ios, `${system} ${r.workload.rw}`).toBeGreaterThan(0);
        expect(r.iops).toBeGreaterThan(0);
        expect(r.mbps).toBeGreaterThan(0);
        expect(r.latencyUs!.p50).toBeGreaterThan(0);
        expect(r.latencyUs!.p99).toBeGreaterThanOrEqual(r.latencyUs!.p50);
        expect(r.latencyUs!.p999).toBeGreaterThanOrEqual(r.latencyUs!.p99);
        // The bench started both targets: their CPU is measured, as is the initiator's.
        expect(r.cpu.initiatorSec).toBeGreaterThan(0);
        expect(r.cpu.targetSec).toBeGreaterThan(0);
        expect(r.cpu.initiatorSecPerGB).toBeGreaterThan(0);
        expect(r.cpu.targetSecPerMillionIos).toBeGreaterThan(0);
      }
    }
    const iperf = report.runs.filter((r) => r.system === 'iperf3');
    expect(iperf.map((r) => r.round)).toEqual([1, 2]);
    for (const r of iperf) expect(r.mbps).toBeGreaterThan(0);
  });

  it('interleaves the systems per workload, the order rotated each round', () => {
    for (const w of WORKLOADS) {
      const order = (round: number) => report.runs.filter((r) => sameWorkload(r.workload, w) && r.round === round).map((r) => r.system);
      const first = order(1);
      const nbd = report.runs.some((r) => r.system === 'vof-nbd');
      // The storage variants of the same target (the null device, nbdkit's memory plugin over NBD) come right after vof-tcp.
      expect(first).toEqual(['vof-tcp', 'vof-nbdsrc', 'vof-null', ...(nbd ? ['vof-nbd'] : []), 'nbdkit']);
      expect(order(2)).toEqual(roundOrder(first, 2));
      // Round 2 starts after round 1 ends: the runs array is in execution order.
      const rounds = report.runs.filter((r) => sameWorkload(r.workload, w)).map((r) => r.round);
      expect(rounds).toEqual([...rounds].sort());
    }
    expect(result.stdout).toMatch(/2 rounds per workload/);
    expect(result.stdout).toMatch(/vof-nbdsrc ÷ vof-tcp/);
    expect(result.stdout).toMatch(/vof-null ÷ vof-tcp/);
    expect(result.stdout).toMatch(/\d+ \(\d+–\d+\)/); // median (min–max)
  });

  it('summarizes each system and workload over its rounds', () => {
    const s = report.summaries.find((x) => x.system === 'vof-tcp' && sameWorkload(x.workload, WORKLOADS[0]!))!;
    const iops = report.runs.filter((r) => r.system === 'vof-tcp' && sameWorkload(r.workload, WORKLOADS[0]!)).map((r) => r.iops);
    expect(s.rounds).toBe(ROUNDS);
    expect(s.iops).toEqual({ median: Number(((iops[0]! + iops[1]!) / 2).toPrecision(4)), min: Math.min(...iops), max: Math.max(...iops) });
  });

  it('gives per-I/O costs: CPU on both sides, syscalls or the reason, heap and GCs for vof only', () => {
    for (const r of report.runs.filter((x) => x.system === 'vof-tcp' || x.system === 'nbdkit')) {
      const c = r.perIo!;
      expect(c, `${r.system} ${r.workload.rw}`).toBeTruthy();
      for (const side of [c.initiator, c.target]) {
        expect(side.userUs! + side.systemUs!).toBeGreaterThan(0);
        // perf may be missing or barred: then null, with the reason.
        if (side.syscalls === null) expect(Object.keys(c.unavailable).join()).toMatch(/syscalls/);
        else expect(side.syscalls).toBeGreaterThan(0);
        if (side.contextSwitches === null) expect(Object.keys(c.unavailable).join()).toMatch(/contextSwitches/);
        else expect(side.contextSwitches).toBeGreaterThanOrEqual(0);
      }
      if (r.system === 'vof-tcp') {
        expect(c.heapBytes).toBeGreaterThan(0);
        expect(c.gcs).toBeGreaterThanOrEqual(0);
      } else {
        expect(c.heapBytes).toBeNull();
        expect(c.unavailable.heap).toMatch(/fio/);
      }
    }
    expect(result.stdout).toMatch(/per I\/O/);
    expect(report.runs.find((r) => r.system === 'iperf3')!.perIo).toBeUndefined();
  });

  it('reports the target RSS of every vof run (TCP only: no registration counter in either process)', () => {
    for (const r of report.runs.filter((x) => x.system === 'vof-tcp')) {
      const rss = r.resources?.targetRssMiB;
      expect(rss, JSON.stringify(r)).toBeTruthy();
      expect(rss!.start).toBeGreaterThan(10);
      expect(rss!.peak).toBeGreaterThanOrEqual(Math.max(rss!.start, rss!.end));
      expect(r.resources!.targetRegistrations).toBeNull();
      expect(r.resources!.initiatorRegistrations).toBeNull();
    }
    expect(result.stdout).toMatch(/registered memory and target RSS/);
  });

  it('gives vof ÷ nbdkit on every workload and vof ÷ the iperf3 ceiling, each over both rounds', () => {
    const same = report.ratios.filter((r) => r.kind === 'same-workload' && r.system === 'vof-tcp' && r.anchor === 'nbdkit');
    expect(same).toHaveLength(WORKLOADS.length);
    for (const r of same) {
      expect(r.rounds).toBe(ROUNDS);
      expect(r.perRound.map((x) => x.round)).toEqual([1, 2]);
      expect(r.iops).toBeGreaterThan(0);
      expect(r.min.iops).toBeLessThanOrEqual(r.iops!);
      expect(r.max.iops).toBeGreaterThanOrEqual(r.iops!);
      expect(r.mbps).toBeGreaterThan(0);
      expect(r.p99).toBeGreaterThan(0);
    }
    expect(report.ratios.filter((r) => r.kind === 'ceiling' && r.anchor === 'iperf3' && r.system === 'vof-tcp')).toHaveLength(WORKLOADS.length);
  });

  it('reports vof-nbd as run or as skipped with a reason, never silently; --rdma off measures no RDMA', () => {
    const nbdRuns = report.runs.filter((r) => r.system === 'vof-nbd');
    const nbdSkip = report.skipped.find((s) => s.system === 'vof-nbd');
    if (nbdRuns.length === 0) {
      expect(nbdSkip?.reason).toMatch(/nbd/);
      expect(result.stdout).toContain('SKIPPED vof-nbd');
    } else expect(nbdRuns).toHaveLength(WORKLOADS.length * ROUNDS);
    expect(report.runs.some((r) => r.system === 'vof-rdma')).toBe(false);
  });
});

describe('bench workload matrix and ratios', () => {
  it('takes the cross product of --rw, --bs and --qd', () => {
    expect(workloadMatrix('randread,write', '4k,1m', '2')).toEqual([
      { rw: 'randread', bs: 4096, qd: 2 },
      { rw: 'randread', bs: 1 << 20, qd: 2 },
      { rw: 'write', bs: 4096, qd: 2 },
      { rw: 'write', bs: 1 << 20, qd: 2 },
    ]);
    expect(workloadMatrix()).toEqual(DEFAULT_WORKLOADS);
    expect(() => workloadMatrix('readwrite')).toThrow(/--rw/);
    expect(() => workloadMatrix(undefined, '1000')).toThrow(/512/);
    expect(parseSize('128k')).toBe(131072);
  });

  it('divides vof by the anchor of the same environment and workload only', () => {
    const run = (system: string, environment: 'host' | 'vm', iops: number, p99: number, rw = 'randread'): BenchRun => ({
      system, round: 1, environment, workload: { rw, bs: 4096, qd: 1 }, seconds: 1, ios: iops, iops, mbps: (iops * 4096) / 1e6,
      latencyUs: { p50: p99 / 2, p99, p999: p99 * 2 },
      cpu: { initiatorSec: 1, targetSec: 1, initiatorSecPerGB: 1, targetSecPerGB: 1, initiatorSecPerMillionIos: 1, targetSecPerMillionIos: 1 },
    });
    const ratios = computeRatios([run('vof-tcp', 'host', 500, 40), run('nbdkit', 'host', 1000, 20), run('nvmeof-tcp', 'vm', 10, 1), run('vof-rdma', 'vm', 30, 3), run('vof-tcp', 'vm', 20, 4)]);
    const hostRatio = ratios.find((r) => r.system === 'vof-tcp' && r.environment === 'host');
    expect(hostRatio).toMatchObject({ anchor: 'nbdkit', iops: 0.5, p99: 2 });
    expect(ratios.filter((r) => r.environment === 'host')).toHaveLength(1);
    expect(ratios.find((r) => r.system === 'vof-rdma' && r.anchor === 'vof-tcp')).toMatchObject({ iops: 1.5, p99: 0.75 });
    expect(ratios.find((r) => r.system === 'vof-tcp' && r.anchor === 'nvmeof-tcp' && r.environment === 'vm')?.iops).toBe(2);
    // The storage variants against the same transport over the file export; never against each other.
    const variants = computeRatios([run('vof-tcp', 'vm', 100, 4), run('vof-rdma', 'vm', 200, 2), run('vof-null', 'vm', 400, 1), run('vof-nbdsrc', 'vm', 50, 8), run('vof-null-rdma', 'vm', 800, 1)]);
    expect(variants.map((r) => `${r.system}÷${r.anchor}=${r.iops}`).sort()).toEqual(['vof-nbdsrc÷vof-tcp=0.5', 'vof-null-rdma÷vof-rdma=4', 'vof-null÷vof-tcp=4', 'vof-rdma÷vof-tcp=2']);
    // The kernel anchors like storage with like: the null devices with null_blk, the file exports with the file.
    const kernel = computeRatios([run('vof-tcp', 'vm', 100, 4), run('vof-null', 'vm', 400, 1), run('vof-null-rdma', 'vm', 800, 1), run('nvmeof-tcp', 'vm', 200, 2), run('nvmeof-tcp-null', 'vm', 800, 1), run('nvmeof-rdma-null', 'vm', 1600, 1)]);
    expect(kernel.filter((r) => r.anchor.startsWith('nvmeof')).map((r) => `${r.system}÷${r.anchor}=${r.iops}`).sort()).toEqual([
      'vof-null-rdma÷nvmeof-rdma-null=0.5',
      'vof-null-rdma÷nvmeof-tcp-null=1',
      'vof-null÷nvmeof-rdma-null=0.25',
      'vof-null÷nvmeof-tcp-null=0.5',
      'vof-tcp÷nvmeof-tcp=0.5',
    ]);
  });
});
