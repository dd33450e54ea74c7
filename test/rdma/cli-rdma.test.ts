import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VOF_CLI, startTarget, type StartedTarget } from '../../scripts/start-target.mjs';
import { rdmaAddress } from './rdma-env.js';

function vof(args: string[]) {
  return spawnSync(process.execPath, [VOF_CLI, ...args], { encoding: 'utf8', timeout: 300000 });
}

describe('vof CLI over RDMA', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vof-cli-rdma-'));
  const disk = join(dir, 'disk.img');
  let target: StartedTarget;

  beforeAll(async () => {
    writeFileSync(disk, Buffer.alloc(2 * 1024 * 1024));
    target = await startTarget(['--listen', 'tcp://127.0.0.1:0', '--listen', `rdma://${rdmaAddress()}:0`, '--blk', `rdisk=${disk}`], {
      lines: 2,
      timeoutMs: 120000,
    });
  });
  afterAll(async () => {
    if (target) expect(await target.stop()).toBe(0);
    rmSync(dir, { recursive: true, force: true });
  });

  it('vof devices lists the rxe device with an ACTIVE port and its GIDs', () => {
    const r = vof(['devices', '--json']);
    expect(r.status, r.stderr).toBe(0);
    const devices = JSON.parse(r.stdout) as Array<{ name: string; ports: Array<{ state: string; gids: unknown[] }> }>;
    const dev = devices.find((d) => d.name === (process.env['VOF_RDMA_DEV'] ?? 'rxe0'));
    expect(dev?.ports[0]?.state).toBe('ACTIVE');
    expect(dev?.ports[0]?.gids.length).toBeGreaterThan(0);
    const text = vof(['devices']);
    expect(text.stdout).toMatch(/port 1: ACTIVE, Ethernet, active MTU \d+/);
  });

  it('one target listens on TCP and RDMA at once', () => {
    expect(target.urls[0]).toMatch(/^tcp:\/\/127\.0\.0\.1:\d+$/);
    expect(target.urls[1]).toMatch(new RegExp(`^rdma://${rdmaAddress().replace(/\./g, '\\.')}:\\d+$`));
  });

  it('vof info over RDMA shows the keyed-descriptor feature; vof cp moves a file up and back', () => {
    const info = vof(['info', `${target.urls[1]}/rdisk`, '--json']);
    expect(info.status, info.stderr).toBe(0);
    const parsed = JSON.parse(info.stdout) as {
      deviceId: number;
      maxKeyedDescriptors: number;
      inlineDataBytes: number;
      virtioOfFeatures: { negotiated: string };
      blk: { capacityBytes: number };
    };
    expect(parsed.deviceId).toBe(2);
    expect(parsed.blk.capacityBytes).toBe(2 * 1024 * 1024);
    // VIRTIO_OF_F_KEYED_NUM_DESCS, vof's inline data (bit 56) and remote invalidation (bit 57)
    // negotiated, and the target's limits.
    expect([parsed.virtioOfFeatures.negotiated, parsed.maxKeyedDescriptors, parsed.inlineDataBytes]).toEqual(['0x300000000000001', 32, 4112]);

    const src = join(dir, 'src.bin');
    const data = Buffer.alloc(1024 * 1024 + 512);
    for (let i = 0; i < data.length; i++) data[i] = (i * 13 + 5) & 0xff;
    writeFileSync(src, data);
    const up = vof(['cp', src, `${target.urls[1]}/rdisk`]);
    expect(up.status, up.stderr).toBe(0);
    const down = join(dir, 'down.bin');
    const back = vof(['cp', `${target.urls[1]}/rdisk`, down]);
    expect(back.status, back.stderr).toBe(0);
    expect(readFileSync(down).subarray(0, data.length).equals(data)).toBe(true);
  });
});
