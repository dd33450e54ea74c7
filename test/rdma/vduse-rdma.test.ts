import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTarget, type StartedTarget } from '../../scripts/start-target.mjs';
import { needs } from '../helpers/deps.js';
import { startBridge, type Bridge } from '../helpers/nbd-bridge.js';
import { rdmaAddress } from './rdma-env.js';
import { must, sh, shAsync } from '../helpers/shell.js';
import { kill9 } from '../helpers/target-faults.js';
import { vofAsync } from '../helpers/vof-cli.js';
import { waitFor } from '../helpers/wait-for.js';

/**
 * `vof vduse`: the kernel's own virtio-blk driver (virtio_vdpa) on a VDUSE device whose requests
 * travel to a vof target over TCP and over RDMA. /dev/vdX shows the remote capacity; ext4 is
 * made, mounted, written, checked; a second `vof vduse` (after the first is removed) sees the
 * files; fio verifies with crc32c from two jobs; discard is accepted and write-zeroes zeroes the
 * file; a read-only export gives a read-only device.
 * Needs root, Linux with vduse and virtio_vdpa (the soft-RoCE VM on 6.12 has them) and
 * iproute2's vdpa.
 */


/** Loads the modules (root only) and says why VDUSE cannot run here, or null. */
function vduseProblem(): string | null {
  if (process.platform !== 'linux') return 'VDUSE is Linux only';
  if (process.getuid?.() !== 0) return 'needs root (loads vduse and virtio_vdpa, mounts a file system): run it in the soft-RoCE VM (scripts/rxe/rdma-suite.mjs)';
  // virtio_blk too: the VM has no udev to load it when the virtio device appears.
  const m = sh('modprobe', ['-a', 'vduse', 'virtio_vdpa', 'virtio_blk']);
  if (m.status !== 0) return `modprobe vduse virtio_vdpa virtio_blk failed (needs Linux >= 5.15 with CONFIG_VDPA_USER; the soft-RoCE VM boots 6.12): ${m.out}`;
  if (!existsSync('/dev/vduse/control')) return '/dev/vduse/control is missing after modprobe vduse';
  if (!existsSync('/usr/sbin/vdpa') && sh('vdpa', ['mgmtdev', 'show']).status !== 0) return "iproute2's vdpa is missing";
  return null;
}

const tools = needs('test/rdma/vduse-rdma.test.ts (vof vduse: the kernel virtio-blk driver over vof)', ['iproute2', 'e2fsprogs', 'mount', 'util-linux', 'kmod', 'fio'], vduseProblem);

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));


/** /sys/block/vdX/stat: sectors written so far; /sys/block/vdX/inflight: writes in flight now. */
function blockStat(dev: string): { writtenSectors: number; writesInFlight: number } {
  const name = dev.slice('/dev/'.length);
  const stat = readFileSync(`/sys/block/${name}/stat`, 'utf8').trim().split(/\s+/).map(Number);
  const inflight = readFileSync(`/sys/block/${name}/inflight`, 'utf8').trim().split(/\s+/).map(Number);
  return { writtenSectors: stat[6] ?? 0, writesInFlight: inflight[1] ?? 0 };
}

function portOf(url: string): number {
  return Number(/:(\d+)$/.exec(url)![1]);
}

describe.skipIf(!tools.ok).each(['tcp', 'rdma'])(`vof vduse over %s${tools.skipNote}`, (scheme) => {
  // The guest's own tmpfs (not the 9p-shared host tree): a fast backing file.
  const dir = mkdtempSync(`/dev/shm/vof-vduse-${scheme}-`);
  const image = join(dir, 'disk.img');
  const roImage = join(dir, 'ro.img');
  const growImage = join(dir, 'grow.img');
  const control = join(dir, 'target.ctl');
  const mnt = join(dir, 'mnt');
  const big = Buffer.alloc(3 * MiB);
  for (let i = 0; i < big.length; i++) big[i] = (i * 2654435761) >>> 24;
  let target: StartedTarget;
  const running: Bridge[] = [];
  /** Targets of the restart test (killed and started again there). */
  const restarted: StartedTarget[] = [];

  /** `vof vduse URL --name NAME`: resolves with the block device it printed. */
  async function attach(where: string, name: string, ivqn: string, extra: string[] = []): Promise<{ bridge: Bridge; dev: string }> {
    const url = where.includes('://') ? where : `${target.urls[0]}/${where}`;
    const bridge = await startBridge([url, '--name', name, '--ivqn', ivqn, '--log', 'debug', ...extra], 300000, 'vduse');
    running.push(bridge);
    const dev = bridge.uri;
    expect(dev, bridge.stderr() + sh('dmesg', []).stdout.slice(-3000)).toMatch(/^\/dev\/vd[a-z]+$/);
    // The vdpa device is bound to virtio_vdpa, and the block device is the one under it.
    expect(readlinkSync(`/sys/bus/vdpa/devices/${name}/driver`)).toMatch(/\/virtio_vdpa$/);
    await waitFor(dev, () => existsSync(dev), 60000, 200);
    return { bridge, dev };
  }

  async function detach(bridge: Bridge, name: string): Promise<void> {
    expect(await bridge.stop()).toBe(0);
    running.splice(running.indexOf(bridge), 1);
    expect(bridge.stderr()).toMatch(/SIGTERM: removing the device/);
    // Removed from the vdpa bus and destroyed.
    expect(existsSync(`/sys/bus/vdpa/devices/${name}`)).toBe(false);
    expect(existsSync(`/dev/vduse/${name}`)).toBe(false);
  }

  beforeAll(async () => {
    writeFileSync(image, Buffer.alloc(0));
    spawnSync('truncate', ['-s', String(SIZE), image]);
    writeFileSync(roImage, Buffer.alloc(0));
    spawnSync('truncate', ['-s', String(8 * MiB), roImage]);
    writeFileSync(growImage, Buffer.alloc(0));
    spawnSync('truncate', ['-s', String(16 * MiB), growImage]);
    mkdirSync(mnt);
    target = await startTarget(['--listen', `${scheme}://${rdmaAddress()}:0`, '--blk', `vd-disk=${image}`, '--blk', `vd-ro=${roImage},ro`, '--blk', `vd-grow=${growImage}`, '--control', control], {
      lines: 1,
      timeoutMs: 180000,
    });
  });

  afterAll(async () => {
    spawnSync('umount', [mnt]);
    await Promise.all(running.map((b) => b.stop()));
    await target?.stop();
    await Promise.all(restarted.map((t) => t.stop()));
    rmSync(dir, { recursive: true, force: true });
  });

  it('/dev/vdX with the remote capacity; ext4 made, mounted, written, fsck clean; a second vof vduse sees the files', async () => {
    const first = await attach('vd-disk', `vd-${scheme}-1`, 'vduse-host-1');
    expect(Number(must('blockdev', ['--getsize64', first.dev]).trim())).toBe(SIZE);
    expect(must('blockdev', ['--getro', first.dev]).trim()).toBe('0');
    must('mkfs.ext4', ['-q', '-F', '-L', 'vofvduse', first.dev]);
    must('mount', [first.dev, mnt]);
    writeFileSync(join(mnt, 'hello.txt'), `hello from virtio-blk over vof over ${scheme}\n`);
    mkdirSync(join(mnt, 'sub'));
    writeFileSync(join(mnt, 'sub', 'big.bin'), big);
    must('sync', []);
    must('umount', [mnt]);
    must('fsck.ext4', ['-n', '-f', first.dev]);
    await detach(first.bridge, `vd-${scheme}-1`);

    const second = await attach('vd-disk', `vd-${scheme}-2`, 'vduse-host-2');
    must('mount', ['-o', 'ro', second.dev, mnt]);
    expect(readFileSync(join(mnt, 'hello.txt'), 'utf8')).toBe(`hello from virtio-blk over vof over ${scheme}\n`);
    expect(readFileSync(join(mnt, 'sub', 'big.bin')).equals(big)).toBe(true);
    must('umount', [mnt]);

    // The raw device under fio: writes from two jobs, each block verified by its crc32c.
    const fio = sh('fio', [
      '--name=vduse',
      `--filename=${second.dev}`,
      '--direct=1',
      '--ioengine=libaio',
      '--iodepth=8',
      '--rw=randwrite',
      '--bs=4k',
      '--size=8M',
      '--numjobs=2',
      '--offset_increment=16M',
      '--verify=crc32c',
      '--do_verify=1',
      '--verify_fatal=1',
      '--verify_state_save=0',
      '--group_reporting',
    ]);
    expect(fio.status, fio.out).toBe(0);
    expect(fio.out).not.toMatch(/verify: bad|crc32c: verify failed/);

    // Discard and write-zeroes are offered and reach the target: a file export takes a discard
    // as a hint (nothing to see), write-zeroes zeroes the range in the file.
    const queue = `/sys/block/${second.dev.slice('/dev/'.length)}/queue`;
    expect(Number(readFileSync(`${queue}/discard_max_bytes`, 'utf8'))).toBeGreaterThan(0);
    expect(Number(readFileSync(`${queue}/write_zeroes_max_bytes`, 'utf8'))).toBeGreaterThan(0);
    must('blkdiscard', ['-o', String(20 * MiB), '-l', String(MiB), second.dev]);
    must('blkdiscard', ['-z', '-o', String(23 * MiB), '-l', String(MiB), second.dev]);
    await detach(second.bridge, `vd-${scheme}-2`);
    const zeroed = readFileSync(image).subarray(23 * MiB, 24 * MiB);
    expect(zeroed.every((b) => b === 0)).toBe(true);
    // What fio wrote reached the file: every 4 KiB block of the second job's range starts with
    // fio's verify header (magic 0xacca, little-endian).
    // (the last MiB of it was zeroed above, the discarded one is untouched).
    const written = readFileSync(image).subarray(16 * MiB, 23 * MiB);
    let stamped = 0;
    for (let off = 0; off < written.length; off += 4096) if (written.readUInt16LE(off) === 0xacca) stamped++;
    expect(stamped).toBe(7 * 256);
  });

  it('a read-only export gives a read-only device', async () => {
    const ro = await attach('vd-ro', `vd-${scheme}-ro`, 'vduse-host-ro');
    expect(must('blockdev', ['--getro', ro.dev]).trim()).toBe('1');
    expect(Number(must('blockdev', ['--getsize64', ro.dev]).trim())).toBe(8 * MiB);
    const dd = sh('dd', ['if=/dev/zero', `of=${ro.dev}`, 'bs=4096', 'count=1', 'oflag=direct']);
    expect(dd.status).not.toBe(0);
    await detach(ro.bridge, `vd-${scheme}-ro`);
  });

  it('the backing file grown and `vof revalidate` on the target: the kernel sees the config change (/sys/block/vdX/size), and I/O reaches the new end', async () => {
    const name = `vd-${scheme}-grow`;
    const { bridge, dev } = await attach('vd-grow', name, 'vduse-host-grow');
    const size = `/sys/block/${dev.slice('/dev/'.length)}/size`;
    const sectors = () => Number(readFileSync(size, 'utf8').trim());
    expect(sectors()).toBe((16 * MiB) / 512);
    // Past the end: the kernel refuses it itself (the block layer knows the capacity).
    expect(sh('dd', ['if=/dev/zero', `of=${dev}`, 'bs=4096', `seek=${20 * 256}`, 'count=1', 'oflag=direct', 'conv=notrunc']).status).not.toBe(0);
    spawnSync('truncate', ['-s', String(24 * MiB), growImage]);
    const r = await vofAsync(['revalidate', '--control', control, 'vd-grow']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^"vd-grow": 25165824 bytes, changed/);
    // virtio_blk re-reads the capacity in a work item after the config interrupt: bounded wait.
    // Not thrown here: the expect below says so with the bridge's log.
    await waitFor('virtio_blk to read the new capacity', () => sectors() === (24 * MiB) / 512, 60000, 50).catch(() => {});
    expect(sectors(), bridge.stderr()).toBe((24 * MiB) / 512);
    expect(Number(must('blockdev', ['--getsize64', dev]).trim())).toBe(24 * MiB);
    // vof vduse logs the change right after the interrupt that lets the kernel see it: the
    // line may still be on its way through the bridge's stderr pipe (a VM run saw the size
    // first). Waited for, then asserted.
    const changed = /config changed \(capacity 49152 sectors\)/;
    await waitFor('vof vduse to log the config change', () => changed.test(bridge.stderr()), 10000).catch(() => {});
    expect(bridge.stderr()).toMatch(changed);
    // A block written past the old end goes through the kernel and lands in the file there.
    const probe = Buffer.alloc(4096);
    for (let i = 0; i < probe.length; i++) probe[i] = (i * 31 + 7) & 0xff;
    writeFileSync(join(dir, 'grow-probe.bin'), probe);
    must('dd', [`if=${join(dir, 'grow-probe.bin')}`, `of=${dev}`, 'bs=4096', `seek=${20 * 256}`, 'count=1', 'oflag=direct', 'conv=notrunc']);
    must('dd', [`if=${dev}`, `of=${join(dir, 'grow-back.bin')}`, 'bs=4096', `skip=${20 * 256}`, 'count=1', 'iflag=direct']);
    expect(readFileSync(join(dir, 'grow-back.bin')).equals(probe)).toBe(true);
    await detach(bridge, name);
    expect(readFileSync(growImage).subarray(20 * MiB, 20 * MiB + 4096).equals(probe)).toBe(true);
  });

  it('--bind vhost gives /dev/vhost-vdpa-N (the device moved from virtio_vdpa)', async () => {
    must('modprobe', ['vhost_vdpa']);
    try {
      const name = `vd-${scheme}-vhost`;
      const bridge = await startBridge([`${target.urls[0]}/vd-ro`, '--name', name, '--ivqn', 'vduse-host-vhost', '--bind', 'vhost'], 300000, 'vduse');
      running.push(bridge);
      expect(bridge.uri, bridge.stderr()).toMatch(/^\/dev\/vhost-vdpa-\d+$/);
      expect(readlinkSync(`/sys/bus/vdpa/devices/${name}/driver`)).toMatch(/\/vhost_vdpa$/);
      await waitFor(bridge.uri, () => existsSync(bridge.uri), 60000, 200);
      await detach(bridge, name);
    } finally {
      spawnSync('modprobe', ['-r', 'vhost_vdpa']);
    }
  });

  it('the target SIGKILLed mid-fio (crc32c verify, 4 jobs, libaio direct) and restarted 300 ms later: fio finishes without errors, the data verifies', async () => {
    const file = join(dir, 'restart.img');
    writeFileSync(file, Buffer.alloc(0));
    spawnSync('truncate', ['-s', String(32 * MiB), file]);
    const start = (port: number) =>
      startTarget(['--listen', `${scheme}://${rdmaAddress()}:${port}`, '--blk', `vd-restart=${file}`], { lines: 1, timeoutMs: 180000 }).then((t) => {
        restarted.push(t);
        return t;
      });
    let t = await start(0);
    const url = t.urls[0]!;
    const name = `vd-${scheme}-restart`;
    // The loss timeout (60 s) is the bound the restart must fit in, not a measurement: past it
    // the disk is lost and the held requests fail, which fails fio.
    const { bridge, dev } = await attach(`${url}/vd-restart`, name, 'vduse-host-restart', ['--reconnect-delay', '0.2', '--ctrl-loss-tmo', '60']);
    const before = blockStat(dev).writtenSectors;
    // Four jobs, each writing its own 4 MiB with crc32c-stamped blocks, then reading it back.
    const fio = shAsync(
      'fio',
      [
        '--name=restart',
        `--filename=${dev}`,
        '--direct=1',
        '--ioengine=libaio',
        '--iodepth=8',
        '--rw=randwrite',
        '--bs=4k',
        '--size=4M',
        '--numjobs=4',
        '--offset_increment=8M',
        '--verify=crc32c',
        '--do_verify=1',
        '--verify_fatal=1',
        '--verify_state_save=0',
        '--group_reporting',
      ],
      600000,
    );
    // Mid-run: once 2 MiB of the 16 went out (bounded wait), the target is stopped, so that the
    // writes it was sent stay unanswered, as on a target that dies with them; once the kernel's
    // writes in flight stop moving, it is killed.
    await waitFor('2 MiB written', () => blockStat(dev).writtenSectors - before >= 4096, 120000, 50);
    expect(blockStat(dev).writtenSectors - before).toBeGreaterThanOrEqual(4096);
    t.child.kill('SIGSTOP');
    let last = -1;
    for (let i = 0, still = 0; i < 400 && still < 5; i++) {
      await sleep(50);
      const now = blockStat(dev).writtenSectors;
      still = now === last ? still + 1 : 0;
      last = now;
    }
    const inFlightAtKill = blockStat(dev).writesInFlight;
    expect(inFlightAtKill, 'writes in flight when the target was killed').toBeGreaterThan(0);
    await kill9(t);
    await sleep(300);
    t = await start(portOf(url));
    const r = await fio;
    expect(r.status, `${r.out}\n${bridge.stderr()}`).toBe(0);
    expect(r.out).not.toMatch(/verify: bad|crc32c: verify failed|err=\s*[1-9]/);
    // vof vduse went through the loss and a reconnect, and is still serving.
    expect(bridge.child.exitCode).toBe(null);
    expect(bridge.stderr()).toMatch(/disconnected/);
    expect(bridge.stderr()).toMatch(/reconnected after \d+ attempt/);
    // The device still works after it: a block written and read back through the kernel.
    const probe = Buffer.alloc(4096, 0x5a);
    writeFileSync(join(dir, 'probe.bin'), probe);
    must('dd', [`if=${join(dir, 'probe.bin')}`, `of=${dev}`, 'bs=4096', `seek=${30 * 256}`, 'count=1', 'oflag=direct', 'conv=notrunc']);
    await detach(bridge, name);
    expect(readFileSync(file).subarray(30 * MiB, 30 * MiB + 4096).equals(probe)).toBe(true);
    // What fio wrote is in the file: every 4 KiB block of each job's range carries fio's
    // verify header (magic 0xacca, little-endian).
    const image = readFileSync(file);
    for (let job = 0; job < 4; job++) {
      let stamped = 0;
      for (let off = job * 8 * MiB; off < job * 8 * MiB + 4 * MiB; off += 4096) if (image.readUInt16LE(off) === 0xacca) stamped++;
      expect(stamped, `job ${job}`).toBe(1024);
    }
  });
});
