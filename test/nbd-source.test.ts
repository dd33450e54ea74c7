import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockDevice, BlockIoError, SECTOR_SIZE, createLogger } from '../src/index.js';
import { openBlockStorage } from '../src/target/blk/open-storage.js';
import { parseBlk } from '../src/cli/target-command.js';
import { needs } from './helpers/deps.js';
import { pattern } from './helpers/pattern.js';
import { TargetFixture } from './helpers/target-fixture.js';
import { cookie, hostileServer, u32 } from './helpers/hostile-nbd.js';
import { NbdkitFile, onlyIoErrors, writeThroughServerRestart } from './helpers/nbd-restart.js';
import { waitForSocket } from './helpers/wait-for.js';

/**
 * A vof target whose disks live on NBD servers (issue 20), against real servers: nbdkit,
 * qemu-nbd serving a qcow2 image, qemu-storage-daemon. What an initiator writes through vof is
 * read back through the server (or its image) directly.
 */
const deps = needs('test/nbd-source.test.ts (vof target over NBD servers)', ['nbd-source-tests']);
const quiet = { keepaliveIntervalMs: 0 };


function start(cmd: string, args: string[], sock: string): Promise<ChildProcess> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'inherit', 'inherit'] });
  return waitForSocket(sock, child, cmd, 10000).then(() => child);
}

/** SIGKILL: nbdkit waits for its clients before it exits on SIGTERM, and a dying server is what is tested. */
async function stop(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null) return;
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
}

describe.skipIf(!deps.ok)(`vof target over NBD sources${deps.skipNote}`, () => {
  let fx: TargetFixture;
  const children: ChildProcess[] = [];
  const log = createLogger('silent');
  beforeAll(async () => {
    fx = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 120000 } });
    await fx.addDisk('local', 1024 * 1024);
    await fx.listen();
  });
  afterAll(async () => {
    await fx?.close();
    for (const c of children) await stop(c);
  });

  async function exportSource(tvqn: string, uri: string, settings = {}): Promise<void> {
    const disk = await openBlockStorage(uri, {}, { reconnectDelay: 0.05, ctrlLossTmo: 0.5, ...settings }, log);
    fx.target.addExport(tvqn, disk);
  }

  it('nbdkit file plugin: writes, flushes, discards and zeroes reach the file; reads come back; multi-conn', async () => {
    const image = join(fx.dir, 'nbdkit.img');
    writeFileSync(image, Buffer.alloc(4 * 1024 * 1024));
    const sock = join(fx.dir, 'nbdkit.sock');
    children.push(await start('nbdkit', ['--foreground', '--exit-with-parent', '-U', sock, 'file', image], sock));
    await exportSource('nbdkit', `nbd+unix:///?socket=${sock}`, { connections: 2 });
    const disk = await BlockDevice.open(`${fx.url}/nbdkit`, quiet);
    try {
      expect(disk.capacity).toBe(4 * 1024 * 1024);
      expect(disk.canFlush).toBe(true);
      expect(disk.canDiscard && disk.canWriteZeroes).toBe(true);
      const data = pattern(256 * 1024, 21);
      await disk.write(65536, data);
      await disk.flush();
      expect((await disk.read(65536, data.length)).equals(data)).toBe(true);
      expect(readFileSync(image).subarray(65536, 65536 + data.length).equals(data)).toBe(true);
      await disk.writeZeroes(65536, 4096);
      await disk.flush();
      expect(readFileSync(image).subarray(65536, 65536 + 4096).every((b) => b === 0)).toBe(true);
      await disk.discard(1024 * 1024, 65536);
    } finally {
      await disk.close();
    }
  });

  it('a read-only server (nbdkit -r) gives a read-only disk; a write is IOERR', async () => {
    const image = join(fx.dir, 'ro.img');
    writeFileSync(image, pattern(1024 * 1024, 5));
    const sock = join(fx.dir, 'ro.sock');
    children.push(await start('nbdkit', ['--foreground', '--exit-with-parent', '-r', '-U', sock, 'file', image], sock));
    await exportSource('ro', `nbd+unix:///?socket=${sock}`);
    const disk = await BlockDevice.open(`${fx.url}/ro`, quiet);
    try {
      expect(disk.readOnly).toBe(true);
      expect((await disk.read(0, 8192)).equals(pattern(1024 * 1024, 5).subarray(0, 8192))).toBe(true);
      await expect(disk.write(0, Buffer.alloc(SECTOR_SIZE))).rejects.toBeInstanceOf(BlockIoError);
    } finally {
      await disk.close();
    }
  });

  it('qemu-nbd serving qcow2: what vof wrote is in the image (qemu-img check clean, compare equal)', async () => {
    const qcow = join(fx.dir, 'disk.qcow2');
    const expected = join(fx.dir, 'expected.raw');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', qcow, '8M']);
    const sock = join(fx.dir, 'qemu-nbd.sock');
    const qemuNbd = await start('qemu-nbd', ['-k', sock, '-f', 'qcow2', '-x', 'img', '--cache=none', '--aio=threads', '-e', '4', qcow], sock);
    const want = Buffer.alloc(8 * 1024 * 1024);
    try {
      await exportSource('qcow', `nbd+unix:///img?socket=${sock}`);
      const disk = await BlockDevice.open(`${fx.url}/qcow`, quiet);
      try {
        for (const [off, len, seed] of [[0, 65536, 1], [3 * 1024 * 1024, 512 * 1024, 2], [8 * 1024 * 1024 - 4096, 4096, 3]] as const) {
          const d = pattern(len, seed);
          await disk.write(off, d);
          d.copy(want, off);
        }
        await disk.flush();
      } finally {
        await disk.close();
      }
    } finally {
      await stop(qemuNbd);
    }
    writeFileSync(expected, want);
    execFileSync('qemu-img', ['check', '-q', qcow]);
    execFileSync('qemu-img', ['compare', '-q', '-f', 'qcow2', '-F', 'raw', qcow, expected]);
  });

  it('qemu-storage-daemon --export nbd: data round-trips and lands in the file', async () => {
    const image = join(fx.dir, 'qsd.img');
    writeFileSync(image, Buffer.alloc(2 * 1024 * 1024));
    const sock = join(fx.dir, 'qsd.sock');
    children.push(
      await start(
        'qemu-storage-daemon',
        ['--blockdev', `driver=file,node-name=file0,filename=${image}`, '--nbd-server', `addr.type=unix,addr.path=${sock}`, '--export', 'type=nbd,id=e0,node-name=file0,name=qsd,writable=on'],
        sock,
      ),
    );
    await exportSource('qsd', `nbd+unix:///qsd?socket=${sock}`);
    const disk = await BlockDevice.open(`${fx.url}/qsd`, quiet);
    try {
      const d = pattern(128 * 1024, 8);
      await disk.write(4096, d);
      await disk.flush();
      expect((await disk.read(4096, d.length)).equals(d)).toBe(true);
      expect(readFileSync(image).subarray(4096, 4096 + d.length).equals(d)).toBe(true);
    } finally {
      await disk.close();
    }
  });

  it('a server that goes away for good: requests fail, the disk needs a reset, the other exports keep working', async () => {
    const image = join(fx.dir, 'gone.img');
    writeFileSync(image, Buffer.alloc(1024 * 1024));
    const sock = join(fx.dir, 'gone.sock');
    const server = await start('nbdkit', ['--foreground', '--exit-with-parent', '-U', sock, 'file', image], sock);
    await exportSource('gone', `nbd+unix:///?socket=${sock}`);
    const disk = await BlockDevice.open(`${fx.url}/gone`, quiet);
    const local = await BlockDevice.open(`${fx.url}/local`, quiet);
    try {
      await disk.write(0, pattern(4096, 1));
      await stop(server);
      // After the 0.5 s loss timeout the source is lost: this read fails instead of waiting forever.
      const err = await disk.read(0, 4096).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(Error);
      expect(fx.logged(/DEVICE_NEEDS_RESET: the NBD server nbd\+unix:\/\/\/\?socket=.* stayed away/)).toBe(true);
      const d = pattern(8192, 4);
      await local.write(0, d);
      expect((await local.read(0, d.length)).equals(d)).toBe(true);
    } finally {
      await disk.close().catch(() => {});
      await local.close();
    }
  });

  it('the server SIGKILLed and restarted mid-write (QD 8): every acknowledged write is in the file, the writes in flight complete after the restart', async () => {
    const image = join(fx.dir, 'restart.img');
    writeFileSync(image, Buffer.alloc(4 * 1024 * 1024));
    const server = new NbdkitFile(image, join(fx.dir, 'restart.sock'));
    await server.start();
    const lines: string[] = [];
    // The knobs as --blk takes them: the server comes back well within ctrl-loss-tmo.
    const spec = parseBlk(`restart=nbd+unix:///?socket=${server.socket},reconnect-delay=0.05,ctrl-loss-tmo=30`);
    fx.target.addExport('restart', await openBlockStorage(spec.path, {}, spec, createLogger('info', (_l, m) => lines.push(m))));
    const disk = await BlockDevice.open(`${fx.url}/restart`, quiet);
    try {
      const run = await writeThroughServerRestart(disk, server, { count: 768, depth: 8, blockSize: 4096, killAfter: 200 });
      // The pause before the kill pins down the writes nbdkit had been sent and never answered.
      expect(run.inFlightAtKill.length).toBe(8);
      expect(lines.some((l) => /reconnected/.test(l))).toBe(true);
      // None is lost silently: a failure could only be IOERR; and since the server was back
      // before ctrl-loss-tmo, the writes it never answered were sent again and none failed.
      expect(onlyIoErrors(run.failed)).toBe(true);
      expect([...run.failed.keys()]).toEqual([]);
      expect(run.acked.length).toBe(768);
      expect(run.missing).toEqual([]);
    } finally {
      await disk.close();
      await server.kill();
    }
  });

  it('null:SIZE reads zeroes and takes writes without storing them', async () => {
    fx.target.addExport('null', await openBlockStorage('null:64m', {}, {}, log));
    const disk = await BlockDevice.open(`${fx.url}/null`, quiet);
    try {
      expect(disk.capacity).toBe(64 * 1024 * 1024);
      await disk.write(0, pattern(65536, 2));
      expect((await disk.read(0, 65536)).every((b) => b === 0)).toBe(true);
      await disk.flush();
    } finally {
      await disk.close();
    }
  });

  it('bad sources are clear errors before anything is exported', async () => {
    await expect(openBlockStorage('nbd+unix:///?socket=/nonexistent.sock', {}, {}, log)).rejects.toThrow(/nbd unix:\/nonexistent.sock: .*ENOENT/);
    await expect(openBlockStorage('null:12', {}, {}, log)).rejects.toThrow(/at least 512 bytes/);
    await expect(openBlockStorage('nbd://127.0.0.1:1/x', {}, { tlsPsk: '/x' }, log)).rejects.toThrow(/need an nbds:\/\/ URI|ENOENT/);
    await expect(openBlockStorage(join(fx.dir, 'local.img'), {}, { connections: 2 }, log)).rejects.toThrow(/NBD sources/);
  });
});

describe('--blk with NBD sources and null:SIZE', () => {
  it('takes the URI and its options; refuses unknown ones with the list', () => {
    expect(parseBlk('d=nbds://store.example:10809/vol1,ro,connections=4,tls-ca=/etc/ca.pem,ctrl-loss-tmo=30,reconnect-delay=0.5')).toEqual({
      tvqn: 'd',
      path: 'nbds://store.example:10809/vol1',
      readOnly: true,
      connections: 4,
      tlsCa: '/etc/ca.pem',
      ctrlLossTmo: 30,
      reconnectDelay: 0.5,
    });
    expect(parseBlk('n=null:1g')).toEqual({ tvqn: 'n', path: 'null:1g', readOnly: false });
    expect(parseBlk('u=nbd+unix:///img?socket=/run/qemu-nbd.sock,tls-psk=/k')).toMatchObject({ path: 'nbd+unix:///img?socket=/run/qemu-nbd.sock', tlsPsk: '/k' });
    expect(() => parseBlk('d=nbd://h/x,conections=2')).toThrow(/unknown option "conections=2" \(did you mean connections\?\)/);
    expect(() => parseBlk('d=nbd://h/x,ctrl-loss-tmo=soon')).toThrow(/ctrl-loss-tmo= takes seconds/);
  });
});

describe('a target whose NBD source answers with garbage', () => {
  it("the disk's requests fail cleanly (IOERR after the loss timeout), the connection is dropped with a log line, other exports keep working", async () => {
    const srv = await hostileServer((h) => Buffer.concat([u32(0xdeadbeef), u32(0), cookie(h)]));
    const lines: string[] = [];
    const fx = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 120000 } });
    try {
      await fx.addDisk('local', 1024 * 1024);
      fx.target.addExport('evil', await openBlockStorage(`nbd://127.0.0.1:${srv.port}/`, {}, { reconnectDelay: 0.05, ctrlLossTmo: 0.5 }, createLogger('info', (_l, m) => lines.push(m))));
      await fx.listen();
      const evil = await BlockDevice.open(`${fx.url}/evil`, quiet);
      const local = await BlockDevice.open(`${fx.url}/local`, quiet);
      try {
        await expect(evil.read(0, 4096)).rejects.toBeInstanceOf(BlockIoError);
        expect(lines.some((l) => /a reply with bad magic 0xdeadbeef; disconnecting/.test(l))).toBe(true);
        const d = pattern(4096, 6);
        await local.write(0, d);
        expect((await local.read(0, 4096)).equals(d)).toBe(true);
      } finally {
        await evil.close().catch(() => {});
        await local.close();
      }
    } finally {
      await fx.close();
      srv.close();
    }
  });
});
