import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BlkRequestType,
  BlockDevice,
  CONNECT_BODY_SIZE,
  Opcode,
  SECTOR_SIZE,
  encodeCommand,
  encodeConnectBody,
  encodeRequestHeader,
  quotePeerString,
  statusName,
} from '../src/index.js';
import { RawQueue } from './helpers/raw-queue.js';
import { TargetFixture } from './helpers/target-fixture.js';
import { pattern } from './helpers/pattern.js';

const st = (c: Buffer) => statusName(c.readUInt16LE(0));
const MiB = 1024 * 1024;

/** A virtqueue Connect to `instance`, with the Connect Body of `body` (or none); the completion's status. */
async function vqConnect(q: RawQueue, instance: number, vqIndex: number, body?: { ivqn: string; tvqn: string }): Promise<string> {
  const c = await q.call(
    { opcode: Opcode.Connect, commandId: 7, deviceInstanceId: instance, vqIndex, length: body ? CONNECT_BODY_SIZE : 0, queueSize: 4 },
    body ? encodeConnectBody(body) : undefined,
  );
  return st(c);
}

/** The same from a chosen local address (another "host" on loopback). */
function vqConnectFrom(port: number, localAddress: string, instance: number, vqIndex: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: '127.0.0.1', localAddress }, () => {
      s.write(encodeCommand({ opcode: Opcode.Connect, commandId: 7, deviceInstanceId: instance, vqIndex, length: 0, queueSize: 4 }));
    });
    s.once('data', (d: Buffer) => {
      resolve(statusName(d.readUInt16LE(0)));
      s.destroy();
    });
    s.once('error', reject);
  });
}

describe('allow-lists cannot be walked around (the attack of issue 9)', () => {
  let fx: TargetFixture;
  beforeAll(async () => {
    fx = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 120000 } });
    await fx.addDisk('private', MiB, { numQueues: 2, allow: ['host-a', 'host-b'] });
    await fx.addDisk('public', MiB, { numQueues: 2 });
    await fx.listen();
  });
  afterAll(async () => {
    await fx?.close();
  });

  it("mallory cannot attach to host-a's instance with no body, her own body, or host-b's body; host-a's data and queue slots stay hers", async () => {
    const a = await BlockDevice.open(`${fx.url}/private`, { ivqn: 'host-a', maxQueues: 1, keepaliveIntervalMs: 0 });
    const b = await BlockDevice.open(`${fx.url}/private`, { ivqn: 'host-b', maxQueues: 1, keepaliveIntervalMs: 0 });
    const m = await RawQueue.open(fx.port);
    try {
      const secret = pattern(8 * SECTOR_SIZE, 7);
      await a.write(0, secret);
      await a.flush();
      const id = a.device.instanceId;

      // 1. Her own control queue: EACLREJECTED.
      const ctl = await RawQueue.open(fx.port);
      expect(st(await ctl.connectControl('private', 'mallory'))).toBe('EACLREJECTED');
      await ctl.close();
      // 2. Borrowing host-a's instance: vq 0 (taken) and vq 1 (free), every way.
      // (A fresh connection for each vq: the fourth refused Connect closes a connection.)
      for (const vq of [0, 1]) {
        const p = await RawQueue.open(fx.port);
        expect(await vqConnect(p, id, vq)).toBe('EBADVQN');
        expect(await vqConnect(p, id, vq, { ivqn: 'mallory', tvqn: 'private' })).toBe('EBADVQN');
        expect(await vqConnect(p, id, vq, { ivqn: 'host-b', tvqn: 'private' })).toBe('EBADVQN');
        expect(await vqConnect(p, id, vq, { ivqn: 'host-a', tvqn: 'public' })).toBe('EBADVQN');
        await p.whenClosed(5000);
        await p.close();
      }
      expect(fx.logged(/closing the queue: 4 refused Connects on one connection/)).toBe(true);
      // From another "host" on the same machine: refused as if the instance did not exist (an
      // unauthenticated virtqueue joins only from the control queue's host).
      expect(await vqConnectFrom(fx.port, '127.0.0.2', id, 1)).toBe('EBADDEV');

      // 3. Her still-unbound connection can neither read sector 0 nor write sector 8: a VQ
      // command before any successful Connect gets ENOCMD and the connection is closed (its
      // payload is never read), so the write needs a connection of its own.
      const read = await m.call({ opcode: Opcode.Vq, commandId: 20, outLength: 16, inLength: 513 }, encodeRequestHeader(BlkRequestType.IN, 0n));
      expect([st(read), read.readUInt32LE(4)]).toEqual(['ENOCMD', 0]);
      await m.whenClosed();
      const evil = Buffer.alloc(SECTOR_SIZE, 0xee);
      const w = await RawQueue.open(fx.port);
      const write = await w.call(
        { opcode: Opcode.Vq, commandId: 21, outLength: 16 + SECTOR_SIZE, inLength: 1 },
        Buffer.concat([encodeRequestHeader(BlkRequestType.OUT, 8n), evil]),
      );
      expect(st(write)).toBe('ENOCMD');
      await w.whenClosed();

      // 4. host-a's free slot is still free for host-a herself (no EQUEUEQUOT), with her body.
      const own = await RawQueue.open(fx.port);
      expect(await vqConnect(own, id, 1, { ivqn: 'host-a', tvqn: 'private' })).toBe('SUCCESS');
      await own.close();
      // 5. Her data is intact and she keeps working.
      expect((await a.read(0, 16 * SECTOR_SIZE)).equals(Buffer.concat([secret, Buffer.alloc(8 * SECTOR_SIZE)]))).toBe(true);
      await a.write(8 * SECTOR_SIZE, pattern(SECTOR_SIZE, 9));
      expect((await a.read(8 * SECTOR_SIZE, SECTOR_SIZE)).equals(pattern(SECTOR_SIZE, 9))).toBe(true);

      // 6. Every refused attach left a log line, with the peer-supplied names escaped.
      expect(fx.logged(new RegExp(`virtqueue 1 of instance ${id} refused: no Connect Body: required on an export with an allow-list`))).toBe(true);
      expect(fx.logged(new RegExp(`virtqueue 0 of instance ${id} refused: Connect Body "mallory" → "private" does not match`))).toBe(true);
      expect(fx.logged(new RegExp(`virtqueue 1 of instance ${id} refused: Connect Body "host-b" → "private" does not match`))).toBe(true);
      expect(fx.logged(/Connect → EACLREJECTED \(0x1003\): no instance of "mallory" → "private": IVQN not allowed for an unauthenticated peer/)).toBe(true);
    } finally {
      await m.close();
      await Promise.all([a.close(), b.close()]);
    }
  });

  it('a successful attach is logged too, naming the instance, queue and VQNs', async () => {
    const a = await BlockDevice.open(`${fx.url}/private`, { ivqn: 'host-a', keepaliveIntervalMs: 0 });
    try {
      const id = a.device.instanceId;
      for (const vq of [0, 1]) {
        expect(fx.logged(new RegExp(`: virtqueue ${vq} of instance ${id} attached: "host-a" → "private"$`))).toBe(true);
      }
    } finally {
      await a.close();
    }
  });

  it('instance ids are not handed out in order: ten instances get ten scattered ids', async () => {
    const queues = await Promise.all(Array.from({ length: 10 }, () => RawQueue.open(fx.port)));
    try {
      const ids: number[] = [];
      for (const q of queues) {
        const c = await q.connectControl('public', 'counter');
        expect(st(c)).toBe('SUCCESS');
        ids.push(c.readUInt16LE(4));
      }
      expect(new Set(ids).size).toBe(10);
      for (const id of ids) expect(id).toBeLessThan(0xffff);
      // Sequential allocation would give k, k+1, ..., k+9; random ids (1 in 65535 each) do not.
      const consecutive = ids.slice(1).every((id, i) => id === ids[i]! + 1);
      expect(consecutive).toBe(false);
    } finally {
      await Promise.all(queues.map((q) => q.close()));
    }
  });

  it('an open export keeps the seed behaviour for body-less virtqueues, but only from the control queue host', async () => {
    const ctl = await RawQueue.open(fx.port);
    try {
      const c = await ctl.connectControl('public', 'anyone');
      const id = c.readUInt16LE(4);
      expect(await vqConnectFrom(fx.port, '127.0.0.2', id, 0)).toBe('EBADDEV');
      expect(fx.logged(/refused: unauthenticated connection from tcp:\/\/127\.0\.0\.2, not the control queue's host/)).toBe(true);
      expect(await vqConnectFrom(fx.port, '127.0.0.1', id, 0)).toBe('SUCCESS');
      expect(fx.logged(new RegExp(`virtqueue 0 of instance ${id} attached: "anyone" → "public" \\(no Connect Body\\)`))).toBe(true);
    } finally {
      await ctl.close();
    }
  });
});

describe('log lines escape what peers send', () => {
  let fx: TargetFixture;
  beforeAll(async () => {
    fx = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 120000 } });
    await fx.addDisk('guarded', MiB, { allow: ['host-a'] });
    await fx.addDisk('open', MiB);
    await fx.listen();
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('a VQN with a newline, a forged log prefix, terminal escapes and bidi controls cannot forge a line or reach the terminal', async () => {
    const forged = 'x\n2026-11-27T15:00:00.000Z info  instance 1 created: "host-a" → "guarded"\r\u001b[2J\u001b]0;owned\u0007\u202e\u2028';
    const q1 = await RawQueue.open(fx.port);
    expect(st(await q1.connectControl('guarded', forged))).toBe('EACLREJECTED');
    const q2 = await RawQueue.open(fx.port);
    const c = await q2.connectControl('open', forged);
    expect(st(c)).toBe('SUCCESS');
    // A virtqueue whose body names another forged pair is refused and logged, too.
    const v = await RawQueue.open(fx.port);
    expect(await vqConnect(v, c.readUInt16LE(4), 0, { ivqn: `${forged}!`, tvqn: 'open\u001b[31m' })).toBe('EBADVQN');
    await Promise.all([q1.close(), q2.close(), v.close()]);
    await new Promise((r) => setTimeout(r, 50));

    const mentioning = fx.logs.filter((l) => l.msg.includes('2026-11-27T15:00:00.000Z'));
    expect(mentioning.length).toBeGreaterThanOrEqual(3); // refused, created, refused attach (and closed/destroyed)
    for (const l of fx.logs) {
      expect(l.msg).not.toMatch(/[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e]/);
    }
    const quoted = quotePeerString(forged);
    expect(quoted).toBe(
      '"x\\n2026-11-27T15:00:00.000Z info  instance 1 created: \\"host-a\\" → \\"guarded\\"\\r\\x1b[2J\\x1b]0;owned\\x07\\u202e\\u2028"',
    );
    expect(fx.logged(new RegExp(`no instance of ${quoted.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} → "guarded"`))).toBe(true);
  });

  it('quotePeerString keeps ordinary names readable and cuts very long ones', () => {
    expect(quotePeerString('nqn.2014-08.org.example:host-a')).toBe('"nqn.2014-08.org.example:host-a"');
    expect(quotePeerString('é ü 日本')).toBe('"é ü 日本"');
    expect(quotePeerString('')).toBe('""');
    expect(quotePeerString('a\\b"c')).toBe('"a\\\\b\\"c"');
    expect(quotePeerString('y'.repeat(400))).toBe(`"${'y'.repeat(300)}"…(400 chars)`);
  });
});
