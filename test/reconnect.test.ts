import { createServer } from 'node:net';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startTarget, type StartedTarget } from '../scripts/start-target.mjs';
import { BlockDevice, VofConnectionError, VofResumeError, silentLogger } from '../src/index.js';

import { NbdCommand } from '../src/nbd/nbd-protocol.js';
import { socketOf, startBridge } from './helpers/nbd-bridge.js';
import { RawNbdClient } from './helpers/raw-nbd.js';
import { block, kill9 } from './helpers/target-faults.js';
import { waitFor } from './helpers/wait-for.js';

/**
 * Issue 13, reconnect: real `vof target` processes killed with SIGKILL under a writing
 * initiator and restarted on the same port over the same backing file.
 */

const SLOW = 120_000;
const BLOCK = 4096;
const DISK = 256 * BLOCK;
let dir: string;
const running: StartedTarget[] = [];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vof-reconnect-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));
afterEach(async () => {
  for (const t of running.splice(0)) if (t.child.exitCode === null && t.child.signalCode === null) t.child.kill('SIGKILL');
});

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

async function target(port: number, file: string): Promise<StartedTarget> {
  const t = await startTarget(['--listen', `tcp://127.0.0.1:${port}`, '--blk', `d=${file}`]);
  running.push(t);
  return t;
}

function disk(name: string, size = DISK): string {
  const f = join(dir, name);
  writeFileSync(f, Buffer.alloc(size));
  return f;
}

const fast = { reconnectDelayMs: 200, keepaliveIntervalMs: 200, keepaliveTimeoutMs: 3000, log: silentLogger };

describe('reconnect after the target is killed', () => {
  it('kill -9 under a writing initiator, restart: writes complete and every acknowledged write is on disk', async () => {
    const port = await freePort();
    const file = disk('kill.img');
    let t = await target(port, file);
    const d = await BlockDevice.open(`tcp://127.0.0.1:${port}/d`, { ...fast, ctrlLossTimeoutMs: 60_000 });
    const events: string[] = [];
    d.device.on('disconnected', () => events.push('disconnected'));
    d.device.on('reconnecting', (n, of) => events.push(`reconnecting ${n} of ${of}`));
    d.device.on('reconnected', () => events.push('reconnected'));
    d.device.on('lost', () => events.push('lost'));

    // 8 writers, each rewriting its own blocks in rounds, a flush after every round.
    const acked = new Map<number, number>(); // block -> last round acknowledged
    let stop = false;
    let failures = 0;
    const writer = async (w: number) => {
      for (let round = 1; !stop && round < 10_000; round++) {
        for (let n = w; n < 256; n += 8) {
          await d.write(n * BLOCK, block(n, round)).then(
            () => acked.set(n, round),
            () => failures++,
          );
        }
        await d.flush().catch(() => failures++);
      }
    };
    const writers = Array.from({ length: 8 }, (_, w) => writer(w));
    await waitFor('256 acknowledged writes', () => acked.size >= 256, 30000);
    await kill9(t);
    expect(d.device.state === 'reconnecting' || d.device.state === 'connected').toBe(true);
    await new Promise((r) => setTimeout(r, 500)); // writes pile up, held
    t = await target(port, file);
    await new Promise<void>((resolve) => (d.device.state === 'connected' && events.includes('reconnected') ? resolve() : d.device.once('reconnected', () => resolve())));
    const before = [...acked.values()].reduce((a, b) => a + b, 0);
    // Writing goes on on the new target.
    await waitFor('256 more acknowledged writes on the new target', () => [...acked.values()].reduce((a, b) => a + b, 0) >= before + 256, 30000);
    stop = true;
    await Promise.all(writers);
    await d.close();
    expect(failures).toBe(0);
    expect(d.device.resubmittedRequests).toBeGreaterThan(0);
    expect(events[0]).toBe('disconnected');
    expect(events).toContain('reconnected');
    expect(events).not.toContain('lost');
    expect(events.find((e) => e.startsWith('reconnecting'))).toMatch(/^reconnecting 1 of 301$/);
    const bytes = readFileSync(file);
    for (const [n, round] of acked) {
      expect(bytes.subarray(n * BLOCK, (n + 1) * BLOCK).equals(block(n, round)), `block ${n} round ${round}`).toBe(true);
    }
    await t.stop();
  }, SLOW);

  it('a target that never comes back: lost within the loss timeout, held I/O failed, never hung', async () => {
    const port = await freePort();
    const t = await target(port, disk('gone.img'));
    const d = await BlockDevice.open(`tcp://127.0.0.1:${port}/d`, { ...fast, ctrlLossTimeoutMs: 2000 });
    await d.write(0, block(0, 1));
    const lost = new Promise<Error>((resolve) => d.device.once('lost', resolve));
    await kill9(t);
    const held = d.write(BLOCK, block(1, 1)).then(() => null, (e: Error) => e);
    const err = await lost;
    expect(err).toBeInstanceOf(VofConnectionError);
    expect(err.message).toMatch(/not reconnected within the loss timeout of 2000 ms/);
    const heldErr = await held;
    expect(heldErr).toBeInstanceOf(VofConnectionError);
    expect(d.device.state).toBe('lost');
    await expect(d.read(0, BLOCK)).rejects.toThrow(/loss timeout/);
    await d.close();
  }, SLOW);

  it('fast-io-fail: held I/O fails after its timeout while reconnecting goes on, and the device comes back', async () => {
    const port = await freePort();
    const file = disk('fastfail.img');
    let t = await target(port, file);
    const d = await BlockDevice.open(`tcp://127.0.0.1:${port}/d`, { ...fast, ctrlLossTimeoutMs: -1, fastIoFailTimeoutMs: 500 });
    await kill9(t);
    await expect(d.write(0, block(0, 1))).rejects.toThrow(/fast-io-fail timeout/);
    expect(d.device.state).toBe('reconnecting');
    const back = new Promise<void>((resolve) => d.device.once('reconnected', () => resolve()));
    t = await target(port, file);
    await back;
    await d.write(0, block(0, 2));
    await d.flush();
    expect(readFileSync(file).subarray(0, BLOCK).equals(block(0, 2))).toBe(true);
    await d.close();
    await t.stop();
  }, SLOW);

  it('refuses to resume on a disk that shrank: lost with VofResumeError, I/O failed', async () => {
    const port = await freePort();
    const file = disk('shrink.img');
    let t = await target(port, file);
    const d = await BlockDevice.open(`tcp://127.0.0.1:${port}/d`, { ...fast, ctrlLossTimeoutMs: 60_000 });
    const lost = new Promise<Error>((resolve) => d.device.once('lost', resolve));
    await kill9(t);
    writeFileSync(file, Buffer.alloc(DISK / 2));
    t = await target(port, file);
    const err = await lost;
    expect(err).toBeInstanceOf(VofResumeError);
    expect(err.message).toMatch(/capacity shrank from 1048576 to 524288 bytes/);
    await expect(d.write(0, block(0, 1))).rejects.toBeInstanceOf(VofResumeError);
    await d.close();
    await t.stop();
  }, SLOW);

  it('the NBD bridge keeps its NBD client connected across a target restart: the request waits, then completes', async () => {
    const port = await freePort();
    const file = disk('nbd.img');
    let t = await target(port, file);
    const b = await startBridge([`tcp://127.0.0.1:${port}/d`, '--socket', join(dir, 'r.sock'), '--reconnect-delay', '0.2', '--ctrl-loss-tmo', '60']);
    try {
      const c = await RawNbdClient.connect(socketOf(b.uri));
      c.sendClientFlags(3);
      await c.go('d');
      expect((await c.call(NbdCommand.WRITE, 0, BLOCK, 0, block(0, 1))).error).toBe(0);
      await kill9(t);
      // Sent while the target is down: the bridge holds it.
      c.request(NbdCommand.WRITE, BLOCK, BLOCK, 0, block(1, 1));
      await new Promise((r) => setTimeout(r, 700));
      t = await target(port, file);
      expect((await c.readReply()).error).toBe(0);
      expect((await c.call(NbdCommand.FLUSH, 0, 0)).error).toBe(0);
      const r = await c.call(NbdCommand.READ, 0, 2 * BLOCK);
      expect(r.error).toBe(0);
      expect(r.data?.equals(Buffer.concat([block(0, 1), block(1, 1)]))).toBe(true);
      expect(readFileSync(file).subarray(BLOCK, 2 * BLOCK).equals(block(1, 1))).toBe(true);
      expect(b.stderr()).toMatch(/disconnected .*NBD requests wait while it reconnects/);
      expect(b.stderr()).toMatch(/reconnect attempt 1 of 301/);
      expect(b.stderr()).toMatch(/reconnected after \d+ attempt\(s\); state connected/);
      c.close();
    } finally {
      expect(await b.stop()).toBe(0);
      await t.stop();
    }
  }, SLOW);
});
