import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTarget, type StartedTarget } from '../scripts/start-target.mjs';
import { BlockDevice, FileBlockExport, silentLogger } from '../src/index.js';
import { withInstanceOverrides } from './helpers/device-proxy.js';
import { blkReadPdu, openRawBlkDevice } from './helpers/raw-blk-device.js';
import { vofAsync } from './helpers/vof-cli.js';
import { controlRequest } from '../src/target/control-client.js';
import { RawQueue } from './helpers/raw-queue.js';
import { TargetFixture } from './helpers/target-fixture.js';
import { statusName } from '../src/index.js';
import { waitFor } from './helpers/wait-for.js';

/**
 * Issue 13, live drain: an initiator writing continuously (with flushes) to target A is moved to
 * target B by `vof drain` on A's control socket, mid-stream. A and B are two processes serving
 * the same backing file (docs/PROTOCOL.md "Live drain"). Afterwards every acknowledged write is
 * in the file, and nothing failed.
 */

const SLOW = 120_000;
const BLOCK = 4096;
const BLOCKS = 128;
let dir: string;
const started: StartedTarget[] = [];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vof-drain-'));
});
afterAll(() => {
  for (const t of started) if (t.child.exitCode === null) t.child.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

function block(n: number, round: number): Buffer {
  const b = Buffer.alloc(BLOCK);
  b.fill(`${n}:${round};`);
  return b;
}

describe('live drain', () => {
  it('moves a writing initiator from A to B mid-stream; every acknowledged write is on B\'s disk', async () => {
    const file = join(dir, 'shared.img');
    writeFileSync(file, Buffer.alloc(BLOCKS * BLOCK));
    const control = join(dir, 'a.ctl');
    const b = await startTarget(['--listen', 'tcp://127.0.0.1:0', '--blk', `d=${file}`]);
    started.push(b);
    const a = await startTarget(['--listen', 'tcp://127.0.0.1:0', '--blk', `d=${file}`, '--control', control]);
    started.push(a);
    const logs: string[] = [];
    const log = { ...silentLogger, info: (m: string) => logs.push(m), warn: (m: string) => logs.push(m) };
    const d = await BlockDevice.open(`${a.urls[0]}/d`, { log, ctrlLossTimeoutMs: 30_000, reconnectDelayMs: 200 });
    const events: string[] = [];
    for (const e of ['disconnected', 'reconnected', 'lost'] as const) d.device.on(e, () => events.push(e));

    const acked = new Map<number, number>();
    let stop = false;
    let failures = 0;
    let flushes = 0;
    const writer = async (w: number) => {
      for (let round = 1; !stop && round < 100_000; round++) {
        for (let n = w; n < BLOCKS; n += 4) {
          await d.write(n * BLOCK, block(n, round)).then(
            () => acked.set(n, round),
            () => failures++,
          );
        }
        await d.flush().then(() => flushes++, () => failures++);
      }
    };
    const writers = Array.from({ length: 4 }, (_, w) => writer(w));
    await waitFor(`${BLOCKS} acknowledged writes`, () => acked.size >= BLOCKS, 30000);

    const r = await vofAsync(['drain', '--control', control, 'd', b.urls[0]!, '--grace', '20']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/drained "d" to tcp:\/\/127\.0\.0\.1:\d+: 1 instance\(s\) moved by the drain event, 0 closed by the target/);
    await waitFor('the device to reconnect at B', () => events.includes('reconnected'), 30000);
    expect(d.device.url).toBe(`${b.urls[0]}/d`);
    // Writing goes on at B.
    const at = flushes;
    await waitFor('three more flushes at B', () => flushes >= at + 3, 30000);
    stop = true;
    await Promise.all(writers);
    await d.close();

    expect(failures).toBe(0);
    expect(events).toEqual(['disconnected', 'reconnected']);
    expect(logs.some((l) => /the target asks to move this device/.test(l))).toBe(true);
    expect(logs.some((l) => l.includes(`redirected to ${b.urls[0]}/d`))).toBe(true);
    expect(a.stderr()).toMatch(/drain of "d" to tcp:\/\/127\.0\.0\.1:\d+\/d: 1 instance\(s\) told to move/);
    const bytes = readFileSync(file);
    for (const [n, round] of acked) expect(bytes.subarray(n * BLOCK, (n + 1) * BLOCK).equals(block(n, round)), `block ${n}`).toBe(true);
    // A no longer serves d: a new Connect there is redirected to B.
    const again = await BlockDevice.open(`${a.urls[0]}/d`, { log: silentLogger });
    expect(again.device.url).toBe(`${b.urls[0]}/d`);
    await again.close();
    // A refuses a drain it cannot carry out, and says why.
    const bad = await vofAsync(['drain', '--control', control, 'd', 'ftp://x']);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/drain refused: .*not a Virtio-oF address/);
    // The same socket answers process counters (what `vof bench` reads); unknown ops are refused.
    const stats = await controlRequest(control, { op: 'stats' });
    expect(stats.ok).toBe(true);
    expect(stats.rssBytes).toBeGreaterThan(10 * 1024 * 1024);
    expect(stats.registrationsTotal).toBeUndefined(); // a TCP-only target never loads the RDMA addon
    expect(await controlRequest(control, { op: 'explode', tvqn: 'd', url: 'x' })).toEqual({ ok: false, error: '"op" must be "drain", "redirect", "unredirect", "revalidate" or "stats"' });
  }, SLOW);

  it('a seed-only initiator gets no event: its instance is closed after the grace time, and it is then refused', async () => {
    const fx = new TargetFixture();
    try {
      await fx.addDisk('d', 65536);
      await fx.listen();
      const q = await RawQueue.open(fx.port);
      expect(statusName((await q.connectControl('d')).readUInt16LE(0))).toBe('SUCCESS');
      const result = await fx.target.drain('d', 'tcp://127.0.0.1:1', 200);
      expect(result).toEqual({ told: 0, closed: 1 });
      await q.whenClosed(5000);
      const again = await RawQueue.open(fx.port);
      expect(statusName((await again.connectControl('d')).readUInt16LE(0))).toBe('EACLREJECTED');
      await again.close();
      expect(fx.logged(/"d" moved to tcp:\/\/127\.0\.0\.1:1\/d; this initiator does not follow redirects/)).toBe(true);
    } finally {
      await fx.close();
    }
  }, SLOW);

  it('a drain ends after the grace time even when a request never completes: it is cancelled (ESTATUS), the queues close, other exports go on', async () => {
    const fx = new TargetFixture();
    try {
      await fx.addDisk('other', 65536);
      const path = join(fx.dir, 'hang.img');
      writeFileSync(path, Buffer.alloc(65536));
      // A device whose requests never complete and that ignores cancellation.
      let started: () => void = () => {};
      const running = new Promise<void>((r) => (started = r));
      const hang = withInstanceOverrides(await FileBlockExport.open(path), 'hangs', () => ({
        handleRequest: () => {
          started();
          return new Promise<number>(() => {});
        },
      }));
      fx.target.addExport('hang', hang);
      await fx.listen();
      // A seed-only initiator (no redirect flag): it is never told to move, and never reconnects.
      const s = await openRawBlkDevice(fx.port, 'hang', 1);
      const vq = s.vqs[0]!;
      vq.send(blkReadPdu(5, 0, 4096));
      await running;

      let timer: NodeJS.Timeout | undefined;
      const outcome = await Promise.race([
        fx.target.drain('hang', 'tcp://127.0.0.1:1', 200),
        new Promise<'hung'>((r) => (timer = setTimeout(() => r('hung'), 15_000))),
      ]);
      clearTimeout(timer);
      expect(outcome).toEqual({ told: 0, closed: 1 });
      // The command in flight got its completion, with the cancel status, then the queue closed.
      const c = await vq.read(16);
      expect([c.readUInt16LE(2), statusName(c.readUInt16LE(0)), c.readUInt32LE(4)]).toEqual([5, 'ESTATUS', 0]);
      await vq.whenClosed(5000);
      await s.control.whenClosed(5000);
      expect(fx.target.instanceCount).toBe(0);
      expect(fx.logged(/cancelled 1 request\(s\) still in flight/)).toBe(true);
      // The target goes on serving everything else.
      const d = await BlockDevice.open(`${fx.url}/other`, { log: silentLogger, keepaliveIntervalMs: 0 });
      expect((await d.read(0, 4096)).length).toBe(4096);
      await d.close();
    } finally {
      await fx.close();
    }
  }, SLOW);
});
