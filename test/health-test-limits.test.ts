import { afterEach, describe, expect, it } from 'vitest';
import { AdminError, BlockDevice } from '../src/index.js';
import { TargetFixture } from './helpers/target-fixture.js';

/**
 * Issue 17, finding 12a: one admin HEALTH_TEST could ask for 65,536 random reads, and nothing
 * limited how often. Now: samples are capped, at most one test runs per instance, and an
 * export's instances share a rate limit; excess is refused with the admin seed's ERR (a valid
 * command that cannot run now).
 */

const opts = { keepaliveIntervalMs: 0 };

async function refusal(p: Promise<unknown>): Promise<string> {
  const err = await p.then(() => null, (e: unknown) => e);
  expect(err).toBeInstanceOf(AdminError);
  return (err as AdminError).statusName;
}

describe('HEALTH_TEST limits', () => {
  let fx: TargetFixture | null = null;
  afterEach(async () => {
    await fx?.close();
    fx = null;
  });

  it('a test is capped at 4096 samples, whatever it asks for', async () => {
    fx = new TargetFixture();
    await fx.addDisk('d', 8 * 1024 * 1024);
    await fx.listen();
    const d = await BlockDevice.open(`${fx.url}/d`, opts);
    try {
      const r = await d.admin.healthTest(65536);
      expect(r).toMatchObject({ passed: true, samples: 4096, errors: 0, bytesChecked: 4096 * 512 });
    } finally {
      await d.close();
    }
  });

  it('by default an export runs 4 tests in a burst, then ERR, shared by its instances; other exports are not affected', async () => {
    fx = new TargetFixture();
    await fx.addDisk('d', 1024 * 1024);
    await fx.addDisk('e', 1024 * 1024);
    await fx.listen();
    const a = await BlockDevice.open(`${fx.url}/d`, opts);
    const b = await BlockDevice.open(`${fx.url}/d`, opts);
    const e = await BlockDevice.open(`${fx.url}/e`, opts);
    try {
      for (const dev of [a, b, a, b]) expect((await dev.admin.healthTest(8)).passed).toBe(true);
      expect(await refusal(a.admin.healthTest(8))).toBe('ERR');
      expect(await refusal(b.admin.healthTest(8))).toBe('ERR');
      expect((await e.admin.healthTest(8)).passed).toBe(true);
      expect(fx.logged(/HEALTH_TEST refused: the export ran its 4 health tests/)).toBe(true);
    } finally {
      await Promise.all([a.close(), b.close(), e.close()]);
    }
  });

  it('the limit refills (limits.healthTestBurst / healthTestIntervalMs)', async () => {
    fx = new TargetFixture({ limits: { healthTestBurst: 1, healthTestIntervalMs: 300 } });
    await fx.addDisk('d', 1024 * 1024);
    await fx.listen();
    const d = await BlockDevice.open(`${fx.url}/d`, opts);
    try {
      expect((await d.admin.healthTest(8)).passed).toBe(true);
      expect(await refusal(d.admin.healthTest(8))).toBe('ERR');
      await new Promise((r) => setTimeout(r, 400));
      expect((await d.admin.healthTest(8)).passed).toBe(true);
    } finally {
      await d.close();
    }
  });
});
