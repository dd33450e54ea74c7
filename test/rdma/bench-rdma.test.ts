import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { needs } from '../helpers/deps.js';
import { vofBench } from '../helpers/vof-bench.js';
import type { BenchReport } from '../../src/bench/types.js';
import { rdmaAddress } from './rdma-env.js';

// The keyed part of `vof bench --anchors --rdma vm` as the host runs it inside the soft-RoCE VM
// (`vof bench --vm-part`), cut to one short workload: vof over RDMA and TCP, perftest, and the
// kernel's NVMe-oF over RDMA and TCP through bench/nvmeof.sh, on the image and on null_blk, and
// the storage variants (vof-null, vof-null-rdma, vof-nbdsrc). Structure and positive figures only.
// fio, perftest, nvme-cli and nbdkit: installed on the host (whose root the VM shares) before the VM starts.
const anchors = needs('test/rdma/bench-rdma.test.ts (vof bench keyed part)', ['bench-rdma-anchors', 'nbdkit']);
const NVMEOF = ['nvmeof-rdma', 'nvmeof-tcp', 'nvmeof-rdma-null', 'nvmeof-tcp-null'];

describe.skipIf(!anchors.ok)(`vof bench keyed part (--vm-part) on rxe${anchors.skipNote}`, () => {
  const dir = mkdtempSync(join(tmpdir(), 'vof-bench-rdma-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('measures vof-rdma, vof-tcp, the storage variants, perftest and nvmeof-{rdma,tcp}[-null]', async () => {
    rdmaAddress(); // fails loudly outside the harness
    const out = join(dir, 'vm.json');
    // The VDUSE systems and vof-nbd have a test of their own below.
    const systems = ['vof-rdma', 'vof-tcp', 'vof-null', 'vof-null-rdma', 'vof-nbdsrc', ...NVMEOF, 'perftest'];
    const r = await vofBench(['--vm-part', '--anchors', '--quick', '--rw', 'randread', '--qd', '4', '--systems', systems.join(','), '--json', out], 540_000);
    expect(r.code, `${r.stderr}\n${r.stdout}`).toBe(0);
    const report = JSON.parse(readFileSync(out, 'utf8')) as BenchReport;
    for (const system of ['vof-rdma', 'vof-tcp', 'vof-null', 'vof-null-rdma', 'vof-nbdsrc', ...NVMEOF]) {
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
    // Every kernel system on its own controller: a device shared by two would measure one transport twice.
    const devices = NVMEOF.map((s) => / as (\/dev\/\S+) over nvme-(\w+)/.exec(report.runs.find((x) => x.system === s)!.note ?? '')?.slice(1).join(' '));
    expect(devices.map((d) => d?.split(' ')[1])).toEqual(['rdma', 'tcp', 'rdma', 'tcp']);
    expect(new Set(devices.map((d) => d?.split(' ')[0])).size).toBe(4);
    expect(report.ratios.find((x) => x.system === 'vof-null-rdma' && x.anchor === 'nvmeof-rdma-null')?.iops).toBeGreaterThan(0);
    expect(report.ratios.find((x) => x.system === 'vof-null' && x.anchor === 'nvmeof-tcp-null')?.iops).toBeGreaterThan(0);
  }, 600_000);

  it('--systems vof-vduse,vof-vduse-rdma,qsd-vduse,vof-nbd,vof-tcp,vof-rdma: fio on the /dev/vdX of vof vduse and of qemu-storage-daemon, torn down after', async () => {
    rdmaAddress();
    const out = join(dir, 'vduse.json');
    const systems = ['vof-vduse', 'vof-vduse-rdma', 'qsd-vduse', 'vof-nbd', 'vof-tcp', 'vof-rdma'];
    // perf off: switching its counters patches kernel text, which this TCG guest on 6.12 can take
    // as a fatal Oops (docs/BENCHMARK.md, VOF_BENCH_PERF); the per-I/O figures are not what this tests.
    process.env.VOF_BENCH_PERF = 'off';
    const r = await vofBench(['--vm-part', '--anchors', '--quick', '--rw', 'randread', '--qd', '4', '--systems', systems.join(','), '--json', out], 540_000).finally(() => delete process.env.VOF_BENCH_PERF);
    expect(r.code, `${r.stderr}\n${r.stdout}`).toBe(0);
    const report = JSON.parse(readFileSync(out, 'utf8')) as BenchReport;
    expect(report.skipped, r.stderr).toEqual([]);
    expect(report.runs.find((x) => x.system === 'qsd-vduse')!.perIo!.unavailable['target.syscalls']).toMatch(/VOF_BENCH_PERF=off/);
    // Only the systems asked for (no ceiling either: perftest was not named).
    expect([...new Set(report.runs.map((x) => x.system))].sort()).toEqual([...systems].sort());
    for (const system of systems) {
      const run = report.runs.find((x) => x.system === system)!;
      expect(run.workload).toEqual({ rw: 'randread', bs: 4096, qd: 4 });
      expect(run.iops, system).toBeGreaterThan(0);
      expect(run.latencyUs!.p99, system).toBeGreaterThan(0);
      expect(run.cpu.initiatorSec, system).toBeGreaterThan(0);
      // Every system measures its target side: the vof target, or qemu-storage-daemon.
      expect(run.cpu.targetSec, system).toBeGreaterThan(0);
    }
    // fio ran on a virtio-blk device: vof vduse's over each transport, and qemu-storage-daemon's.
    const dev = (s: string) => /^(\/dev\/vd[a-z]+): /.exec(report.runs.find((x) => x.system === s)!.note ?? '')?.[1];
    expect(new Set(['vof-vduse', 'vof-vduse-rdma', 'qsd-vduse'].map(dev)).size).toBe(3);
    expect(report.runs.find((x) => x.system === 'vof-vduse-rdma')!.note).toMatch(/over rdma;/);
    expect(report.runs.find((x) => x.system === 'qsd-vduse')!.note).toMatch(/qemu-storage-daemon version \d+\.\d+/);
    expect(report.ratios.find((x) => x.system === 'vof-vduse' && x.anchor === 'qsd-vduse')?.iops).toBeGreaterThan(0);
    expect(report.ratios.find((x) => x.system === 'vof-vduse-rdma' && x.anchor === 'vof-rdma')?.iops).toBeGreaterThan(0);
    // Torn down: no vdpa or VDUSE device left behind.
    expect(readdirSync('/sys/bus/vdpa/devices')).toEqual([]);
    expect(readdirSync('/dev/vduse').filter((x) => x !== 'control')).toEqual([]);
  }, 600_000);

  it('bench/nvmeof.sh: two systems up at once keep their own controllers; null:MIB is a null_blk namespace of that size', () => {
    const addr = rdmaAddress();
    const script = fileURLToPath(new URL('../../bench/nvmeof.sh', import.meta.url));
    // The image in the guest's RAM (its /tmp is the host's 9p).
    const image = join(mkdtempSync('/dev/shm/vof-nvmeof-'), 'disk.img');
    writeFileSync(image, Buffer.alloc(8 * 1024 * 1024));
    const sh = (...args: string[]) => execFileSync('bash', [script, ...args], { encoding: 'utf8' }).trim().split('\n').at(-1)!;
    const blockdev = (dev: string, what: string) => execFileSync('blockdev', [what, dev], { encoding: 'utf8' }).trim();
    try {
      const file = sh('up', 'rdma', addr, image, '4430', 'test-file');
      const nul = sh('up', 'tcp', '127.0.0.1', 'null:16', '4431', 'test-null');
      expect(file).toMatch(/^\/dev\/nvme\d+n\d+$/);
      expect(nul).toMatch(/^\/dev\/nvme\d+n\d+$/);
      expect(nul).not.toBe(file);
      // The first `up` of the pair still works after the second: it is the image, 8 MiB, over RDMA.
      expect(blockdev(file, '--getsize64')).toBe(String(8 * 1024 * 1024));
      expect(blockdev(nul, '--getsize64')).toBe(String(16 * 1024 * 1024));
      // One controller per subsystem, on its own transport.
      const sysfs = (c: string, f: string) => readFileSync(`/sys/class/nvme/${c}/${f}`, 'utf8').trim();
      const transports = (name: string) => readdirSync('/sys/class/nvme').filter((c) => sysfs(c, 'subsysnqn') === `nqn.2026-11.io.vof:${name}`).map((c) => sysfs(c, 'transport'));
      expect([transports('test-file'), transports('test-null')]).toEqual([['rdma'], ['tcp']]);
      // Written through the RDMA namespace (O_DIRECT), the data is in the image.
      const data = Buffer.alloc(4096, 0x5a);
      writeFileSync(join(dir, 'block'), data);
      execFileSync('dd', [`if=${join(dir, 'block')}`, `of=${file}`, 'bs=4096', 'seek=3', 'oflag=direct', 'status=none']);
      execFileSync('sync');
      expect(readFileSync(image).subarray(3 * 4096, 4 * 4096).equals(data)).toBe(true);
      sh('down', 'test-null');
      expect(blockdev(file, '--getsize64')).toBe(String(8 * 1024 * 1024));
    } finally {
      for (const name of ['test-file', 'test-null']) execFileSync('bash', [script, 'down', name]);
      rmSync(join(image, '..'), { recursive: true, force: true });
    }
    expect(execFileSync('ls', ['/sys/kernel/config/nvmet/subsystems'], { encoding: 'utf8' })).not.toMatch(/test-(file|null)/);
  }, 120_000);
});
