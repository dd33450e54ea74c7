import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTarget, type StartedTarget } from '../../scripts/start-target.mjs';
import { BlockDevice } from '../../src/index.js';
import { nativeBinding } from '../../src/transport/rdma/native-binding.js';
import { needs } from '../helpers/deps.js';
import { startBridge, type Bridge } from '../helpers/nbd-bridge.js';
import { rdmaAddress } from './rdma-env.js';
import { must, sh } from '../helpers/shell.js';
import { waitFor } from '../helpers/wait-for.js';

/**
 * `vof vduse` over rdma:// moves the kernel's request bytes with no copy (issue 19): the
 * device's bounce memory is this process's own (VDUSE_IOTLB_REG_UMEM), registered once with the
 * RDMA device, and every request's buffers lie inside it. fio verifies its data (crc32c, several
 * jobs, libaio direct, 4 KiB and 128 KiB) and the counters `vof vduse` logs on exit show that no
 * byte went through the bounce memory. A device removed and added again (a second `vof vduse`)
 * reads the data back the same way, and so does a device the driver reset (unbound from
 * virtio_vdpa and bound again: VDUSE drops its bounce map and maps it again).
 * Needs root, Linux >= 6.3 with vduse and virtio_vdpa (the soft-RoCE VM boots 6.12), iproute2's vdpa.
 */

function vduseProblem(): string | null {
  if (process.platform !== 'linux') return 'VDUSE is Linux only';
  if (process.getuid?.() !== 0) return 'needs root: run it in the soft-RoCE VM (scripts/rxe/rdma-suite.mjs)';
  // virtio_blk too: the VM has no udev to load it when the virtio device appears.
  const m = sh('modprobe', ['-a', 'vduse', 'virtio_vdpa', 'virtio_blk']);
  if (m.status !== 0) return `modprobe vduse virtio_vdpa virtio_blk failed: ${m.out}`;
  if (!existsSync('/dev/vduse/control')) return '/dev/vduse/control is missing after modprobe vduse';
  if (!existsSync('/usr/sbin/vdpa') && sh('vdpa', ['mgmtdev', 'show']).status !== 0) return "iproute2's vdpa is missing";
  return null;
}

const tools = needs('test/rdma/vduse-zero-copy.test.ts (vof vduse over RDMA with no copy)', ['iproute2', 'kmod', 'fio'], vduseProblem);

const MiB = 1024 * 1024;

interface Transfers {
  inPlace: number;
  bounced: number;
  bouncedCommands: number;
  inline: number;
  inlineInPlace: number;
}

/** The counters `vof vduse` logs when it exits (formatTransfers). */
function transfersOf(stderr: string): Transfers {
  const m = /keyed transfers: (\d+) bytes in place \(no copy\), (\d+) bytes bounced \(copied; (\d+) commands\), (\d+) bytes inline \((\d+) of them read in place\)/.exec(stderr);
  expect(m, stderr).not.toBeNull();
  return { inPlace: Number(m![1]), bounced: Number(m![2]), bouncedCommands: Number(m![3]), inline: Number(m![4]), inlineInPlace: Number(m![5]) };
}

function fio(dev: string, bs: string, rw: 'randwrite' | 'read', extra: string[] = []): void {
  const r = sh('fio', [
    `--name=zc-${bs}`,
    `--filename=${dev}`,
    '--direct=1',
    '--ioengine=libaio',
    '--iodepth=8',
    `--rw=${rw}`,
    `--bs=${bs}`,
    '--size=4M',
    '--numjobs=3',
    '--offset_increment=8M',
    '--verify=crc32c',
    '--verify_fatal=1',
    '--verify_state_save=0',
    '--group_reporting',
    ...extra,
  ]);
  expect(r.status, r.out).toBe(0);
  expect(r.out).not.toMatch(/verify: bad|crc32c: verify failed|err=\s*[1-9]/);
}

/** /dev/vdX under the vdpa device NAME (virtio_vdpa), or null. */
function blockOf(name: string): string | null {
  const sys = `/sys/bus/vdpa/devices/${name}`;
  for (const entry of existsSync(sys) ? readdirSync(sys) : []) {
    if (!/^virtio\d+$/.test(entry) || !existsSync(join(sys, entry, 'block'))) continue;
    const blocks = readdirSync(join(sys, entry, 'block'));
    if (blocks[0]) return `/dev/${blocks[0]}`;
  }
  return null;
}

/**
 * Writes VALUE to a sysfs file from a child process, bounded: a driver bind or unbind that
 * hangs (in the kernel, unkillable) fails the test with the writer's kernel stack instead of
 * hanging the suite. The child is left behind then; the VM's poweroff ends it.
 */
function sysfsWrite(file: string, value: string, timeoutMs = 120000): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('sh', ['-c', 'printf %s "$1" > "$2"', 'sh', value, file], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      let stack = '';
      try {
        stack = readFileSync(`/proc/${child.pid}/stack`, 'utf8');
      } catch {
        // gone meanwhile
      }
      reject(new Error(`writing ${value} to ${file}: no answer after ${timeoutMs} ms; the writer's kernel stack:\n${stack}`));
    }, timeoutMs);
    child.on('exit', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else reject(new Error(`writing ${value} to ${file}: exit ${code}: ${stderr.trim()}`));
    });
  });
}

describe.skipIf(!tools.ok)(`vof vduse over rdma:// with no copy${tools.skipNote}`, () => {
  const dir = mkdtempSync('/dev/shm/vof-vduse-zc-');
  const image = join(dir, 'disk.img');
  let target: StartedTarget;
  const running: Bridge[] = [];

  async function attach(name: string): Promise<{ bridge: Bridge; dev: string }> {
    const bridge = await startBridge([`${target.urls[0]}/zc`, '--name', name, '--ivqn', `zc-${name}`, '--log', 'debug'], 300000, 'vduse');
    running.push(bridge);
    expect(bridge.uri, bridge.stderr()).toMatch(/^\/dev\/vd[a-z]+$/);
    await waitFor(bridge.uri, () => existsSync(bridge.uri), 60000, 200);
    return { bridge, dev: bridge.uri };
  }

  async function detach(bridge: Bridge): Promise<Transfers> {
    expect(await bridge.stop()).toBe(0);
    running.splice(running.indexOf(bridge), 1);
    // Registered once: no fallback was logged, the bounce memory was VDUSE's user memory.
    expect(bridge.stderr()).toMatch(/bounce memory registered \(VDUSE_IOTLB_REG_UMEM\)/);
    expect(bridge.stderr()).not.toMatch(/cannot be registered|bounce memory not registered/);
    return transfersOf(bridge.stderr());
  }

  beforeAll(async () => {
    writeFileSync(image, Buffer.alloc(0));
    spawnSync('truncate', ['-s', String(32 * MiB), image]);
    target = await startTarget(['--listen', `rdma://${rdmaAddress()}:0`, '--blk', `zc=${image}`], { lines: 1, timeoutMs: 180000 });
  });

  afterAll(async () => {
    await Promise.all(running.map((b) => b.stop()));
    await target?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('fio crc32c (3 jobs, libaio direct, 4 KiB and 128 KiB) verifies, and no byte is bounced; a re-added device, reset twice by its driver, reads it back in place', async () => {
    const first = await attach('zc-1');
    fio(first.dev, '4k', 'randwrite', ['--do_verify=1']);
    fio(first.dev, '128k', 'randwrite', ['--do_verify=1', '--offset=1M']);
    const t1 = await detach(first.bridge);
    console.info(`first device: ${JSON.stringify(t1)}`);
    // fio wrote and read back 3 x 4 MiB twice: at least 48 MiB moved with no copy. 4 KiB writes
    // (16 + 4096 readable bytes) ride inline in the command's SEND (vof inline data): their
    // 4 KiB of data is the SEND's second scatter-gather entry, read in place from the pinned
    // bounce memory; only each 16-byte request header is copied. Nothing is bounced.
    // (Bounds, not exact counts: the block layer may merge or split fio's requests.)
    expect(t1.inPlace).toBeGreaterThanOrEqual(0.95 * (48 * MiB - 12 * MiB));
    expect(t1.inPlace + t1.inlineInPlace).toBeGreaterThanOrEqual(0.95 * 48 * MiB);
    expect(t1.bounced).toBe(0);
    expect(t1.bouncedCommands).toBe(0);
    expect(t1.inline).toBeGreaterThan(0);
    // (A flush or other header-only command is inline too, with nothing read in place.)
    expect(t1.inlineInPlace % 4096).toBe(0);
    expect(t1.inlineInPlace).toBeGreaterThanOrEqual(t1.inline * 0.99 * (4096 / (16 + 4096)));

    // Removed and added again (a new VDUSE device, new bounce memory, new registrations): what
    // the first one wrote reads back, and fio verifies again.
    const second = await attach('zc-2');
    const probe = join(dir, 'probe.bin');
    must('dd', [`if=${second.dev}`, `of=${probe}`, 'bs=128k', `skip=${MiB / (128 * 1024)}`, 'count=8', 'iflag=direct']);
    expect(readFileSync(probe).equals(readFileSync(image).subarray(MiB, 2 * MiB))).toBe(true);
    fio(second.dev, '128k', 'randwrite', ['--do_verify=1', '--offset=2M']);
    // The driver resets the device twice (unbound from virtio_vdpa and bound again): its rings
    // are freed and taken anew, usually at the same IOVA and with no word from VDUSE, and the
    // bounce map is dropped and rebuilt over the same registered memory. Each time the new
    // /dev/vdX reads and writes in place. (Before vof vduse dropped its IOVA mappings at a
    // reset, it served the stale rings and the rebind hung in its partition scan.)
    let dev = second.dev;
    for (let round = 0; round < 2; round++) {
      await sysfsWrite('/sys/bus/vdpa/drivers/virtio_vdpa/unbind', 'zc-2');
      await waitFor('virtio_vdpa to unbind zc-2', () => blockOf('zc-2') === null, 60000);
      await sysfsWrite('/sys/bus/vdpa/drivers/virtio_vdpa/bind', 'zc-2');
      let again: string | null = null;
      await waitFor('/dev/vdX of zc-2 after the rebind', () => (again = blockOf('zc-2')) !== null && existsSync(again), 60000);
      dev = again!;
    }
    fio(dev, '4k', 'randwrite', ['--do_verify=1', '--offset=3M']);
    const t2 = await detach(second.bridge);
    console.info(`re-added device: ${JSON.stringify(t2)}`);
    // 3 x 4 MiB of 128 KiB written and read, 3 x 4 MiB of 4 KiB read (its writes go inline).
    expect(t2.inPlace).toBeGreaterThanOrEqual(0.95 * 36 * MiB);
    expect(t2.bounced).toBe(0);
    expect(t2.bouncedCommands).toBe(0);
  });
});

/**
 * The library half: RemoteDevice.pinMemory registers a caller's Buffer once per protection
 * domain; requests whose data lies inside it move in place, a slice straddling its end or a
 * released pin falls back to the copy, and both are counted.
 */
describe('RemoteDevice.pinMemory over rdma://', () => {
  const dir = mkdtempSync('/dev/shm/vof-pin-');
  let target: StartedTarget;
  beforeAll(async () => {
    const image = join(dir, 'disk.img');
    writeFileSync(image, Buffer.alloc(0));
    spawnSync('truncate', ['-s', String(8 * MiB), image]);
    target = await startTarget(['--listen', `rdma://${rdmaAddress()}:0`, '--blk', `pin=${image}`, '--queues', '2'], { lines: 1, timeoutMs: 180000 });
  });
  afterAll(async () => {
    await target?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('data inside a pinned Buffer goes in place on every queue; straddling its end or after release it is copied; registered once, deregistered on release', async () => {
    const dev = await BlockDevice.open(`${target.urls[0]}/pin`, { keepaliveIntervalMs: 0 });
    const binding = nativeBinding();
    try {
      expect(dev.device.queues.length).toBe(2);
      const stats = dev.device.pinnedMemory.stats;
      const arena = Buffer.alloc(MiB + 4096);
      const pinned = arena.subarray(0, MiB);
      const regionsBefore = binding.resourceCounts().memoryRegions;
      const pin = dev.device.pinMemory(pinned);
      // One registration for both queues (they share the RDMA device's protection domain).
      expect(binding.resourceCounts().memoryRegions).toBe(regionsBefore + 1);
      const data = randomBytes(64 * 1024);
      data.copy(pinned, 4096);
      const before = { ...stats };
      // Both virtqueues: the BlockDevice spreads requests over them.
      await Promise.all([dev.write(0, pinned.subarray(4096, 4096 + 32768)), dev.write(32768, pinned.subarray(4096 + 32768, 4096 + 65536))]);
      const into = pinned.subarray(512 * 1024, 512 * 1024 + 65536);
      await Promise.all([dev.read(0, into.subarray(0, 32768)), dev.read(32768, into.subarray(32768))]);
      expect(into.equals(data)).toBe(true);
      // The 128 KiB of data went in place; only the virtio-blk headers and status bytes (the
      // BlockDevice's own small buffers, not pinned) were bounced: 17 bytes per request.
      expect(stats.inPlaceBytes - before.inPlaceBytes).toBe(4 * 32768);
      expect(stats.bouncedBytes - before.bouncedBytes).toBeLessThanOrEqual(4 * 17);

      // A slice straddling the pinned Buffer's end (into its unregistered neighbour): copied.
      const straddle = arena.subarray(MiB - 2048, MiB + 2048);
      const mid = { ...stats };
      await dev.read(0, straddle);
      expect(straddle.equals(data.subarray(0, 4096))).toBe(true);
      expect(stats.inPlaceBytes - mid.inPlaceBytes).toBe(0);
      expect(stats.bouncedBytes - mid.bouncedBytes).toBeGreaterThanOrEqual(4096);

      // Released: deregistered, and its bytes are copied from then on.
      pin.release();
      expect(binding.resourceCounts().memoryRegions).toBe(regionsBefore);
      const after = { ...stats };
      await dev.read(0, pinned.subarray(0, 8192));
      expect(pinned.subarray(0, 8192).equals(data.subarray(0, 8192))).toBe(true);
      expect(stats.inPlaceBytes - after.inPlaceBytes).toBe(0);
      expect(stats.bouncedBytes - after.bouncedBytes).toBeGreaterThanOrEqual(8192);
    } finally {
      await dev.close();
    }
  });
});
