import { afterEach, describe, expect, it, vi } from 'vitest';
import { BlockDevice, VofTarget, createLogger, silentLogger, statusName } from '../src/index.js';
import { RawQueue } from './helpers/raw-queue.js';
import { TargetFixture } from './helpers/target-fixture.js';

/**
 * Issue 10, finding 5: keepalive on both ends. Times are monotonic, the dead-peer timeout runs
 * on its own timer, an interval of 0 stops the keepalives but not the dead-peer detection, and
 * settings that cannot work are said out loud.
 */

const st = (c: Buffer) => statusName(c.readUInt16LE(0));

/** Date.now() jumps `ms` ahead from now on, as after an NTP step or a suspended VM. */
function stepWallClock(ms: number): void {
  const real = Date.now.bind(Date);
  vi.spyOn(Date, 'now').mockImplementation(() => real() + ms);
}

afterEach(() => {
  vi.restoreAllMocks();
});

/** A target with these keepalive settings exporting a small disk "d", for the length of `body`. */
async function withTarget(keepalive: { intervalMs: number; timeoutMs: number }, body: (fx: TargetFixture) => Promise<void>): Promise<void> {
  const fx = new TargetFixture({ keepalive });
  await fx.addDisk('d', 65536);
  await fx.listen();
  try {
    await body(fx);
  } finally {
    await fx.close();
  }
}

describe('target keepalive', () => {
  it('a wall-clock step does not destroy live instances', async () => {
    await withTarget({ intervalMs: 50, timeoutMs: 400 }, async (fx) => {
      const d = await BlockDevice.open(`${fx.url}/d`, { keepaliveIntervalMs: 50, keepaliveTimeoutMs: 2000 });
      stepWallClock(3600_000);
      // Several timeouts' worth of time, with the initiator keeping alive all along.
      await new Promise((r) => setTimeout(r, 1200));
      expect(fx.logged(/initiator silent/)).toBe(false);
      expect(fx.target.instanceCount).toBe(1);
      expect(d.device.lost).toBe(null);
      await d.close();
    });
  });

  for (const [what, keepalive] of [
    ['--keepalive-interval 0 sends no keepalives but still reclaims the instance of a vanished initiator', { intervalMs: 0, timeoutMs: 300 }],
    ['the timeout runs on its own timer, not on interval ticks (interval 60 s, timeout 300 ms)', { intervalMs: 60_000, timeoutMs: 300 }],
  ] as const) {
    it(what, async () => {
      await withTarget(keepalive, async (fx) => {
        const q = await RawQueue.open(fx.port);
        expect(st(await q.connectControl('d'))).toBe('SUCCESS');
        await q.whenClosed(5000);
        expect(fx.logged(/initiator silent for \d+ ms, destroying/)).toBe(true);
        expect(fx.target.instanceCount).toBe(0);
      });
    });
  }

  it('warns about a timeout below the interval and about a timeout of 0; refuses negative values', () => {
    const lines: string[] = [];
    const log = createLogger('info', (level, msg) => lines.push(`${level}: ${msg}`));
    new VofTarget({ log, keepalive: { intervalMs: 2000, timeoutMs: 500 } });
    expect(lines.some((l) => /^warn: keepalive timeout 500 ms is below the interval 2000 ms/.test(l))).toBe(true);
    new VofTarget({ log, keepalive: { intervalMs: 0, timeoutMs: 0 } });
    expect(lines.some((l) => /^warn: keepalive timeout 0: instances of initiators that vanish are never reclaimed/.test(l))).toBe(true);
    expect(() => new VofTarget({ log: silentLogger, keepalive: { intervalMs: -1, timeoutMs: 100 } })).toThrow(RangeError);
  });
});

describe('initiator keepalive', () => {
  it('a wall-clock step does not make the initiator declare the target lost', async () => {
    await withTarget({ intervalMs: 50, timeoutMs: 5000 }, async (fx) => {
      const d = await BlockDevice.open(`${fx.url}/d`, { keepaliveIntervalMs: 50, keepaliveTimeoutMs: 400 });
      stepWallClock(3600_000);
      await new Promise((r) => setTimeout(r, 1200));
      expect(d.device.lost).toBe(null);
      await d.close();
    });
  });

  it('an initiator with keepalive off, destroyed by the target for silence, is told why', async () => {
    const lines: string[] = [];
    await withTarget({ intervalMs: 0, timeoutMs: 300 }, async (fx) => {
      const d = await BlockDevice.open(`${fx.url}/d`, { keepaliveIntervalMs: 0, log: createLogger('info', (level, msg) => lines.push(`${level}: ${msg}`)) });
      expect(lines.some((l) => /^warn: .*keepalive disabled/.test(l))).toBe(true);
      const lost = await new Promise<Error>((r) => d.device.once('lost', r));
      expect(lost.message).toMatch(/closed by the target.*keepalive timeout/);
      await expect(d.read(0, 512)).rejects.toThrow(/closed by the target/);
      await d.close();
    });
  });

  it('the initiator detects a silent target on its own timer and warns about a timeout below its interval', async () => {
    // A "target" that accepts the TCP connection and never answers anything.
    const net = await import('node:net');
    const sockets: import('node:net').Socket[] = [];
    const server = net.createServer((s) => sockets.push(s));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as import('node:net').AddressInfo).port;
    const lines: string[] = [];
    try {
      const { RemoteDevice } = await import('../src/index.js');
      const err = await RemoteDevice.connect(`tcp://127.0.0.1:${port}/d`, {
        keepaliveIntervalMs: 2000,
        keepaliveTimeoutMs: 300,
        connectTimeoutMs: 60_000,
        log: createLogger('info', (level, msg) => lines.push(`${level}: ${msg}`)),
      }).catch((e: unknown) => e as Error);
      expect(err).toBeInstanceOf(Error);
      expect((err as Error).message).toMatch(/target silent for \d+ ms/);
      expect(lines.some((l) => /^warn: .*keepalive timeout 300 ms is below the interval 2000 ms/.test(l))).toBe(true);
    } finally {
      for (const s of sockets) s.destroy();
      server.close();
    }
  });
});
