import { readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockDevice, Opcode, encodeCommand, statusName } from '../src/index.js';
import { startTarget, type StartedTarget } from '../scripts/start-target.mjs';
import { RawQueue } from './helpers/raw-queue.js';
import { blkReadPdu, blkWritePdu, openRawBlkSession } from './helpers/raw-blk-session.js';
import { TargetFixture } from './helpers/target-fixture.js';

/**
 * What careless or hostile TCP peers can make a live `vof target` process hold (issue 10,
 * findings 2, 3, 4, 11), measured on the target's own RSS (/proc/PID/status).
 */

const MiB = 1024 * 1024;
const DISK = 32 * MiB;
const st = (c: Buffer) => statusName(c.readUInt16LE(0));

function rssOf(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]) * 1024;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Samples a process's RSS until stopped; `max` is the highest seen. */
function sampleRss(pid: number, everyMs = 50) {
  let max = rssOf(pid);
  const timer = setInterval(() => {
    try {
      max = Math.max(max, rssOf(pid));
    } catch {
      /* exited: the test notices */
    }
  }, everyMs);
  return {
    stop: () => {
      clearInterval(timer);
      return max;
    },
  };
}

/** A well-behaved initiator: writes a pattern, flushes, reads it back. */
async function verifiedIo(url: string, offset: number, bytes: number, seed: number): Promise<void> {
  const d = await BlockDevice.open(url, { keepaliveIntervalMs: 0, ivqn: 'good-initiator' });
  try {
    const data = Buffer.alloc(bytes);
    for (let i = 0; i < bytes; i++) data[i] = (i * 7 + seed) & 0xff;
    await d.write(offset, data);
    await d.flush();
    const back = await d.read(offset, bytes);
    expect(back.equals(data)).toBe(true);
  } finally {
    await d.close();
  }
}

describe('a live target against careless peers', () => {
  const scratch = new TargetFixture(); // only for its temp dir
  let target: StartedTarget;
  let port: number;
  let baseline: number;

  beforeAll(async () => {
    const disk = `${scratch.dir}/disk.img`;
    writeFileSync(disk, Buffer.alloc(DISK));
    const config = `${scratch.dir}/target.json`;
    // connectTimeoutMs from the config file, the send timeout from the command line: both ways work.
    writeFileSync(config, JSON.stringify({ connectTimeoutMs: 1500 }));
    target = await startTarget(
      ['--listen', 'tcp://127.0.0.1:0', '--blk', `d=${disk}`, '--queues', '2', '--config', config, '--send-timeout', '3000',
        '--keepalive-interval', '60000', '--keepalive-timeout', '120000', '--log', 'warn'],
      { lines: 1 },
    );
    port = Number(new URL(target.urls[0]!.replace('tcp:', 'http:')).port);
    // Warm up (JIT, pools) before taking the baseline.
    await verifiedIo(`${target.urls[0]}/d`, 0, 4 * MiB, 1);
    await sleep(300);
    baseline = rssOf(target.child.pid!);
  }, 60000);

  afterAll(async () => {
    await target?.stop();
    await scratch.close();
  });

  it('a VQ payload before Connect is not buffered: 32 connections stalled one byte short hold no payload', async () => {
    const rss = sampleRss(target.child.pid!);
    const before = rssOf(target.child.pid!);
    const payload = Buffer.alloc(4 * MiB, 0xab);
    const header = encodeCommand({ opcode: Opcode.Vq, commandId: 7, outLength: payload.length, inLength: 0 });
    const peers = await Promise.all(Array.from({ length: 32 }, () => RawQueue.open(port)));
    // The first one sends the whole PDU: the answer is that Connect must come first.
    const whole = peers[0]!;
    whole.send(header, payload);
    await Promise.all(
      peers.slice(1).map((p) => new Promise<void>((resolve) => p.socket.write(Buffer.concat([header, payload.subarray(1)]), () => resolve()))),
    );
    const c = await whole.completion();
    expect(st(c)).toBe('ENOCMD');
    expect(c.readUInt16LE(2)).toBe(7);
    await sleep(200);
    const peak = rss.stop();
    process.stderr.write(`peer-limits: target RSS ${(before / MiB).toFixed(0)} → peak ${(peak / MiB).toFixed(0)} MiB with 31 × (4 MiB - 1) + 4 MiB unbound payload bytes\n`);
    expect(peak - before).toBeLessThan(48 * MiB); // buffered, it would be 128 MiB
    for (const p of peers) p.socket.destroy();
  }, 60000);

  it('8 peers that never read their completions: RSS stays within 256 MiB of baseline, they are closed, a good initiator is served', async () => {
    const rss = sampleRss(target.child.pid!);
    const hogs = [];
    for (let h = 0; h < 8; h++) {
      const s = await openRawBlkSession(port, 'd', 2, `hog-${h}`);
      for (const vq of s.vqs) {
        vq.socket.pause(); // never read a completion
        // 24 reads of 4 MiB per virtqueue: 96 MiB each if the target buffered them all.
        vq.send(...Array.from({ length: 24 }, (_, i) => blkReadPdu(i + 1, (i % 7) * 4 * MiB, 4 * MiB)));
      }
      hogs.push(s);
    }
    // A well-behaved initiator beside them gets its I/O done and verified.
    await verifiedIo(`${target.urls[0]}/d`, 28 * MiB, 4 * MiB, 2);
    // Every non-reading virtqueue is closed by the target (send timeout), which frees its
    // buffers. A paused socket does not notice a close: wait for the target to say it, then read.
    const stalled = () => target.stderr().match(/bytes of completions unread for 3000 ms; closing the connection/g)?.length ?? 0;
    for (let i = 0; i < 300 && stalled() < 16; i++) await sleep(100);
    expect(stalled()).toBe(16);
    for (const vq of hogs.flatMap((s) => s.vqs)) vq.socket.resume();
    await Promise.all(hogs.flatMap((s) => s.vqs.map((vq) => vq.whenClosed(30000))));
    const peak = rss.stop();
    process.stderr.write(`\npeer-limits: target RSS baseline ${(baseline / MiB).toFixed(0)} MiB, peak ${(peak / MiB).toFixed(0)} MiB with 8 non-reading peers (16 virtqueues)\n`);
    expect(peak - baseline).toBeLessThan(256 * MiB);
    expect(target.child.exitCode).toBe(null);
    await Promise.all(hogs.map((s) => s.control.close()));
  }, 90000);

  it('connections that never complete Connect are closed after the connect timeout; connected ones stay', async () => {
    const silent = await Promise.all(Array.from({ length: 50 }, () => RawQueue.open(port)));
    const partial = await RawQueue.open(port);
    partial.send(Buffer.alloc(10)); // part of a header
    const refused = await RawQueue.open(port);
    // An unknown TVQN is answered like a refused one (docs/PROTOCOL.md, "What a refusal reveals").
    expect(st(await refused.connectControl('no-such-disk'))).toBe('EACLREJECTED'); // a failed Connect does not bind
    const connected = await openRawBlkSession(port, 'd', 1, 'patient');
    await Promise.all([...silent, partial, refused].map((q) => q.whenClosed(15000)));
    // The bound queues outlive the timeout and still answer.
    expect(connected.control.closed).toBe(false);
    expect(connected.vqs[0]!.closed).toBe(false);
    expect(st(await connected.control.call({ opcode: Opcode.Keepalive, commandId: 77 }))).toBe('SUCCESS');
    const r = await connected.vqs[0]!.call({ opcode: Opcode.Vq, commandId: 3, outLength: 16, inLength: 513 }, blkReadPdu(3, 0, 512).subarray(16));
    expect(st(r)).toBe('SUCCESS');
    await connected.vqs[0]!.close();
    await connected.control.close();
    expect(target.stderr()).toMatch(/no Connect within 1500 ms; closing/);
  }, 60000);

  it('half-close: 32 writes then shutdown(SHUT_WR): all 32 completions arrive, then the target closes', async () => {
    const s = await openRawBlkSession(port, 'd', 1, 'half-closer');
    const vq = s.vqs[0]!;
    const chunk = 256 * 1024;
    const pdus = Array.from({ length: 32 }, (_, i) => blkWritePdu(100 + i, 8 * MiB + i * chunk, Buffer.alloc(chunk, i + 1)));
    vq.send(...pdus);
    vq.socket.end(); // SHUT_WR: nothing more from us, but we still read
    const ids = new Set<number>();
    for (let i = 0; i < 32; i++) {
      const c = await vq.completion();
      expect(st(c)).toBe('SUCCESS');
      ids.add(c.readUInt16LE(2));
      expect((await vq.read(1))[0]).toBe(0); // VIRTIO_BLK_S_OK
    }
    expect([...ids].sort((a, b) => a - b)).toEqual(Array.from({ length: 32 }, (_, i) => 100 + i));
    await vq.whenClosed(10000);
    // And the data is there.
    const d = await BlockDevice.open(`${target.urls[0]}/d`, { keepaliveIntervalMs: 0 });
    const back = await d.read(8 * MiB, 32 * chunk);
    for (let i = 0; i < 32; i++) expect(back.subarray(i * chunk, (i + 1) * chunk).every((b) => b === i + 1)).toBe(true);
    await d.close();
    await s.control.close();
  }, 60000);
});

describe('buffer budgets', () => {
  it('a peer that leaves in the middle of an admitted payload gives its budget back', async () => {
    // Found by `npm run fuzz` (truncated streams): each such peer used to keep its admitted
    // bytes of the target budget for good, until large commands waited forever.
    const fx = new TargetFixture({ limits: { targetBufferBytes: 1024 * 1024, queueBufferBytes: 1024 * 1024, sendStallTimeoutMs: 0 } });
    try {
      await fx.addDisk('d', 4 * MiB);
      await fx.listen();
      for (let i = 0; i < 3; i++) {
        const s = await openRawBlkSession(fx.port, 'd', 1, `leaver-${i}`);
        const pdu = blkWritePdu(5, 0, Buffer.alloc(512 * 1024, 1));
        s.vqs[0]!.send(pdu.subarray(0, pdu.length - 1000)); // admitted, never completed
        await sleep(100);
        s.vqs[0]!.socket.destroy();
        await s.vqs[0]!.whenClosed();
        await s.control.close();
      }
      // 3 × 512 KiB would be more than the whole 1 MiB budget: this write only runs if it came back.
      await verifiedIo(`${fx.url}/d`, MiB, 512 * 1024, 3);
    } finally {
      await fx.close();
    }
  }, 60000);
});
