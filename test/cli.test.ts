import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, readdirSync, statSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
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
    // Hex as in the text output; sizes as numbers, not strings.
    expect(info.vendorId).toBe('0x1af4');
    expect(info.queueSizes).toEqual([128, 128]);
    expect(info.blk.capacityBytes).toBe(4 * 1024 * 1024);
    expect(info.blk.capacitySectors).toBe(8192);
    // A one-shot command does not warn about its own choices (it said "keepalive disabled").
    expect(r.stderr).toBe('');
    const text = vof(['info', `${target.urls[1]}/cli-disk`, '--ivqn', 'cli-user']);
    expect([text.status, text.stderr]).toEqual([0, '']);
    expect(text.stdout).toMatch(/^vendor id {7}0x1af4$/m);
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
      expect(r.stderr).toMatch(/^vof: RdmaUnavailableError: .*libibverbs-dev librdmacm-dev.*node \S*scripts\/build-addon\.mjs/m);
      return;
    }
    expect(r.status, r.stderr).toBe(0);
    const listed = (JSON.parse(vof(['devices', '--json']).stdout) as Array<{ name: string }>).map((d) => d.name).sort();
    expect(listed).toEqual(kernelDevices);
    if (kernelDevices.length === 0) {
      expect(r.stdout).toMatch(/^no RDMA devices \(soft-RoCE: `rdma link add rxe0 type rxe netdev IFACE`; see the README\)$/m);
    }
  });

  it('vof info for a refused initiator fails with the status name and what it means', () => {
    const r = vof(['info', `${target.urls[0]}/cli-disk`, '--ivqn', 'nobody']);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/EACLREJECTED \(0x1003\)/);
    expect(r.stderr).toMatch(/^vof: hint: unknown TVQN or IVQN not allowed; see --ivqn/m);
    const dflt = vof(['info', `${target.urls[0]}/cli-disk`]);
    expect(dflt.stderr).toMatch(/^vof: hint: .*the default IVQN "vof-initiator"/m);
  });

  it('vof admin queues --json names roles and transports as the table does; no keepalive warning', () => {
    const r = vof(['admin', `${target.urls[0]}/cli-disk`, 'queues', '--json', '--ivqn', 'cli-user']);
    expect([r.status, r.stderr]).toEqual([0, '']);
    const qs = JSON.parse(r.stdout) as Array<{ role: unknown; transport: unknown }>;
    expect(qs.map((q) => q.role)).toContain('control');
    expect(qs.every((q) => q.transport === 'tcp')).toBe(true);
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
    expect(dl.stderr).toBe(''); // --json: no progress bar
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
      expect(info.blk.capacityBytes).toBe(2 * 1024 * 1024);
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

  it('a ,ro export: info shows readOnly, and vof cp onto it says so before writing anything', async () => {
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
      expect(up.stderr).toMatch(/^vof: tcp:\/\/.*\/ro-disk is exported read-only \(VIRTIO_BLK_F_RO\): nothing was written$/m);
      expect(up.stderr).not.toMatch(/IOERR|%/); // refused before the first write (no progress bar)
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

  it('vof cp keeps a sparse disk sparse when downloading, and zero runs go as WRITE_ZEROES when uploading', async () => {
    const size = 16 * 1024 * 1024;
    const sparseDisk = `${scratch.dir}/sparse.img`;
    // 16 MiB, data only in its first and last 64 KiB; the rest is a hole.
    writeFileSync(sparseDisk, '');
    truncateSync(sparseDisk, size);
    const head = Buffer.alloc(65536, 0x41);
    const tail = Buffer.alloc(65536, 0x42);
    const fd = openSync(sparseDisk, 'r+');
    writeSync(fd, head, 0, head.length, 0);
    writeSync(fd, tail, 0, tail.length, size - tail.length);
    closeSync(fd);
    // A destination full of 0xff: zero blocks of the source must become zeros, not be skipped.
    writeFileSync(`${scratch.dir}/full.img`, Buffer.alloc(size, 0xff));
    const t2 = await startTarget(['--listen', 'tcp://127.0.0.1:0', '--blk', `sp=${sparseDisk}`, '--blk', `full=${scratch.dir}/full.img`], 1);
    try {
      const down = `${scratch.dir}/sparse-down.img`;
      const dl = vof(['cp', `${t2.urls[0]}/sp`, down]);
      expect(dl.status, dl.stderr).toBe(0);
      const st = statSync(down);
      expect(st.size).toBe(size);
      // Allocated: the two 64 KiB pieces (plus file system slack), far below 16 MiB.
      expect(st.blocks * 512).toBeLessThan(1024 * 1024);
      expect(readFileSync(down).equals(readFileSync(sparseDisk))).toBe(true);
      const up = vof(['cp', sparseDisk, `${t2.urls[0]}/full`]);
      expect(up.status, up.stderr).toBe(0);
      expect(readFileSync(`${scratch.dir}/full.img`).equals(readFileSync(sparseDisk))).toBe(true);
    } finally {
      await t2.stop();
    }
  });

  it('SIGINT during vof cp: exit 130 and a message that the destination is incomplete', async () => {
    // A "target" that accepts and never answers: cp is certainly still running at the signal.
    const silent = createServer(() => {});
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const port = (silent.address() as AddressInfo).port;
    try {
      const child = spawn(process.execPath, [...VOF, 'cp', `tcp://127.0.0.1:${port}/x`, `${scratch.dir}/never.img`], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (d) => (stderr += d));
      const accepted = new Promise((r) => silent.once('connection', r));
      await accepted;
      const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
      child.kill('SIGINT');
      expect(await exited).toBe(130);
      expect(stderr).toMatch(/^vof: interrupted: .*never\.img is incomplete/m);
    } finally {
      silent.close();
    }
  });

  it('TLS failures carry a hint: a wrong PSK, and tcp:// to a tls:// listener', async () => {
    const psk = `${scratch.dir}/psk.txt`;
    const other = `${scratch.dir}/psk-other.txt`;
    writeFileSync(psk, `id1:${'ab'.repeat(32)}\n`);
    writeFileSync(other, `id1:${'cd'.repeat(32)}\n`);
    const t = await startTarget(['--listen', 'tls://127.0.0.1:0', '--tls-psk', psk, '--blk', `d=${disk},ro`], 1);
    try {
      const port = t.urls[0]!.split(':').pop();
      const wrong = vof(['info', `tls://127.0.0.1:${port}/d`, '--tls-psk', other]);
      expect(wrong.status).toBe(1);
      expect(wrong.stderr).toMatch(/^vof: hint: the TLS handshake failed: check --tls-psk FILE .*--tls-ca FILE/m);
      const plain = vof(['info', `tcp://127.0.0.1:${port}/d`]);
      expect(plain.status).toBe(1);
      expect(plain.stderr).toMatch(/^vof: hint: .*is this a tls:\/\/ listener\?/m);
      const ok = vof(['info', `tls://127.0.0.1:${port}/d`, '--tls-psk', psk]);
      expect(ok.status, ok.stderr).toBe(0);
    } finally {
      await t.stop();
    }
  });
});
