import { describe, expect, it } from 'vitest';
import { InitiatorQueue } from '../src/initiator/initiator-queue.js';
import { Opcode, encodeBareCompletion, encodeVqCompletion, type InitiatorConnection, type InitiatorConnectionHandler } from '../src/index.js';

/** A connection that records commands and lets the test answer them. */
function fakeConnection() {
  const sent: number[] = [];
  let handler: InitiatorConnectionHandler | null = null;
  let closed = false;
  const conn: InitiatorConnection = {
    capabilities: { keyed: false, registeredMemory: false },
    peer: 'fake',
    maxKeyedDescriptors: 0,
    start: (h) => (handler = h),
    sendCommand: (c) => sent.push(c.readUInt16LE(2)),
    sendVq: (c) => sent.push(c.readUInt16LE(2)),
    allocateBuffer: (size) => Buffer.alloc(size),
    freeBuffer: () => {},
    close: async () => {
      closed = true;
      handler?.onClose();
    },
  };
  return { conn, sent, answer: (id: number) => handler!.onCompletion(encodeBareCompletion(0, id)), closed: () => closed };
}

describe('InitiatorQueue', () => {
  it('command ids are slot indexes: always below the queue size, unique in flight, oldest-freed first', async () => {
    const f = fakeConnection();
    const q = new InitiatorQueue(f.conn, 8);
    // Fill the queue: ids 0..7.
    const first = Array.from({ length: 8 }, () => q.call({ opcode: Opcode.GetStatus }));
    expect(f.sent).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    // Complete in a scrambled order and keep it full for many rounds: every id stays < 8,
    // none is handed out twice while in flight.
    const inFlight = new Set(f.sent);
    const settled = [...first];
    let seed = 7;
    for (let i = 0; i < 2000; i++) {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      const ids = [...inFlight];
      const id = ids[seed % ids.length]!;
      inFlight.delete(id);
      f.answer(id);
      settled.push(q.call({ opcode: Opcode.GetStatus }));
      const next = f.sent[f.sent.length - 1]!;
      expect(next).toBeLessThan(8);
      expect(inFlight.has(next)).toBe(false);
      inFlight.add(next);
      expect(q.inFlight).toBe(8);
    }
    for (const id of inFlight) f.answer(id);
    await Promise.all(settled);
    expect(q.inFlight).toBe(0);
  });
  it('hands out the id freed longest ago, skipping ids still in flight', async () => {
    const f = fakeConnection();
    const q = new InitiatorQueue(f.conn, 4);
    const stuck = q.call({ opcode: Opcode.GetStatus }); // id 0 stays in flight
    for (let i = 0; i < 3; i++) void q.call({ opcode: Opcode.GetStatus });
    expect(f.sent).toEqual([0, 1, 2, 3]);
    f.answer(2);
    f.answer(1);
    void q.call({ opcode: Opcode.GetStatus });
    void q.call({ opcode: Opcode.GetStatus });
    expect(f.sent.slice(4)).toEqual([2, 1]);
    f.answer(0);
    await stuck;
    void q.call({ opcode: Opcode.GetStatus });
    expect(f.sent[6]).toBe(0);
  });
  it('queue-size commands go out at once; one more waits for a slot instead of failing', async () => {
    const f = fakeConnection();
    const q = new InitiatorQueue(f.conn, 128);
    const ps = Array.from({ length: 129 }, () => q.vq([], [Buffer.alloc(1)]));
    expect(f.sent).toHaveLength(128);
    expect(new Set(f.sent).size).toBe(128);
    expect(Math.max(...f.sent)).toBe(127);
    expect(q.inFlight).toBe(128);
    f.answer(77);
    expect(f.sent).toHaveLength(129);
    expect(f.sent[128]).toBe(77); // the only free slot
    for (const id of f.sent.slice(0, 128)) if (id !== 77) f.answer(id);
    f.answer(77);
    const done = await Promise.all(ps);
    expect(done.every((c) => c.status === 0)).toBe(true);
  });
  it('a completion for an id whose slot is free (never used, or answered already) or beyond the queue size fails the queue and closes it', async () => {
    // Slot 3 was never used; slot 0 has just been answered (a duplicate); 9 is no slot at all.
    for (const bad of [3, 0, 9]) {
      const f = fakeConnection();
      const q = new InitiatorQueue(f.conn, 4);
      const a = q.call({ opcode: Opcode.GetStatus });
      const b = q.call({ opcode: Opcode.GetStatus });
      f.answer(0);
      await a;
      f.answer(bad);
      await expect(b).rejects.toThrow(new RegExp(`completion for command id ${bad}, which is not in flight`));
      expect(f.closed()).toBe(true);
      await expect(q.call({ opcode: Opcode.GetStatus })).rejects.toThrow(/not in flight/);
    }
  });
  it('an answer deadline that passes fails the queue (the id cannot be reused while an answer may come)', async () => {
    const f = fakeConnection();
    const q = new InitiatorQueue(f.conn, 4);
    const other = q.call({ opcode: Opcode.GetStatus });
    const p = q.call({ opcode: Opcode.GetStatus }, undefined, { answerTimeoutMs: 20, onTimeout: () => new Error('no answer in time') });
    await expect(p).rejects.toThrow(/no answer in time/);
    await expect(other).rejects.toThrow(/no answer in time/);
    // A command answered in time has its deadline cleared.
    const g = fakeConnection();
    const r = new InitiatorQueue(g.conn, 4);
    const quick = r.call({ opcode: Opcode.GetStatus }, undefined, { answerTimeoutMs: 20, onTimeout: () => new Error('late') });
    g.answer(0);
    await quick;
    await new Promise((res) => setTimeout(res, 40));
    expect(r.closed).toBe(false);
  });
  it('holds commands beyond the queue size until a completion frees a slot', async () => {
    const f = fakeConnection();
    const q = new InitiatorQueue(f.conn, 2);
    const ps = [0, 1, 2].map(() => q.call({ opcode: Opcode.GetStatus }));
    expect(f.sent).toEqual([0, 1]);
    f.answer(0);
    await ps[0];
    expect(f.sent).toEqual([0, 1, 0]); // the freed slot
    f.answer(1);
    f.answer(0);
    await Promise.all(ps);
  });
  it('rejects everything in flight and waiting when the connection closes', async () => {
    const f = fakeConnection();
    const q = new InitiatorQueue(f.conn, 1);
    const a = q.call({ opcode: Opcode.GetStatus });
    const b = q.call({ opcode: Opcode.GetStatus });
    await q.close();
    await expect(a).rejects.toThrow(/closed/);
    await expect(b).rejects.toThrow(/closed/);
  });
  it('never pipelines more than 0xff00 commands, whatever the negotiated queue size', () => {
    const q = new InitiatorQueue(fakeConnection().conn, 0xffff);
    expect(q.queueSize).toBe(0xff00);
    q.queueSize = 65535;
    expect(q.queueSize).toBe(0xff00);
  });

  it('a VQ completion claiming more bytes than in_length fails the queue and closes it', async () => {
    let handler: InitiatorConnectionHandler | null = null;
    let closed = false;
    const sent: number[] = [];
    const conn: InitiatorConnection = {
      capabilities: { keyed: true, registeredMemory: false },
      peer: 'fake',
      maxKeyedDescriptors: 4,
      start: (h) => (handler = h),
      sendCommand: () => {},
      sendVq: (c) => sent.push(c.readUInt16LE(2)),
      allocateBuffer: (size) => Buffer.alloc(size),
      freeBuffer: () => {},
      close: async () => {
        closed = true;
      },
    };
    const q = new InitiatorQueue(conn, 4);
    const p = q.vq([Buffer.alloc(16)], [Buffer.alloc(8)]);
    handler!.onCompletion(encodeVqCompletion(0, sent[0]!, 9));
    await expect(p).rejects.toThrow(/claims 9 bytes written into 8 device-writable bytes/);
    expect(closed).toBe(true);
    await expect(q.call({ opcode: Opcode.GetStatus })).rejects.toThrow(/claims 9 bytes/);
  });
});
