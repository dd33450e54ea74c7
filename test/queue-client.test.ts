import { describe, expect, it } from 'vitest';
import { QueueClient } from '../src/initiator/queue-client.js';
import { Opcode, encodeBareCompletion, encodeVqCompletion, type InitiatorConnection, type InitiatorConnectionHandler } from '../src/index.js';

/** A connection that records commands and lets the test answer them. */
function fakeConnection() {
  const sent: number[] = [];
  let handler: InitiatorConnectionHandler | null = null;
  const conn: InitiatorConnection = {
    kind: 'stream',
    peer: 'fake',
    maxKeyedDescriptors: 0,
    start: (h) => (handler = h),
    sendCommand: (c) => sent.push(c.readUInt16LE(2)),
    sendVq: (c) => sent.push(c.readUInt16LE(2)),
    close: async () => handler?.onClose(),
  };
  return { conn, sent, answer: (id: number) => handler!.onCompletion(encodeBareCompletion(0, id)) };
}

describe('QueueClient', () => {
  it('command ids stay below the queue size (so never in 0xff00-0xffff) and are unique in flight', async () => {
    // Keyed transports keep per-command state in an array indexed by command id.
    const f = fakeConnection();
    const q = new QueueClient(f.conn, 8);
    const seen = new Set<number>();
    for (let i = 0; i < 100; i++) {
      const p = q.call({ opcode: Opcode.GetStatus });
      const id = f.sent[f.sent.length - 1]!;
      expect(id).toBeLessThan(8);
      f.answer(id);
      await p;
      seen.add(id);
    }
    expect([...seen].sort((x, y) => x - y)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
  });
  it('skips ids still in flight when it wraps', async () => {
    const f = fakeConnection();
    const q = new QueueClient(f.conn, 4);
    const stuck = q.call({ opcode: Opcode.GetStatus }); // id 0 stays in flight
    for (let i = 1; i < 4; i++) {
      const p = q.call({ opcode: Opcode.GetStatus });
      f.answer(f.sent[f.sent.length - 1]!);
      await p;
    }
    void q.call({ opcode: Opcode.GetStatus });
    expect(f.sent).toEqual([0, 1, 2, 3, 1]);
    f.answer(0);
    await stuck;
  });
  it('holds commands beyond the queue size until a completion frees a slot', async () => {
    const f = fakeConnection();
    const q = new QueueClient(f.conn, 2);
    const ps = [0, 1, 2].map(() => q.call({ opcode: Opcode.GetStatus }));
    expect(f.sent).toEqual([0, 1]);
    f.answer(0);
    await ps[0];
    // The freed id is the only one below the queue size.
    expect(f.sent).toEqual([0, 1, 0]);
    f.answer(1);
    f.answer(0);
    await Promise.all(ps);
  });
  it('rejects everything in flight and waiting when the connection closes', async () => {
    const f = fakeConnection();
    const q = new QueueClient(f.conn, 1);
    const a = q.call({ opcode: Opcode.GetStatus });
    const b = q.call({ opcode: Opcode.GetStatus });
    await q.close();
    await expect(a).rejects.toThrow(/closed/);
    await expect(b).rejects.toThrow(/closed/);
  });
  it('never pipelines more than 0xff00 commands, whatever the negotiated queue size', () => {
    const q = new QueueClient(fakeConnection().conn, 0xffff);
    expect(q.queueSize).toBe(0xff00);
    q.queueSize = 65535;
    expect(q.queueSize).toBe(0xff00);
  });

  it('a VQ completion claiming more bytes than in_length fails the queue and closes it', async () => {
    let handler: InitiatorConnectionHandler | null = null;
    let closed = false;
    const sent: number[] = [];
    const conn: InitiatorConnection = {
      kind: 'keyed',
      peer: 'fake',
      maxKeyedDescriptors: 4,
      start: (h) => (handler = h),
      sendCommand: () => {},
      sendVq: (c) => sent.push(c.readUInt16LE(2)),
      close: async () => {
        closed = true;
      },
    };
    const q = new QueueClient(conn, 4);
    const p = q.vq([Buffer.alloc(16)], [Buffer.alloc(8)]);
    handler!.onCompletion(encodeVqCompletion(0, sent[0]!, 9));
    await expect(p).rejects.toThrow(/claims 9 bytes written into 8 device-writable bytes/);
    expect(closed).toBe(true);
    await expect(q.call({ opcode: Opcode.GetStatus })).rejects.toThrow(/claims 9 bytes/);
  });
});
