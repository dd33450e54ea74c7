import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTarget, type StartedTarget } from '../../scripts/start-target.mjs';
import { BlockDevice, VofRedirectError, silentLogger } from '../../src/index.js';
import { rdmaAddress } from './rdma-env.js';

/**
 * Issue 13, redirect across transports on soft-RoCE: a TCP target redirects to an RDMA one
 * (the record read from a TCP stream), and an RDMA target redirects to a TCP one (the record
 * carried in the completion's SEND, 536 bytes, into the control queue's larger receive buffer).
 */

describe('redirect between TCP and RDMA', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vof-redirect-rdma-'));
  const file = join(dir, 'disk.img');
  const targets: StartedTarget[] = [];
  let serving: StartedTarget;

  beforeAll(async () => {
    writeFileSync(file, Buffer.alloc(1 << 20));
    serving = await startTarget(['--listen', 'tcp://127.0.0.1:0', '--listen', `rdma://${rdmaAddress()}:0`, '--blk', `d=${file}`], { lines: 2, timeoutMs: 120000 });
    targets.push(serving);
  }, 180000);
  afterAll(async () => {
    for (const t of targets) if (t.child.exitCode === null) t.child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('TCP → RDMA: the initiator follows to the RDMA listener and does I/O over RDMA', async () => {
    const a = await startTarget(['--listen', 'tcp://127.0.0.1:0', '--redirect', `d=${serving.urls[1]}`], { timeoutMs: 120000 });
    targets.push(a);
    // A redirect keeps the URL's transport unless the user allows the move.
    const refused = await BlockDevice.open(`${a.urls[0]}/d`, { log: silentLogger }).then(() => null, (e: Error) => e);
    expect((refused as VofRedirectError).reason).toBe('transport');
    const d = await BlockDevice.open(`${a.urls[0]}/d`, { log: silentLogger, allowRedirectTo: ['rdma'] });
    expect(d.device.url).toBe(`${serving.urls[1]}/d`);
    expect(d.device.maxKeyedDescriptors).toBeGreaterThan(0);
    await d.write(0, Buffer.alloc(65536, 0x3c));
    await d.flush();
    expect((await d.read(0, 65536)).equals(Buffer.alloc(65536, 0x3c))).toBe(true);
    await d.close();
    expect(readFileSync(file).subarray(0, 65536).equals(Buffer.alloc(65536, 0x3c))).toBe(true);
  }, 180000);

  it('RDMA → TCP: the redirect record arrives in the completion SEND', async () => {
    const a = await startTarget(['--listen', `rdma://${rdmaAddress()}:0`, '--redirect', `d=${serving.urls[0]}`], { timeoutMs: 120000 });
    targets.push(a);
    const d = await BlockDevice.open(`${a.urls[0]}/d`, { log: silentLogger, allowRedirectTo: ['tcp'] });
    expect(d.device.url).toBe(`${serving.urls[0]}/d`);
    expect((await d.read(0, 4096)).equals(Buffer.alloc(4096, 0x3c))).toBe(true);
    await d.close();
    expect(a.stderr()).toMatch(/EREDIRECT to tcp:\/\/127\.0\.0\.1:\d+\/d/);
  }, 180000);
});
