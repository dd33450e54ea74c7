import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TargetFixture } from './helpers/target-fixture.js';
import { VOF_CLI, startTarget as start, type StartedTarget } from '../scripts/start-target.mjs';

const startTarget = (args: string[], lines: number) => start(args, { lines });

const VOF = [VOF_CLI];

function vof(args: string[]) {
  return spawnSync(process.execPath, [...VOF, ...args], { encoding: 'utf8', timeout: 20000 });
}

describe('vof CLI', () => {
  const scratch = new TargetFixture(); // only for its temp dir
  let disk: string;
  let target: StartedTarget;

  beforeAll(async () => {
    disk = `${scratch.dir}/disk.img`;
    writeFileSync(disk, Buffer.alloc(4 * 1024 * 1024));
    target = await startTarget(['--listen', 'tcp://127.0.0.1:0', '--listen', 'tcp://127.0.0.1:0', '--blk', `cli-disk=${disk}`, '--allow', 'cli-user', '--keepalive-interval', '1000'], 2);
  });
  afterAll(async () => {
    target?.child.kill('SIGKILL');
    await scratch.close();
  });

  it('prints one "listening on" line per address', () => {
    expect(target.urls).toHaveLength(2);
    for (const u of target.urls) expect(u).toMatch(/^tcp:\/\/127\.0\.0\.1:\d+$/);
  });

  it('vof info --json reports ids, features, queues and config', () => {
    const r = vof(['info', `${target.urls[1]}/cli-disk`, '--ivqn', 'cli-user', '--json']);
    expect(r.status, r.stderr).toBe(0);
    const info = JSON.parse(r.stdout);
    expect(info.deviceId).toBe(2);
    expect(info.vendorId).toBe(0x1af4);
    expect(info.queueSizes).toEqual([128, 128]);
    expect(info.blk.capacityBytes).toBe(String(4 * 1024 * 1024));
    expect(info.deviceFeatures.names).toContain('VIRTIO_F_VERSION_1');
  });

  it('vof devices lists what the kernel has, says so when that is nothing, and names what to install without the addon', async () => {
    const sysfs = '/sys/class/infiniband';
    const kernelDevices = existsSync(sysfs) ? readdirSync(sysfs).sort() : [];
    const r = vof(['devices']);
    // A fresh machine without rdma-core (or with it but without a built addon): the command
    // must fail with one line saying what to install, not crash (test/no-rdma-core.test.ts
    // covers the same with the headers hidden).
    const { nativeBinding } = await import('../src/transport/rdma/native-binding.js');
    let addonLoads = true;
    try {
      nativeBinding();
    } catch {
      addonLoads = false;
    }
    if (!addonLoads) {
      process.stderr.write('\nnote: the RDMA addon does not load here; checking that `vof devices` says what to install\n');
      expect(r.status).toBe(1);
      expect(r.stdout).toBe('');
      expect(r.stderr).toMatch(/^vof: RdmaUnavailableError: .*libibverbs-dev librdmacm-dev.*npm rebuild vof/m);
      return;
    }
    expect(r.status, r.stderr).toBe(0);
    const listed = (JSON.parse(vof(['devices', '--json']).stdout) as Array<{ name: string }>).map((d) => d.name).sort();
    expect(listed).toEqual(kernelDevices);
    if (kernelDevices.length === 0) {
      expect(r.stdout).toMatch(/^no RDMA devices \(soft-RoCE: `rdma link add rxe0 type rxe netdev IFACE`; see the README\)$/m);
    }
  });

  it('vof info for a refused initiator fails with the status name', () => {
    const r = vof(['info', `${target.urls[0]}/cli-disk`, '--ivqn', 'nobody']);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/EACLREJECTED \(0x1003\)/);
  });

  it('vof cp copies a file up and the disk back down', () => {
    const src = `${scratch.dir}/src.bin`;
    const data = Buffer.alloc(3 * 1024 * 1024 + 100);
    for (let i = 0; i < data.length; i++) data[i] = (i * 31 + 7) & 0xff;
    writeFileSync(src, data);
    const up = vof(['cp', src, `${target.urls[0]}/cli-disk`, '--ivqn', 'cli-user']);
    expect(up.status, up.stderr).toBe(0);
    expect(up.stdout).toMatch(/copied 3145828 bytes/);
    expect(up.stderr).toMatch(/100\.0%/);
    const down = `${scratch.dir}/down.bin`;
    const dl = vof(['cp', `${target.urls[0]}/cli-disk`, down, '--ivqn', 'cli-user', '--json']);
    expect(dl.status, dl.stderr).toBe(0);
    expect(JSON.parse(dl.stdout).bytes).toBe(4 * 1024 * 1024);
    const got = readFileSync(down);
    expect(got.subarray(0, data.length).equals(data)).toBe(true);
    expect(got.subarray(data.length).every((x) => x === 0)).toBe(true);
  });

  it('explains bad usage', () => {
    const r = vof(['target', '--blk', 'x=/nonexistent']);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/needs at least one --listen/);
    const r2 = vof(['target', '--listen', 'tcp://127.0.0.1:0', '--blk', 'x=/nonexistent/disk']);
    expect(r2.status).toBe(1);
    expect(r2.stderr).toMatch(/cannot open \/nonexistent\/disk/);
    const r3 = vof(['info', 'http://x/y']);
    expect(r3.stderr).toMatch(/not a Virtio-oF address/);
    const r4 = vof(['target', '--listen', 'tcp://127.0.0.1:0', '--blk', 'x=/nonexistent/disk', '--inline-data', '65537']);
    expect([r4.status, r4.stderr]).toEqual([2, expect.stringMatching(/--inline-data must be an integer from 0 to 65536, got "65537"/)]);
  });

  it('vof target --config FILE alone: listen, blk and its allow-list come from the file', async () => {
    const cfgDisk = `${scratch.dir}/cfg.img`;
    const content = Buffer.alloc(2 * 1024 * 1024);
    content.fill(0x3c, 0, 512);
    writeFileSync(cfgDisk, content);
    const cfgFile = `${scratch.dir}/target.json`;
    writeFileSync(cfgFile, JSON.stringify({ listen: ['tcp://127.0.0.1:0'], blk: [{ tvqn: 'cfg-disk', path: cfgDisk, allow: ['cfg-user'] }] }));
    const t = await startTarget(['--config', cfgFile], 1);
    try {
      expect(t.urls).toHaveLength(1);
      expect(t.urls[0]).toMatch(/^tcp:\/\/127\.0\.0\.1:\d+$/);
      const r = vof(['info', `${t.urls[0]}/cfg-disk`, '--ivqn', 'cfg-user', '--json']);
      expect(r.status, r.stderr).toBe(0);
      const info = JSON.parse(r.stdout);
      expect(info.blk.capacityBytes).toBe(String(2 * 1024 * 1024));
      expect(info.blk.readOnly).toBe(false);
      expect(info.config.slice(0, 16)).toBe('0010000000000000'); // capacity 4096 sectors, le64
      const down = `${scratch.dir}/cfg-down.bin`;
      const dl = vof(['cp', `${t.urls[0]}/cfg-disk`, down, '--ivqn', 'cfg-user']);
      expect(dl.status, dl.stderr).toBe(0);
      expect(readFileSync(down).equals(content)).toBe(true);
      const refused = vof(['info', `${t.urls[0]}/cfg-disk`, '--ivqn', 'other', '--json']);
      expect(refused.status).toBe(1);
      expect(refused.stdout).toBe('');
      expect(refused.stderr).toMatch(/EACLREJECTED \(0x1003\)/);
    } finally {
      expect(await t.stop()).toBe(0);
    }
  });

  it('a ,ro export: info shows readOnly, and vof cp onto it fails with IOERR and writes nothing', async () => {
    const roDisk = `${scratch.dir}/ro.img`;
    writeFileSync(roDisk, Buffer.alloc(1024 * 1024, 0x5a));
    const t = await startTarget(['--listen', 'tcp://127.0.0.1:0', '--blk', `ro-disk=${roDisk},ro`], 1);
    try {
      const r = vof(['info', `${t.urls[0]}/ro-disk`, '--json']);
      expect(r.status, r.stderr).toBe(0);
      const info = JSON.parse(r.stdout);
      expect(info.blk.readOnly).toBe(true);
      expect(info.deviceFeatures.names).toContain('VIRTIO_BLK_F_RO');
      const text = vof(['info', `${t.urls[0]}/ro-disk`]);
      expect(text.stdout).toMatch(/read-only/);
      const src = `${scratch.dir}/local.img`;
      writeFileSync(src, Buffer.alloc(64 * 1024, 0x11));
      const up = vof(['cp', src, `${t.urls[0]}/ro-disk`]);
      expect(up.status, up.stderr).toBe(1);
      expect(up.stderr).toMatch(/^vof: .*write at \d+: IOERR$/m);
      expect(up.stderr).not.toMatch(/^\s+at /m); // a message, not a stack trace
      expect(up.stdout).not.toMatch(/copied/);
      expect(readFileSync(roDisk).every((x) => x === 0x5a)).toBe(true);
    } finally {
      expect(await t.stop()).toBe(0);
    }
  });

  it('shuts down cleanly on SIGINT', async () => {
    const t = await startTarget(['--listen', 'tcp://127.0.0.1:0', '--blk', `d=${disk},ro`], 1);
    const exited = new Promise<number | null>((r) => t.child.once('exit', (code) => r(code)));
    // A connected initiator must not keep it from exiting.
    const r = vof(['info', `${t.urls[0]}/d`, '--json']);
    expect(r.status, r.stderr).toBe(0);
    t.child.kill('SIGINT');
    expect(await exited).toBe(0);
    expect(t.stderr()).toMatch(/SIGINT: shutting down/);
    expect(t.stderr()).not.toMatch(/SIGTERM/);
  });

  it('shuts down cleanly on SIGTERM', async () => {
    const t = await startTarget(['--listen', 'tcp://127.0.0.1:0', '--blk', `d=${disk},ro`], 1);
    const code = await t.stop();
    expect(code).toBe(0);
    expect(t.stderr()).toMatch(/SIGTERM: shutting down/);
  });
});
