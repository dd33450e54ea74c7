import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { BenchReport } from '../../src/bench/types.js';
import { needs } from '../helpers/deps.js';
import { vofBench } from '../helpers/vof-bench.js';

// vof-nbd-kernel in the soft-RoCE VM (`vof bench --vm-part`): the kernel's nbd client attached to
// a `vof nbd` bridge, fio (libaio, O_DIRECT) on /dev/nbdN, beside vof-nbd (fio's nbd engine) and
// vof-tcp; detached after. Structure, positive figures and the teardown only.
// nbd-client and fio: from the bench-rdma-anchors group, installed on the host whose root the VM shares.
const anchors = needs('test/rdma/bench-nbd-kernel.test.ts (vof bench: the kernel nbd client)', ['bench-rdma-anchors']);

/** /sys/block/nbdN that have a size: connected NBD devices. */
const connectedNbd = () =>
  readdirSync('/sys/block')
    .filter((d) => /^nbd\d+$/.test(d))
    .filter((d) => Number(readFileSync(`/sys/block/${d}/size`, 'utf8').trim()) > 0 || existsSync(`/sys/block/${d}/pid`));

describe.skipIf(!anchors.ok)(`vof bench vof-nbd-kernel (--vm-part)${anchors.skipNote}`, () => {
  const dir = mkdtempSync(join(tmpdir(), 'vof-bench-nbdk-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('--systems vof-nbd-kernel,vof-nbd,vof-tcp: fio on /dev/nbdN of nbd-client on vof nbd, its ratios, detached after', async () => {
    const out = join(dir, 'nbdk.json');
    const systems = ['vof-nbd-kernel', 'vof-nbd', 'vof-tcp'];
    // perf off, as for the VDUSE systems (docs/BENCHMARK.md, VOF_BENCH_PERF): not what this tests.
    process.env.VOF_BENCH_PERF = 'off';
    const r = await vofBench(['--vm-part', '--anchors', '--quick', '--rw', 'randread,write', '--bs', '4k', '--qd', '4', '--systems', systems.join(','), '--json', out], 540_000).finally(
      () => delete process.env.VOF_BENCH_PERF,
    );
    expect(r.code, `${r.stderr}\n${r.stdout}`).toBe(0);
    const report = JSON.parse(readFileSync(out, 'utf8')) as BenchReport;
    expect(report.skipped, r.stderr).toEqual([]);
    expect([...new Set(report.runs.map((x) => x.system))].sort()).toEqual([...systems].sort());
    const runs = report.runs.filter((x) => x.system === 'vof-nbd-kernel');
    expect(runs.map((x) => x.workload.rw).sort()).toEqual(['randread', 'write']);
    for (const run of runs) {
      expect(run.iops).toBeGreaterThan(0);
      expect(run.latencyUs!.p99).toBeGreaterThan(0);
      // fio + the bridge on one side, the vof target on the other.
      expect(run.cpu.initiatorSec).toBeGreaterThan(0);
      expect(run.cpu.targetSec).toBeGreaterThan(0);
      expect(run.note).toMatch(/^\/dev\/nbd\d+: the kernel's nbd client \(nbd-client -connections 2, 4096-byte blocks\) on vof nbd over tcp;/);
    }
    for (const anchor of ['vof-tcp', 'vof-nbd']) expect(report.ratios.find((x) => x.system === 'vof-nbd-kernel' && x.anchor === anchor)?.iops, anchor).toBeGreaterThan(0);
    // Detached: no NBD device left connected (nbd-client -d ran, the size went back to 0).
    expect(connectedNbd()).toEqual([]);
  }, 600_000);
});
