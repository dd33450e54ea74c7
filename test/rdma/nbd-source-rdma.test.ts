import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockDevice, createLogger } from '../../src/index.js';
import { openBlockStorage } from '../../src/target/blk/open-storage.js';
import { needs } from '../helpers/deps.js';
import { pattern } from '../helpers/pattern.js';
import { TargetFixture } from '../helpers/target-fixture.js';
import { NbdkitFile, onlyIoErrors, writeThroughServerRestart } from '../helpers/nbd-restart.js';
import { parseBlk } from '../../src/cli/target-command.js';
import { rdmaAddress } from './rdma-env.js';
import { waitForSocket } from '../helpers/wait-for.js';

/**
 * An NBD source and the null device behind an RDMA target (issue 20): what an initiator writes over rdma:// with
 * keyed transfers lands in the file nbdkit serves, and reads come back through the same path.
 */
const deps = needs('test/rdma/nbd-source-rdma.test.ts (nbdkit behind an RDMA target)', ['nbdkit']);

describe.skipIf(!deps.ok)(`an NBD source over RDMA${deps.skipNote}`, () => {
  // /dev/shm: the guest's root is 9p, where nbdkit's file plugin and unix sockets are slower.
  const dir = mkdtempSync('/dev/shm/vof-nbd-source-rdma-');
  const image = join(dir, 'disk.img');
  const sock = join(dir, 'nbdkit.sock');
  let nbdkit: ChildProcess;
  let fx: TargetFixture;
  let url: string;
  let base: string;
  beforeAll(async () => {
    writeFileSync(image, Buffer.alloc(4 * 1024 * 1024));
    nbdkit = spawn('nbdkit', ['--foreground', '--exit-with-parent', '-U', sock, 'file', image], { stdio: 'inherit' });
    await waitForSocket(sock, nbdkit, 'nbdkit', 10000);
    fx = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 120000 } });
    fx.target.addExport('src', await openBlockStorage(`nbd+unix:///?socket=${sock}`, {}, { connections: 2 }, createLogger('silent')));
    fx.target.addExport('null', await openBlockStorage('null:16m', {}, {}, createLogger('silent')));
    base = await fx.listen(`rdma://${rdmaAddress()}:0`);
    url = `${base}/src`;
  });
  afterAll(async () => {
    await fx?.close();
    nbdkit?.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('writes over rdma:// reach the file behind nbdkit; reads of it come back over rdma://', async () => {
    const disk = await BlockDevice.open(url, { keepaliveIntervalMs: 0 });
    try {
      const data = pattern(512 * 1024, 33);
      await disk.write(1024 * 1024, data);
      await disk.flush();
      expect(readFileSync(image).subarray(1024 * 1024, 1024 * 1024 + data.length).equals(data)).toBe(true);
      const direct = pattern(64 * 1024, 34);
      writeFileSync(image, Buffer.concat([direct, readFileSync(image).subarray(direct.length)]));
      expect((await disk.read(0, direct.length)).equals(direct)).toBe(true);
      expect((await disk.read(1024 * 1024, data.length)).equals(data)).toBe(true);
    } finally {
      await disk.close();
    }
  });

  it('nbdkit SIGKILLed and restarted mid-write (QD 8) behind rdma://: every acknowledged write is in the file, none failed', async () => {
    const server = new NbdkitFile(join(dir, 'restart.img'), join(dir, 'restart.sock'));
    writeFileSync(server.image, Buffer.alloc(2 * 1024 * 1024));
    await server.start();
    const lines: string[] = [];
    const spec = parseBlk(`restart=nbd+unix:///?socket=${server.socket},reconnect-delay=0.05,ctrl-loss-tmo=60`);
    fx.target.addExport('restart', await openBlockStorage(spec.path, {}, spec, createLogger('info', (_l, m) => lines.push(m))));
    const disk = await BlockDevice.open(`${base}/restart`, { keepaliveIntervalMs: 0 });
    try {
      const run = await writeThroughServerRestart(disk, server, { count: 256, depth: 8, blockSize: 4096, killAfter: 64 });
      expect(run.inFlightAtKill.length).toBe(8);
      expect(lines.some((l) => /reconnected/.test(l))).toBe(true);
      expect(onlyIoErrors(run.failed)).toBe(true);
      expect([...run.failed.keys()]).toEqual([]);
      expect(run.acked.length).toBe(256);
      expect(run.missing).toEqual([]);
    } finally {
      await disk.close();
      await server.kill();
    }
  });

  it('null:SIZE over rdma://: keyed writes are taken, keyed reads bring zeroes', async () => {
    const disk = await BlockDevice.open(`${base}/null`, { keepaliveIntervalMs: 0 });
    try {
      expect(disk.capacity).toBe(16 * 1024 * 1024);
      await disk.write(0, pattern(256 * 1024, 35));
      const back = await disk.read(0, 256 * 1024);
      expect(back.length).toBe(256 * 1024);
      expect(back.every((b) => b === 0)).toBe(true);
    } finally {
      await disk.close();
    }
  });
});
