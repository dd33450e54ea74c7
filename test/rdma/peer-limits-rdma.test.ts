import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Opcode, statusName } from '../../src/index.js';
import { RawRdmaQueue } from '../helpers/raw-rdma-queue.js';
import { TargetFixture } from '../helpers/target-fixture.js';
import { rdmaAddress } from './rdma-env.js';

const st = (c: Buffer) => statusName(c.readUInt16LE(0));

let fx: TargetFixture;

beforeAll(async () => {
  // TCG is ~19x slower than native: a timeout long enough for a real Connect, short for a test.
  fx = new TargetFixture({ connectTimeoutMs: 4000, keepalive: { intervalMs: 60000, timeoutMs: 600000 } });
  await fx.addDisk('disk0', 1024 * 1024);
  await fx.listen(`rdma://${rdmaAddress()}:0`);
});
afterAll(async () => {
  await fx?.close();
});

describe('RDMA connections that never Connect', () => {
  it('are closed after the connect timeout (their QPs released); a connected queue stays', async () => {
    const silent = await Promise.all([RawRdmaQueue.open(fx.url), RawRdmaQueue.open(fx.url)]);
    const connected = await RawRdmaQueue.open(fx.url);
    await connected.bringUp('disk0');
    await Promise.all(silent.map((q) => q.whenClosed(120000)));
    expect(fx.logged(/no Connect within 4000 ms; closing/)).toBe(true);
    expect(connected.closed).toBe(false);
    expect(st(await connected.call({ opcode: Opcode.Keepalive, commandId: 50 }))).toBe('SUCCESS');
    await connected.close();
  });
});
