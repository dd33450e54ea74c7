import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { needs } from './helpers/deps.js';
import { vofBench } from './helpers/vof-bench.js';
import { computeRatios } from '../src/bench/report.js';
import type { BenchReport, BenchRun } from '../src/bench/types.js';
import { DEFAULT_WORKLOADS, parseSize, workloadMatrix } from '../src/bench/workloads.js';

// The anchors (fio, nbdkit, iperf3): `vof bench` installs them itself as root, and so does `npm test`.
const anchors = needs('test/bench.test.ts (vof bench --quick --anchors)', ['bench-anchors']);

describe.skipIf(!anchors.ok)(`vof bench --quick --anchors (host: vof over TCP, vof nbd, nbdkit, iperf3)${anchors.skipNote}`, () => {
  const dir = mkdtempSync(join(tmpdir(), 'vof-bench-test-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  let result: Awaited<ReturnType<typeof vofBench>>;
  let report: BenchReport;

  it('runs end to end, writes the JSON report and the chart', async () => {
    result = await vofBench(['--quick', '--anchors', '--rdma', 'off', '--json', join(dir, 'out.json'), '--chart', join(dir, 'out.svg')]);
    expect(result.code, result.stderr + result.stdout).toBe(0);
    report = JSON.parse(readFileSync(join(dir, 'out.json'), 'utf8')) as BenchReport;
    const svg = readFileSync(join(dir, 'out.svg'), 'utf8');
    expect(svg).toMatch(/^<svg[^>]*xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
    for (const system of ['vof-tcp', 'nbdkit']) expect(svg).toContain(system);
    expect(result.stdout).toMatch(/vof-tcp ÷ nbdkit/);
  }, 180_000);

  it('has the documented top level and machine', () => {
    expect(report.version).toBe(1);
    expect(Object.keys(report)).toEqual(expect.arrayContaining(['machine', 'runs', 'ratios', 'skipped', 'settings']));
    expect(report.machine.cpus).toBeGreaterThan(0);
    expect(report.machine.kernel).toBeTruthy();
  });

  it('has one run per system and workload, every figure positive', () => {
    for (const system of ['vof-tcp', 'nbdkit']) {
      const runs = report.runs.filter((r) => r.system === system);
      expect(runs.map((r) => r.workload)).toEqual(DEFAULT_WORKLOADS);
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
    const iperf = report.runs.find((r) => r.system === 'iperf3');
    expect(iperf?.mbps).toBeGreaterThan(0);
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

  it('gives vof ÷ nbdkit on every workload and vof ÷ the iperf3 ceiling', () => {
    const same = report.ratios.filter((r) => r.kind === 'same-workload' && r.system === 'vof-tcp' && r.anchor === 'nbdkit');
    expect(same).toHaveLength(DEFAULT_WORKLOADS.length);
    for (const r of same) {
      expect(r.iops).toBeGreaterThan(0);
      expect(r.mbps).toBeGreaterThan(0);
      expect(r.p99).toBeGreaterThan(0);
    }
    expect(report.ratios.filter((r) => r.kind === 'ceiling' && r.anchor === 'iperf3' && r.system === 'vof-tcp')).toHaveLength(DEFAULT_WORKLOADS.length);
  });

  it('reports vof-nbd as run or as skipped with a reason, never silently; --rdma off measures no RDMA', () => {
    const nbdRuns = report.runs.filter((r) => r.system === 'vof-nbd');
    const nbdSkip = report.skipped.find((s) => s.system === 'vof-nbd');
    if (nbdRuns.length === 0) {
      expect(nbdSkip?.reason).toMatch(/nbd/);
      expect(result.stdout).toContain('SKIPPED vof-nbd');
    } else expect(nbdRuns).toHaveLength(DEFAULT_WORKLOADS.length);
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
      system, environment, workload: { rw, bs: 4096, qd: 1 }, seconds: 1, ios: iops, iops, mbps: (iops * 4096) / 1e6,
      latencyUs: { p50: p99 / 2, p99, p999: p99 * 2 },
      cpu: { initiatorSec: 1, targetSec: 1, initiatorSecPerGB: 1, targetSecPerGB: 1, initiatorSecPerMillionIos: 1, targetSecPerMillionIos: 1 },
    });
    const ratios = computeRatios([run('vof-tcp', 'host', 500, 40), run('nbdkit', 'host', 1000, 20), run('nvmeof-tcp', 'vm', 10, 1), run('vof-rdma', 'vm', 30, 3), run('vof-tcp', 'vm', 20, 4)]);
    const hostRatio = ratios.find((r) => r.system === 'vof-tcp' && r.environment === 'host');
    expect(hostRatio).toMatchObject({ anchor: 'nbdkit', iops: 0.5, p99: 2 });
    expect(ratios.filter((r) => r.environment === 'host')).toHaveLength(1);
    expect(ratios.find((r) => r.system === 'vof-rdma' && r.anchor === 'vof-tcp')).toMatchObject({ iops: 1.5, p99: 0.75 });
    expect(ratios.find((r) => r.system === 'vof-tcp' && r.anchor === 'nvmeof-tcp' && r.environment === 'vm')?.iops).toBe(2);
  });
});
