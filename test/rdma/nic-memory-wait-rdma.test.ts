import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockDevice } from '../../src/index.js';
import { nicMemories } from '../../src/transport/rdma/nic-memory.js';
import { TargetFixture } from '../helpers/target-fixture.js';
import { rdmaAddress } from './rdma-env.js';
import { waitFor } from '../helpers/wait-for.js';

// The pool wait queue on rxe: a target whose device memory limit is 0 keeps one buffer per size
// class (the minimum), so concurrent requests of one class run one at a time. They wait for
// memory; none fails and none registers memory. (Its own file: device memory is per process.)

const KiB = 1024;
const MiB = 1024 * KiB;

let fx: TargetFixture;

beforeAll(async () => {
  fx = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 600000 }, limits: { rdmaDeviceMemoryBytes: 0 } });
  await fx.addDisk('disk0', 16 * MiB, { numQueues: 1, queueSize: 128 });
  await fx.listen(`rdma://${rdmaAddress()}:0`);
});
afterAll(async () => {
  await fx?.close();
});

describe('a deliberately tiny target pool', () => {
  it('many concurrent requests all complete correctly: they waited, none registered memory', async () => {
    const dev = await BlockDevice.open(`${fx.url}/disk0`, { keepaliveIntervalMs: 0, maxQueues: 1 });
    const mem = nicMemories.get(nicMemories.devices[0]!)!;
    const before = mem.stats();
    expect(before.classes.every((c) => c.buffers === 1)).toBe(true);
    const sizes = [4 * KiB, 8 * KiB, 64 * KiB, MiB];
    const data = Array.from({ length: 96 }, (_, i) => Buffer.alloc(sizes[i % sizes.length]!, (i * 7 + 1) & 0xff));
    const at = (i: number) => i * 128 * KiB; // 64 KiB and 4 KiB requests never overlap; 1 MiB ones go apart below
    const where = (i: number) => (data[i]!.length === MiB ? 12 * MiB + ((i >> 2) % 4) * MiB : at(i));
    // Only one 1 MiB request per distinct location is written (the last one wins otherwise).
    const writes = data.map((d, i) => ({ i, d })).filter(({ i, d }) => d.length !== MiB || i >= data.length - 16);
    await Promise.all(writes.map(({ i, d }) => dev.write(where(i), d)));
    const back = await Promise.all(writes.map(({ i, d }) => dev.read(where(i), d.length)));
    back.forEach((b, k) => expect(b.equals(writes[k]!.d)).toBe(true));
    const after = mem.stats();
    console.log(`${writes.length * 2} requests through one buffer per class: ${after.waits - before.waits} waited, ${after.registrations - before.registrations} registrations`);
    expect(after.waits - before.waits).toBeGreaterThan(0);
    expect(after.registrations).toBe(before.registrations);
    // A request's buffer comes back when the target polls its own send completion, which may be
    // a little after the initiator has the completion.
    await waitFor('every buffer to be back', () => mem.stats().classes.every((c) => c.buffers === 1 && c.free === 1 && c.waiting === 0), 60000);
    await dev.close();
    await waitFor('the device memory to go with its last connection', () => nicMemories.devices.length === 0, 120000);
  });
});
