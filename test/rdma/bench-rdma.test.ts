import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { needs } from '../helpers/deps.js';
import { vofBench } from '../helpers/vof-bench.js';
import type { BenchReport } from '../../src/bench/types.js';
import { rdmaAddress } from './rdma-env.js';

// The keyed part of `vof bench --anchors --rdma vm` as the host runs it inside the soft-RoCE VM
// (`vof bench --vm-part`), cut to one short workload: vof over RDMA and TCP, perftest, and the
// kernel's NVMe-oF over RDMA and TCP through bench/nvmeof.sh. Structure and positive figures only.
// fio, perftest and nvme-cli: installed on the host (whose root the VM shares) before the VM starts.
const anchors = needs('test/rdma/bench-rdma.test.ts (vof bench keyed part)', ['bench-rdma-anchors']);

describe.skipIf(!anchors.ok)(`vof bench keyed part (--vm-part) on rxe${anchors.skipNote}`, () => {
  const dir = mkdtempSync(join(tmpdir(), 'vof-bench-rdma-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('measures vof-rdma, vof-tcp, perftest, nvmeof-rdma and nvmeof-tcp', async () => {
    rdmaAddress(); // fails loudly outside the harness
    const out = join(dir, 'vm.json');
    const r = await vofBench(['--vm-part', '--anchors', '--quick', '--rw', 'randread', '--qd', '4', '--json', out], 540_000);
    expect(r.code, `${r.stderr}\n${r.stdout}`).toBe(0);
    const report = JSON.parse(readFileSync(out, 'utf8')) as BenchReport;
    for (const system of ['vof-rdma', 'vof-tcp', 'nvmeof-rdma', 'nvmeof-tcp']) {
      const run = report.runs.find((x) => x.system === system);
      expect(run, system).toBeDefined();
      expect(run!.environment).toBe('vm');
      expect(run!.workload).toEqual({ rw: 'randread', bs: 4096, qd: 4 });
      expect(run!.iops, system).toBeGreaterThan(0);
      expect(run!.latencyUs!.p99, system).toBeGreaterThan(0);
      expect(run!.cpu.initiatorSec, system).toBeGreaterThan(0);
    }
    for (const rw of ['rdma-write', 'rdma-read']) expect(report.runs.find((x) => x.system === 'perftest' && x.workload.rw === rw)?.mbps, rw).toBeGreaterThan(0);
    // ib_send_lat either ran or says why not.
    const lat = report.runs.find((x) => x.workload.rw === 'send-lat');
    if (!lat) expect(report.skipped.find((s) => s.system === 'perftest ib_send_lat')?.reason).toBeTruthy();
    expect(report.skipped.filter((s) => s.reason.startsWith('FAILED'))).toEqual([]);
    expect(report.ratios.find((x) => x.system === 'vof-rdma' && x.anchor === 'nvmeof-rdma')?.iops).toBeGreaterThan(0);
    expect(report.ratios.find((x) => x.system === 'vof-rdma' && x.anchor === 'vof-tcp')?.iops).toBeGreaterThan(0);
  }, 600_000);
});
