import { mkdtempSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockDevice, silentLogger, statusName } from '../src/index.js';
import { ControlSocket } from '../src/target/control-socket.js';
import { controlRequest } from '../src/target/control-client.js';
import { startTarget, type StartedTarget } from '../scripts/start-target.mjs';
import { RawQueue } from './helpers/raw-queue.js';
import { vofAsync } from './helpers/vof-cli.js';
import { waitFor } from './helpers/wait-for.js';

/** The process umask, read without leaving it changed (process.umask() without an argument is deprecated). */
function currentUmask(): number {
  const mask = process.umask(0o022);
  process.umask(mask);
  return mask;
}

/** Status name of a seed-only control-queue Connect (no redirect flag) for `tvqn`. */
async function connectStatus(port: number, tvqn: string): Promise<string> {
  const q = await RawQueue.open(port);
  try {
    return statusName((await q.connectControl(tvqn)).readUInt16LE(0));
  } finally {
    await q.close();
  }
}

describe('control socket (issue 17, findings 10c and 12b)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vof-control-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('the umask is restored when the socket cannot listen', async () => {
    const before = currentUmask();
    const handler = { drain: () => Promise.reject(new Error('unused')), redirect: () => '', unredirect: () => false, stats: () => ({}) };
    await expect(ControlSocket.listen(join(dir, 'no-such-dir', 'ctl.sock'), handler, silentLogger)).rejects.toThrow(/listen E/);
    expect(currentUmask()).toBe(before);
    // And after a successful listen, too.
    const ok = await ControlSocket.listen(join(dir, 'ok.sock'), handler, silentLogger);
    expect(statSync(join(dir, 'ok.sock')).mode & 0o777).toBe(0o600); // operators only
    await ok.close();
    expect(currentUmask()).toBe(before);
  });

  describe('against a running vof target --control', () => {
    let target: StartedTarget;
    let control: string;
    let port: number;
    const disk = join(dir, 'd.img');
    beforeAll(async () => {
      writeFileSync(disk, Buffer.alloc(1024 * 1024));
      control = join(dir, 't.ctl');
      target = await startTarget(['--listen', 'tcp://127.0.0.1:0', '--blk', `d=${disk}`, '--blk', 'zero=null:1m', '--control', control]);
      port = Number(new URL(target.urls[0]!.replace(/^tcp:/, 'http:')).port);
    });
    afterAll(async () => {
      await target?.stop();
    });

    it('vof drain --remove TVQN takes a redirect away: Connects get the normal answer again', async () => {
      const drained = await vofAsync(['drain', '--control', control, 'd', 'tcp://127.0.0.1:1', '--grace', '0']);
      expect(drained.status, drained.stderr).toBe(0);
      expect(await connectStatus(port, 'd')).toBe('EACLREJECTED'); // moved; this initiator does not follow redirects
      const removed = await vofAsync(['drain', '--control', control, '--remove', 'd']);
      expect(removed.stderr).toBe('');
      expect(removed.status).toBe(0);
      expect(removed.stdout).toMatch(/^"d" is no longer redirected/);
      expect(await connectStatus(port, 'd')).toBe('SUCCESS');
      // Nothing left to remove: said so, exit 1.
      const again = await vofAsync(['drain', '--control', control, '--remove', 'd']);
      expect(again.status).toBe(1);
      expect(again.stderr).toMatch(/"d" is not redirected by this target/);
      // The JSON op under it.
      expect(await controlRequest(control, { op: 'unredirect', tvqn: 'd' })).toEqual({ ok: true, removed: false });
      expect(target.stderr()).toMatch(/redirect of "d" removed/);
    });

    it('vof drain of a TVQN the target neither exports nor redirects fails, and installs nothing', async () => {
      const r = await vofAsync(['drain', '--control', control, 'nosuch', 'tcp://127.0.0.1:1', '--grace', '0']);
      expect(r.status).toBe(1);
      expect(r.stdout).toBe('');
      expect(r.stderr).toMatch(/drain refused: "nosuch" is neither exported nor redirected by this target/);
      expect(await controlRequest(control, { op: 'unredirect', tvqn: 'nosuch' })).toEqual({ ok: true, removed: false });
      // A TVQN that is only redirected here can be drained again (to a new destination).
      expect((await controlRequest(control, { op: 'redirect', tvqn: 'elsewhere', url: 'tcp://127.0.0.1:1' })).ok).toBe(true);
      const moved = await vofAsync(['drain', '--control', control, 'elsewhere', 'tcp://127.0.0.1:2', '--grace', '0']);
      expect(moved.status, moved.stderr).toBe(0);
      expect((await controlRequest(control, { op: 'unredirect', tvqn: 'elsewhere' })).removed).toBe(true);
    });

    it('vof revalidate TVQN after the file grew: connected initiators get a config change with the new capacity, and I/O reaches the new end', async () => {
      const d = await BlockDevice.open(`tcp://127.0.0.1:${port}/d`, { log: silentLogger });
      try {
        expect(d.capacity).toBe(1024 * 1024);
        const changed = new Promise<void>((resolve) => d.device.once('configChange', () => resolve()));
        truncateSync(disk, 3 * 1024 * 1024);
        const r = await vofAsync(['revalidate', '--control', control, 'd']);
        expect([r.status, r.stderr]).toEqual([0, '']);
        expect(r.stdout).toBe('"d": 3145728 bytes, changed: its initiators were sent a config change\n');
        await changed;
        // BlockDevice re-reads the config space on the change: its capacity is the new one, and
        // the target bounds-checks against it (a write past the old end is no longer an IOERR).
        await waitFor('the new capacity', () => d.capacity === 3 * 1024 * 1024, 2000);
        expect(d.capacity).toBe(3 * 1024 * 1024);
        const block = Buffer.alloc(4096, 0xa5);
        await d.write(2 * 1024 * 1024, block);
        expect((await d.read(2 * 1024 * 1024, 4096)).equals(block)).toBe(true);
        // Again without a change: said so, nothing sent.
        const same = await vofAsync(['revalidate', '--control', control, 'd', '--json']);
        expect(same.status, same.stderr).toBe(0);
        expect(JSON.parse(same.stdout)).toEqual({ ok: true, capacityBytes: 3 * 1024 * 1024, changed: false });
      } finally {
        await d.close();
      }
      // A TVQN not exported here, and an export with no size to re-read: refused, exit 1.
      const none = await vofAsync(['revalidate', '--control', control, 'nosuch']);
      expect([none.status, none.stdout]).toEqual([1, '']);
      expect(none.stderr).toMatch(/revalidate refused: "nosuch" is not exported by this target/);
      const zero = await vofAsync(['revalidate', '--control', control, 'zero']);
      expect(zero.status).toBe(1);
      expect(zero.stderr).toMatch(/revalidate refused: "zero": null:1m is not a local file or block device: its size cannot be re-read/);
      expect(target.stderr()).toMatch(/revalidate "d": 3145728 bytes, changed/);
    });
  });
});
