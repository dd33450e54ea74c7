import { renameSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockDevice, FileBlockExport } from '../src/index.js';
import { TargetFixture } from './helpers/target-fixture.js';

const MiB = 1024 * 1024;
const quiet = { keepaliveIntervalMs: 0 };

describe('GET_ID does not reveal the backing file', () => {
  let fx: TargetFixture;
  let secretPath: string;
  beforeAll(async () => {
    fx = new TargetFixture();
    secretPath = await fx.addDisk('customer-4711-payroll', MiB);
    await fx.addDisk('named', MiB, { serial: 'SN-0001' });
    await fx.listen();
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('the default serial is "vof-" and 16 hex digits, naming neither the file nor the export', async () => {
    const d = await BlockDevice.open(`${fx.url}/customer-4711-payroll`, quiet);
    try {
      const id = await d.getId();
      expect(id).toMatch(/^vof-[0-9a-f]{16}$/);
      expect(id).not.toMatch(/customer|4711|payroll|img/);
      expect(Buffer.byteLength(id)).toBe(20);
    } finally {
      await d.close();
    }
  });

  it('it is stable: the same file gives the same serial when exported again, even renamed; another file another serial', async () => {
    const a = await FileBlockExport.open(secretPath);
    const moved = join(fx.dir, 'renamed.img');
    renameSync(secretPath, moved);
    const b = await FileBlockExport.open(moved);
    renameSync(moved, secretPath);
    const other = await FileBlockExport.open(join(fx.dir, 'named.img'));
    try {
      expect(b.serial.equals(a.serial)).toBe(true);
      expect(other.serial.equals(a.serial)).toBe(false);
    } finally {
      await Promise.all([a.close(), b.close(), other.close()]);
    }
  });

  it('a configured serial is returned as given; one over 20 bytes is refused', async () => {
    const d = await BlockDevice.open(`${fx.url}/named`, quiet);
    try {
      expect(await d.getId()).toBe('SN-0001');
    } finally {
      await d.close();
    }
    await expect(FileBlockExport.open(secretPath, { serial: 'x'.repeat(21) })).rejects.toThrow(/over 20 bytes/);
  });
});
