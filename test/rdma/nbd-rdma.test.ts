import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTarget, type StartedTarget } from '../../scripts/start-target.mjs';
import { needs } from '../helpers/deps.js';
import { startBridge, type Bridge } from '../helpers/nbd-bridge.js';
import { rdmaAddress } from './rdma-env.js';
import { must, sh } from '../helpers/shell.js';
import { waitFor } from '../helpers/wait-for.js';

/**
 * The kernel as an NBD client of a vof disk reached over RDMA: nbd-client attaches `vof nbd`
 * as /dev/nbdN, ext4 is made, mounted, written, checked; a second bridge (a new initiator)
 * attaches the same disk again and the files are there. Needs root and the nbd module (the
 * soft-RoCE VM has both).
 */

// nbd-client, mkfs.ext4/fsck.ext4, mount, blockdev, modprobe.
const tools = needs('test/rdma/nbd-rdma.test.ts (kernel nbd-client over RDMA)', ['nbd-client', 'e2fsprogs', 'mount', 'util-linux', 'kmod']);

const MiB = 1024 * 1024;


/** Attach the bridge's socket as `dev` and wait until the kernel sees the whole disk. */
async function attach(socketPath: string, name: string, dev: string, size: number): Promise<void> {
  must('nbd-client', ['-unix', socketPath, dev, '-name', name, '-block-size', '4096', '-timeout', '120']);
  await waitFor(
    `${dev} to show ${size} bytes`,
    () => {
      const r = sh('blockdev', ['--getsize64', dev]);
      return r.status === 0 && Number(r.stdout.trim()) === size;
    },
    120000,
    500,
  );
}

describe.skipIf(!tools.ok)(`kernel nbd-client on a vof disk over RDMA${tools.skipNote}`, () => {
  // The guest's own tmpfs (not the 9p-shared host tree): Unix sockets and a fast backing file.
  const dir = mkdtempSync('/dev/shm/vof-nbd-rdma-');
  const image = join(dir, 'disk.img');
  const mnt = join(dir, 'mnt');
  const SIZE = 64 * MiB;
  const big = Buffer.alloc(3 * MiB);
  for (let i = 0; i < big.length; i++) big[i] = (i * 2654435761) >>> 24;
  let target: StartedTarget;
  let bridges: Bridge[] = [];
  const attached: string[] = [];

  beforeAll(async () => {
    if (process.getuid?.() !== 0) throw new Error('this test needs root (it loads nbd and mounts a file system); run it in the soft-RoCE VM');
    writeFileSync(image, Buffer.alloc(0));
    spawnSync('truncate', ['-s', String(SIZE), image]);
    mkdirSync(mnt);
    must('modprobe', ['nbd']);
    target = await startTarget(['--listen', `rdma://${rdmaAddress()}:0`, '--blk', `nbd-disk=${image}`], { lines: 1, timeoutMs: 180000 });
  });

  afterAll(async () => {
    spawnSync('umount', [mnt]);
    for (const dev of attached) spawnSync('nbd-client', ['-d', dev]);
    await Promise.all(bridges.map((b) => b.stop()));
    await target?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('mkfs.ext4, mount, write, sync, umount, fsck -n clean; a second bridge mounts it and the files are there', async () => {
    const url = `${target.urls[0]}/nbd-disk`;
    expect(url).toMatch(/^rdma:\/\//);

    const first = await startBridge([url, '--socket', join(dir, 'first.sock'), '--ivqn', 'nbd-host-1'], 300000);
    bridges.push(first);
    await attach(join(dir, 'first.sock'), 'nbd-disk', '/dev/nbd0', SIZE);
    attached.push('/dev/nbd0');
    must('mkfs.ext4', ['-q', '-F', '-L', 'vofnbd', '/dev/nbd0']);
    must('mount', ['/dev/nbd0', mnt]);
    writeFileSync(join(mnt, 'hello.txt'), 'hello from the kernel over NBD over RDMA\n');
    mkdirSync(join(mnt, 'sub'));
    writeFileSync(join(mnt, 'sub', 'big.bin'), big);
    must('sync', []);
    must('umount', [mnt]);
    must('fsck.ext4', ['-n', '-f', '/dev/nbd0']);
    must('nbd-client', ['-d', '/dev/nbd0']);
    attached.pop();
    expect(await first.stop()).toBe(0);
    expect(first.stderr()).toMatch(/SIGTERM: shutting down/);

    const second = await startBridge([url, '--socket', join(dir, 'second.sock'), '--ivqn', 'nbd-host-2'], 300000);
    bridges.push(second);
    await attach(join(dir, 'second.sock'), 'nbd-disk', '/dev/nbd1', SIZE);
    attached.push('/dev/nbd1');
    must('mount', ['-o', 'ro', '/dev/nbd1', mnt]);
    expect(readFileSync(join(mnt, 'hello.txt'), 'utf8')).toBe('hello from the kernel over NBD over RDMA\n');
    expect(readFileSync(join(mnt, 'sub', 'big.bin')).equals(big)).toBe(true);
    must('umount', [mnt]);
    must('nbd-client', ['-d', '/dev/nbd1']);
    attached.pop();
    expect(await second.stop()).toBe(0);
    bridges = [];
  });
});
