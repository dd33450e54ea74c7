import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockDevice, VofError } from '../src/index.js';
import { startTarget } from '../scripts/start-target.mjs';
import { vofAsync } from './helpers/vof-cli.js';
import { TargetFixture } from './helpers/target-fixture.js';

const vof = vofAsync;

describe('vof target: access settings on the command line and in --config', () => {
  const scratch = new TargetFixture(); // only for its temp dir
  let disk: string;
  beforeAll(() => {
    disk = join(scratch.dir, 'disk.img');
    writeFileSync(disk, Buffer.alloc(1024 * 1024));
  });
  afterAll(async () => {
    await scratch.close();
  });

  const config = (name: string, cfg: unknown) => {
    const file = join(scratch.dir, name);
    writeFileSync(file, JSON.stringify(cfg));
    return file;
  };

  it('"allow": [] in a config file is an error, at the top level and per disk, not "everyone"', async () => {
    const perDisk = await vof(['target', '--config', config('a.json', { listen: ['tcp://127.0.0.1:0'], blk: [{ tvqn: 'd', path: disk, allow: [] }] })]);
    expect(perDisk.status).toBe(2);
    expect(perDisk.stderr).toMatch(/blk\[0\]\.allow is empty; remove it to export to every initiator, or list the IVQNs allowed/);
    const top = await vof(['target', '--config', config('b.json', { listen: ['tcp://127.0.0.1:0'], blk: [{ tvqn: 'd', path: disk }], allow: [] })]);
    expect(top.status).toBe(2);
    expect(top.stderr).toMatch(/^ {2}allow is empty/m);
  });

  it('bad quotas and allow entries are usage errors', async () => {
    const q = await vof(['target', '--config', config('q.json', { listen: ['tcp://127.0.0.1:0'], blk: [{ tvqn: 'd', path: disk }], quotas: { instancesPerExport: 0 } })]);
    expect([q.status, q.stderr]).toEqual([2, expect.stringMatching(/quotas\.instancesPerExport: expected at least 1, got 0/)]);
    const f = await vof(['target', '--listen', 'tcp://127.0.0.1:0', '--blk', `d=${disk}`, '--max-unbound', 'lots']);
    expect([f.status, f.stderr]).toEqual([2, expect.stringMatching(/--max-unbound must be an integer/)]);
    const a = await vof(['target', '--listen', 'tcp://127.0.0.1:0', '--blk', `d=${disk}`, '--allow', 'host-a@']);
    expect([a.status, a.stderr]).toEqual([2, expect.stringMatching(/ends with "@" but names no identity/)]);
  });

  it('--max-instances-per-export, --allow IVQN@IDENTITY, ,serial= and the config "quotas" take effect', async () => {
    const cfg = config('ok.json', { quotas: { instancesPerIvqn: 5 }, blk: [{ tvqn: 'cfg', path: disk, allow: [{ ivqn: 'host-c' }], serial: 'CFG-SERIAL' }] });
    const t = await startTarget([
      '--config', cfg,
      '--listen', 'tcp://127.0.0.1:0',
      '--blk', `d=${disk},serial=CLI-SERIAL`,
      '--max-instances-per-export', '1',
      '--allow', 'host-a',
      '--allow', 'host-tls@some-identity',
    ]);
    try {
      const url = t.urls[0]!;
      const first = await BlockDevice.open(`${url}/d`, { ivqn: 'host-a', keepaliveIntervalMs: 0 });
      expect(await first.getId()).toBe('CLI-SERIAL');
      const second = await BlockDevice.open(`${url}/d`, { ivqn: 'host-a', keepaliveIntervalMs: 0 }).catch((e: unknown) => e);
      expect((second as VofError).statusName).toBe('ENODEV');
      await first.close();
      // host-tls needs the identity it is bound to, which plain TCP cannot prove.
      const tls = await BlockDevice.open(`${url}/d`, { ivqn: 'host-tls', keepaliveIntervalMs: 0 }).catch((e: unknown) => e);
      expect((tls as VofError).statusName).toBe('EACLREJECTED');
      const c = await BlockDevice.open(`${url}/cfg`, { ivqn: 'host-c', keepaliveIntervalMs: 0 });
      expect(await c.getId()).toBe('CFG-SERIAL');
      await c.close();
      expect(t.stderr()).toMatch(/exporting virtio-blk .* as "d", allowed: "host-a", "host-tls"@"some-identity"/);
    } finally {
      await t.stop();
    }
  });
});
