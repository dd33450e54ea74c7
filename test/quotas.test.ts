import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockDevice, DEFAULT_QUOTAS, statusName } from '../src/index.js';
import { RawQueue } from './helpers/raw-queue.js';
import { TargetFixture } from './helpers/target-fixture.js';
import { waitFor } from './helpers/wait-for.js';

const st = (c: Buffer) => statusName(c.readUInt16LE(0));
const MiB = 1024 * 1024;
const quiet = { keepaliveIntervalMs: 0 };

/** `count` anonymous control queues on `tvqn`, opened `batch` at a time; their Connect statuses. */
async function flood(port: number, tvqn: string, count: number, held: RawQueue[], succeeded: RawQueue[] = [], batch = 50): Promise<Map<string, number>> {
  const statuses = new Map<string, number>();
  for (let i = 0; i < count; i += batch) {
    const n = Math.min(batch, count - i);
    await Promise.all(
      Array.from({ length: n }, async (_, j) => {
        const q = await RawQueue.open(port);
        held.push(q);
        const s = st(await q.connectControl(tvqn, `anon-${i + j}`, 32));
        if (s === 'SUCCESS') succeeded.push(q);
        statuses.set(s, (statuses.get(s) ?? 0) + 1);
      }),
    );
  }
  return statuses;
}

/** An idle connection from `localAddress` that never sends Connect. */
function idle(port: number, localAddress: string): Promise<net.Socket & { closedByTarget: Promise<void> }> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: '127.0.0.1', localAddress }) as net.Socket & { closedByTarget: Promise<void> };
    s.closedByTarget = new Promise((r) => s.once('close', () => r()));
    s.on('error', () => {});
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

async function allowedInitiatorWorks(url: string): Promise<void> {
  const d = await BlockDevice.open(`${url}/x`, { ivqn: 'host-x', ...quiet });
  try {
    await d.write(0, Buffer.alloc(4096, 0x42));
    expect((await d.read(0, 4096)).equals(Buffer.alloc(4096, 0x42))).toBe(true);
  } finally {
    await d.close();
  }
}

describe('quotas: instances of one export never lock out another', () => {
  const held: RawQueue[] = [];
  afterAll(async () => {
    await Promise.all(held.map((q) => q.close().catch(() => {})));
  });

  it('1100 anonymous instances of an open export (limit raised) do not stop an allowed initiator of a second export', async () => {
    // No whole-target ceiling: the old one (1024) is what this used to exhaust.
    const fx = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 120000 }, quotas: { instancesPerExport: 2000, instancesPerIvqn: 2000 } });
    try {
      await fx.addDisk('y', MiB);
      await fx.addDisk('x', MiB, { allow: ['host-x'] });
      const url = await fx.listen();
      const statuses = await flood(fx.port, 'y', 1100, held);
      expect(Object.fromEntries(statuses)).toEqual({ SUCCESS: 1100 });
      expect(fx.target.instanceCount).toBe(1100);
      await allowedInitiatorWorks(url);
    } finally {
      await Promise.all(held.splice(0).map((q) => q.close().catch(() => {})));
      await fx.close();
    }
  }, 120_000);

  it('with the default limits, an open export stops at 256 instances (ENODEV, logged) and the other export is unaffected', async () => {
    const fx = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 120000 } });
    try {
      await fx.addDisk('y', MiB);
      await fx.addDisk('x', MiB, { allow: ['host-x'] });
      const url = await fx.listen();
      const succeeded: RawQueue[] = [];
      const statuses = await flood(fx.port, 'y', 1100, held, succeeded);
      expect(Object.fromEntries(statuses)).toEqual({ SUCCESS: DEFAULT_QUOTAS.instancesPerExport, ENODEV: 1100 - DEFAULT_QUOTAS.instancesPerExport });
      expect(fx.logged(/Connect → ENODEV \(0x1002\): no instance of "anon-\d+" → "y": export has 256 instances, its limit/)).toBe(true);
      await allowedInitiatorWorks(url);
      // A closed instance frees its place.
      await succeeded[0]!.close();
      await waitFor('the closed instance to free its place', () => fx.target.instanceCount < 256, 5000, 10);
      expect(fx.target.instanceCount).toBe(255);
      const again = await RawQueue.open(fx.port);
      held.push(again);
      expect(st(await again.connectControl('y', 'late'))).toBe('SUCCESS');
    } finally {
      await Promise.all(held.splice(0).map((q) => q.close().catch(() => {})));
      await fx.close();
    }
  }, 120_000);

  it('per export and per IVQN limits: one IVQN cannot take all of its export, and an export can have its own limit', async () => {
    const fx = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 120000 }, quotas: { instancesPerIvqn: 2 } });
    try {
      await fx.addDisk('shared', MiB);
      fx.target.addExport('tiny', fx.target.devices.get('shared')!.device, undefined, { maxInstances: 1 });
      await fx.listen();
      const qs = await Promise.all(Array.from({ length: 6 }, () => RawQueue.open(fx.port)));
      held.push(...qs);
      expect(st(await qs[0]!.connectControl('shared', 'greedy'))).toBe('SUCCESS');
      expect(st(await qs[1]!.connectControl('shared', 'greedy'))).toBe('SUCCESS');
      expect(st(await qs[2]!.connectControl('shared', 'greedy'))).toBe('ENODEV');
      expect(st(await qs[3]!.connectControl('shared', 'modest'))).toBe('SUCCESS');
      expect(st(await qs[4]!.connectControl('tiny', 'first'))).toBe('SUCCESS');
      expect(st(await qs[5]!.connectControl('tiny', 'second'))).toBe('ENODEV');
      expect(fx.logged(/"greedy" → "shared": this IVQN has 2 instances of the export from this peer, its limit/)).toBe(true);
    } finally {
      await Promise.all(held.splice(0).map((q) => q.close().catch(() => {})));
      await fx.close();
    }
  });
});

describe('quotas: connections that never Connect', () => {
  let fx: TargetFixture;
  let url: string;
  beforeAll(async () => {
    fx = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 120000 }, quotas: { unboundConnections: 6, unboundPerHost: 3 } });
    await fx.addDisk('x', MiB, { allow: ['host-x'] });
    url = await fx.listen();
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('one host holds at most unboundPerHost idle connections: its oldest makes room (logged), and an initiator on that host still gets in', async () => {
    const mine = await Promise.all([1, 2, 3].map(() => idle(fx.port, '127.0.0.2')));
    const extra = await idle(fx.port, '127.0.0.2');
    await Promise.race([mine[0]!.closedByTarget, mine[1]!.closedByTarget, mine[2]!.closedByTarget]);
    expect(fx.logged(/tcp:\/\/127\.0\.0\.2:\d+: closed before Connect to make room for tcp:\/\/127\.0\.0\.2:\d+/)).toBe(true);
    await allowedInitiatorWorks(url);
    for (const s of [...mine, extra]) s.destroy();
    await Promise.all([...mine, extra].map((s) => s.closedByTarget));
  });

  it('when the total is full, the oldest idle connection makes room: an allowed initiator always gets in', async () => {
    const hosts = ['127.0.0.3', '127.0.0.4', '127.0.0.5'];
    const sockets: Array<Awaited<ReturnType<typeof idle>>> = [];
    for (const h of hosts) for (let i = 0; i < 2; i++) sockets.push(await idle(fx.port, h));
    // Six idle connections: the total is full. The initiator's control queue pushes out the
    // oldest; once it is bound it no longer counts, so its virtqueues fit without more evictions.
    await allowedInitiatorWorks(url);
    await sockets[0]!.closedByTarget;
    expect(fx.logged(/tcp:\/\/127\.0\.0\.3:\d+: closed before Connect to make room for tcp:\/\/127\.0\.0\.1:\d+/)).toBe(true);
    expect(sockets.map((s) => s.closed)).toEqual([true, false, false, false, false, false]);
    for (const s of sockets) s.destroy();
  });
});
