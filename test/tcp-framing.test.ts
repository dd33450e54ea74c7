import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import {
  Opcode,
  encodeCommand,
  encodeConnectBody,
  encodeVqCompletion,
  encodeBareCompletion,
  silentLogger,
  type VqRequestData,
} from '../src/index.js';
import { VqTransferError, type TargetConnection } from '../src/transport/transport.js';
import { TcpTargetConnection } from '../src/transport/tcp/tcp-target-connection.js';
import { TcpInitiatorConnection } from '../src/transport/tcp/tcp-initiator-connection.js';
import { CompletionReader } from '../src/transport/tcp/completion-reader.js';
import { fetchBuffers } from './helpers/vq-buffers.js';

/** A socket stand-in that lets a test decide exactly how bytes are split into reads. */
class FakeSocket extends EventEmitter {
  remoteAddress = '127.0.0.1';
  remotePort = 1;
  written: Buffer[] = [];
  writeReturns = true;
  paused = false;
  ended = false;
  destroyed = false;
  setNoDelay() {}
  pause() {
    this.paused = true;
  }
  resume() {
    this.paused = false;
  }
  cork() {}
  uncork() {}
  writableLength = 0;
  write(b: Buffer, cb?: (err?: Error | null) => void) {
    this.written.push(Buffer.from(b));
    if (cb) queueMicrotask(() => cb(null));
    return this.writeReturns;
  }
  end() {
    this.ended = true;
    this.emit('close');
  }
  destroy() {
    this.destroyed = true;
    this.emit('close');
  }
  feed(...chunks: Buffer[]) {
    for (const c of chunks) this.emit('data', c);
  }
}

const asSocket = (s: FakeSocket) => s as unknown as Socket;

/** completeVq's callback as a promise, for a test to await. */
function completeVq(conn: TargetConnection, req: VqRequestData, completion: Buffer, written: number): Promise<void> {
  return new Promise((resolve, reject) => conn.completeVq(req, completion, written, (err) => (err ? reject(err) : resolve())));
}


type Seen = { opcode: number; commandId: number; payload: string };

function targetOn(limit = 1 << 20) {
  const sock = new FakeSocket();
  const conn = new TcpTargetConnection(asSocket(sock), limit, silentLogger);
  const seen: Array<{ cmd: Buffer; payload: Buffer | VqRequestData }> = [];
  let closed = false;
  conn.start({
    admitVq: () => 'accept',
    // The header buffer is the connection's, valid during the call only: keep a copy.
    onCommand: (cmd, payload) => seen.push({ cmd: Buffer.from(cmd), payload }),
    onEnd: () => {},
    onClose: () => (closed = true),
  });
  return { sock, conn, seen, isClosed: () => closed };
}

async function summarize(seen: Array<{ cmd: Buffer; payload: Buffer | VqRequestData }>): Promise<Seen[]> {
  const out: Seen[] = [];
  for (const s of seen) {
    const p = s.payload instanceof Buffer ? s.payload : (await fetchBuffers(s.payload)).readable;
    out.push({ opcode: s.cmd.readUInt16LE(0), commandId: s.cmd.readUInt16LE(2), payload: p.toString('hex') });
  }
  return out;
}

const vqData = Buffer.from(Array.from({ length: 1000 }, (_, i) => (i * 13) & 0xff));
const stream = Buffer.concat([
  encodeCommand({ opcode: Opcode.Connect, commandId: 1, deviceInstanceId: 0xffff, vqIndex: 0, length: 1024, queueSize: 0 }),
  encodeConnectBody({ ivqn: 'i', tvqn: 't' }),
  encodeCommand({ opcode: Opcode.Keepalive, commandId: 2 }),
  encodeCommand({ opcode: Opcode.Vq, commandId: 3, outLength: 1000, inLength: 5 }),
  vqData,
  encodeCommand({ opcode: Opcode.Vq, commandId: 4, outLength: 0, inLength: 5 }),
  encodeCommand({ opcode: Opcode.Connect, commandId: 5, deviceInstanceId: 3, vqIndex: 1, length: 0, queueSize: 0 }),
  encodeCommand({ opcode: Opcode.GetConfig, commandId: 6, offset: 0, bytes: 8 }),
]);
const expected: Seen[] = [
  { opcode: Opcode.Connect, commandId: 1, payload: encodeConnectBody({ ivqn: 'i', tvqn: 't' }).toString('hex') },
  { opcode: Opcode.Keepalive, commandId: 2, payload: '' },
  { opcode: Opcode.Vq, commandId: 3, payload: vqData.toString('hex') },
  { opcode: Opcode.Vq, commandId: 4, payload: '' },
  { opcode: Opcode.Connect, commandId: 5, payload: '' },
  { opcode: Opcode.GetConfig, commandId: 6, payload: '' },
];

describe('TCP target framing (DECISIONS.md item 3)', () => {
  it('many PDUs in one read', async () => {
    const t = targetOn();
    t.sock.feed(stream);
    expect(await summarize(t.seen)).toEqual(expected);
  });
  it('every PDU split byte by byte', async () => {
    const t = targetOn();
    for (let i = 0; i < stream.length; i++) t.sock.feed(stream.subarray(i, i + 1));
    expect(await summarize(t.seen)).toEqual(expected);
  });
  it('random splits', async () => {
    let seed = 7;
    const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) % 97) + 1;
    for (let round = 0; round < 20; round++) {
      const t = targetOn();
      for (let i = 0; i < stream.length; ) {
        const n = rnd();
        t.sock.feed(stream.subarray(i, i + n));
        i += n;
      }
      expect(await summarize(t.seen)).toEqual(expected);
    }
  });
  it('a device-readable payload that arrives in one read reaches the device in a pooled frame, not in the read (reused by the next read)', async () => {
    const t = targetOn();
    const chunk = Buffer.concat([encodeCommand({ opcode: Opcode.Vq, commandId: 3, outLength: 1000, inLength: 5 }), vqData]);
    t.sock.feed(chunk);
    const req = t.seen[0]!.payload as VqRequestData;
    const out = (await fetchBuffers(req)).readable;
    expect(out.buffer).not.toBe(chunk.buffer);
    expect(out.equals(vqData)).toBe(true);
    // The next command's bytes overwrite the connection's scratch, not this payload.
    t.sock.feed(Buffer.concat([encodeCommand({ opcode: Opcode.Vq, commandId: 4, outLength: 1000, inLength: 5 }), Buffer.alloc(1000, 0x5a)]));
    expect(out.equals(vqData)).toBe(true);
    req.release();
  });
  it('a VQ payload over the limit is skipped as it arrives, never buffered, then reported', async () => {
    const t = targetOn(4096);
    t.sock.feed(encodeCommand({ opcode: Opcode.Vq, commandId: 9, outLength: 3 * 1024 * 1024, inLength: 1 }));
    const chunk = Buffer.alloc(64 * 1024);
    for (let i = 0; i < 48; i++) {
      t.sock.feed(chunk);
      const held = t.conn as unknown as { input: { length: number }; gather: Buffer | null };
      expect(held.input.length).toBe(0);
      expect(held.gather).toBeNull();
    }
    expect(t.seen).toHaveLength(1);
    const req = t.seen[0]!.payload as VqRequestData;
    await expect(fetchBuffers(req)).rejects.toBeInstanceOf(VqTransferError);
    // The stream is still in sync afterwards.
    t.sock.feed(encodeCommand({ opcode: Opcode.GetStatus, commandId: 10 }));
    expect(t.seen[1]!.cmd.readUInt16LE(2)).toBe(10);
  });
  it('a Connect announcing a body that is neither 0 nor 1024 bytes closes the connection', () => {
    const t = targetOn();
    t.sock.feed(encodeCommand({ opcode: Opcode.Connect, commandId: 1, deviceInstanceId: 0xffff, vqIndex: 0, length: 0xffffffff, queueSize: 0 }));
    expect(t.sock.ended).toBe(true);
    expect(t.isClosed()).toBe(true);
    expect(t.seen).toHaveLength(0);
  });
  it('stops reading while completions cannot be written, resumes on drain', () => {
    const t = targetOn();
    t.sock.writeReturns = false;
    t.conn.sendCompletion(encodeBareCompletion(0, 1));
    expect(t.sock.paused).toBe(true);
    t.sock.writeReturns = true;
    t.sock.emit('drain');
    expect(t.sock.paused).toBe(false);
  });
  it('a VQ completion is the 16-byte completion followed by exactly the bytes the device wrote into its writable buffer', async () => {
    const t = targetOn();
    t.sock.feed(encodeCommand({ opcode: Opcode.Vq, commandId: 3, outLength: 0, inLength: 8 }));
    const req = t.seen[0]!.payload as VqRequestData;
    const writable = req.writableNow()!;
    expect(writable.length).toBe(8);
    writable.fill(0xee); // what an earlier request may have left there
    writable.write('abcde');
    const done = encodeVqCompletion(0, 3, 5);
    await completeVq(t.conn, req, done, 5);
    // One write: the header in front of the 5 written bytes, none of the 3 left over.
    expect(t.sock.written).toHaveLength(1);
    expect(Buffer.concat(t.sock.written).equals(Buffer.concat([done, Buffer.from('abcde')]))).toBe(true);
    req.release();
  });
  it('a payload is gathered into a pooled frame, reused by the next payload of its size class, whether it spans reads or not', async () => {
    const t = targetOn();
    const payload = (seed: number) => Buffer.from(Array.from({ length: 100_000 }, (_, i) => (i * 7 + seed) & 0xff));
    const send = (id: number, p: Buffer) => {
      // Three reads, none holding the whole payload.
      const pdu = Buffer.concat([encodeCommand({ opcode: Opcode.Vq, commandId: id, outLength: p.length, inLength: 0 }), p]);
      t.sock.feed(pdu.subarray(0, 40_000), pdu.subarray(40_000, 80_000), pdu.subarray(80_000));
      return t.seen[t.seen.length - 1]!.payload as VqRequestData;
    };
    const a = send(1, payload(1));
    const pa = a.readOutNow()!;
    expect(pa.equals(payload(1))).toBe(true);
    // A pool size class (128 KiB of data plus 64 bytes of header and trailer room, plus up to a
    // page that aligns its data for O_DIRECT), not a buffer of its own.
    expect(pa.buffer.byteLength).toBeGreaterThanOrEqual(128 * 1024);
    expect(pa.buffer.byteLength).toBeLessThanOrEqual(128 * 1024 + 64 + 4096);
    a.release();
    const b = send(2, payload(2));
    const pb = b.readOutNow()!;
    expect(pb.equals(payload(2))).toBe(true);
    expect(pb.buffer).toBe(pa.buffer);
    b.release();
    // Within one read: a pooled frame too (the read's memory is the connection's scratch).
    const small = Buffer.alloc(512, 9);
    const within = (id: number) => {
      t.sock.feed(Buffer.concat([encodeCommand({ opcode: Opcode.Vq, commandId: id, outLength: small.length, inLength: 0 }), small]));
      return t.seen[t.seen.length - 1]!.payload as VqRequestData;
    };
    const c = within(3);
    const pc = c.readOutNow()!;
    expect(pc).toEqual(small);
    c.release();
    const d = within(4);
    expect(d.readOutNow()!.buffer).toBe(pc.buffer);
    d.release();
  });
  it('writable buffers come from a pool: the frame of a released request serves the next one', async () => {
    const t = targetOn();
    const next = async (id: number) => {
      t.sock.feed(encodeCommand({ opcode: Opcode.Vq, commandId: id, outLength: 0, inLength: 100 }));
      return t.seen[t.seen.length - 1]!.payload as VqRequestData;
    };
    const a = await next(1);
    const wa = a.writableNow()!;
    expect(a.writableNow()!).toBe(wa); // the same buffer on every call
    const b = await next(2);
    const wb = b.writableNow()!;
    expect(wb.buffer).not.toBe(wa.buffer); // both in flight: two frames
    await completeVq(t.conn, a, encodeVqCompletion(0, 1, 0), 0);
    a.release();
    const c = await next(3);
    expect((c.writableNow()!).buffer).toBe(wa.buffer);
    // A request this connection did not deliver is refused, not sent.
    const foreign: VqRequestData = { outLength: 0, inLength: 1, readOutNow: () => undefined, writableNow: () => undefined, fetch: () => {}, release: () => {} };
    await expect(completeVq(t.conn, foreign, encodeVqCompletion(0, 9, 1), 1)).rejects.toThrow(/did not deliver/);
  });
});

describe('TCP initiator framing', () => {
  function initiatorOn(limit = 1 << 20, vqIds = [7, 2]) {
    const sock = new FakeSocket();
    const conn = new TcpInitiatorConnection(asSocket(sock), limit);
    // Completions as they arrive (recorded without allocating, see the byte-by-byte test)...
    const arrived: Array<{ id: number; length: number }> = [];
    /** The device-writable buffers of the VQ commands in flight, as the initiator queue keeps them. */
    const inBuffers = new Map<number, Buffer[]>();
    // ...and what they brought: a VQ completion's bytes are in its command's buffers.
    const got = () =>
      arrived.map(({ id, length }) => {
        const into = vqIds.includes(id) ? inBuffers.get(id) : undefined;
        return { id, data: into ? Buffer.concat(into).subarray(0, length).toString() : null };
      });
    let closeReason: Error | undefined | null = null;
    conn.start({
      onCompletion: (c) => void arrived.push({ id: c.readUInt16LE(2), length: c.readUInt32LE(4) }),
      // The initiator queue's answer: VQ completions carry their length in payload bytes.
      expectedPayload: (c) => (vqIds.includes(c.readUInt16LE(2)) ? c.readUInt32LE(4) : 0),
      payloadBuffers: (c) => inBuffers.get(c.readUInt16LE(2)) ?? [],
      onClose: (r) => (closeReason = r),
    });
    const sendVq = (id: number, into: Buffer[]) => {
      inBuffers.set(id, into);
      const inLength = into.reduce((n, b) => n + b.length, 0);
      conn.sendVq(encodeCommand({ opcode: Opcode.Vq, commandId: id, outLength: 0, inLength }), [], into);
    };
    return { sock, conn, got, sendVq, closeReason: () => closeReason };
  }
  it('reads VQ payloads only after VQ completions, across arbitrary splits', () => {
    const i = initiatorOn();
    i.sendVq(7, [Buffer.alloc(8)]);
    const bytes = Buffer.concat([
      encodeBareCompletion(0, 1),
      encodeVqCompletion(0, 7, 6),
      Buffer.from('hello!'),
      Buffer.from([0, 0, 0xff, 0xff, ...Array(12).fill(0)]), // a keepalive event
    ]);
    for (let k = 0; k < bytes.length; k += 5) i.sock.feed(bytes.subarray(k, k + 5));
    expect(i.got()).toEqual([
      { id: 1, data: null },
      { id: 7, data: 'hello!' },
      { id: 0xffff, data: null },
    ]);
  });
  it('a payload fed byte by byte lands in the device-writable buffers, across their boundaries, with no buffer of its own', () => {
    const i = initiatorOn();
    const into = [Buffer.alloc(3), Buffer.alloc(1), Buffer.alloc(6, 0xee)];
    i.sendVq(2, into);
    const payload = Buffer.from('abcdefgh');
    const bytes = Buffer.concat([encodeVqCompletion(0, 2, payload.length), payload, encodeBareCompletion(0, 5)]);
    // Any Buffer the connection allocates for the payload would show up here.
    const allocs = { n: 0 };
    const spies = (['alloc', 'allocUnsafe', 'allocUnsafeSlow', 'concat'] as const).map((name) => {
      const original = Buffer[name] as (...a: unknown[]) => Buffer;
      (Buffer as unknown as Record<string, unknown>)[name] = (...a: unknown[]) => (allocs.n++, original.apply(Buffer, a));
      return () => ((Buffer as unknown as Record<string, unknown>)[name] = original);
    });
    const chunks = [...bytes].map((b) => Buffer.from([b]));
    try {
      // Past the completion header (copied into the reader's own completion buffer), the payload costs nothing.
      for (const c of chunks.slice(0, 16)) i.sock.feed(c);
      allocs.n = 0;
      for (const c of chunks.slice(16, 16 + payload.length)) i.sock.feed(c);
    } finally {
      for (const restore of spies) restore();
    }
    expect(allocs.n).toBe(0);
    expect(i.got()).toEqual([{ id: 2, data: 'abcdefgh' }]);
    for (const c of chunks.slice(16 + payload.length)) i.sock.feed(c);
    expect(Buffer.concat(into).toString('latin1')).toBe('abcdefgh\xee\xee');
    expect(i.got()).toEqual([
      { id: 2, data: 'abcdefgh' },
      { id: 5, data: null },
    ]);
  });
  it('a completion announcing more payload than its device-writable buffers hold breaks the connection', () => {
    const i = initiatorOn();
    i.sendVq(2, [Buffer.alloc(4)]);
    i.sock.feed(encodeVqCompletion(0, 2, 8));
    expect(i.sock.destroyed).toBe(true);
    expect(String(i.closeReason())).toMatch(/8-byte VQ completion payload for 4 device-writable bytes/);
  });
  it('a completion announcing more than the limit breaks the connection instead of allocating', () => {
    const i = initiatorOn(1024);
    i.sendVq(2, [Buffer.alloc(8)]);
    i.sock.feed(encodeVqCompletion(0, 2, 0x7fffffff));
    expect(i.sock.destroyed).toBe(true);
    expect(String(i.closeReason())).toMatch(/limit 1024/);
  });
});

describe('TCP initiator reading through onread (libuv reads into the buffer the reader picks)', () => {
  function onreadInitiator(vqIds: number[]) {
    const sock = new FakeSocket();
    const reader = new CompletionReader();
    const conn = new TcpInitiatorConnection(asSocket(sock), 1 << 20, 'tcp', reader);
    const inBuffers = new Map<number, Buffer[]>();
    const arrived: number[] = [];
    conn.start({
      onCompletion: (c) => void arrived.push(c.readUInt16LE(2)),
      expectedPayload: (c) => (vqIds.includes(c.readUInt16LE(2)) ? c.readUInt32LE(4) : 0),
      payloadBuffers: (c) => inBuffers.get(c.readUInt16LE(2)) ?? [],
      onClose: () => {},
    });
    /** The kernel's side: each read fills at most `size` bytes of the buffer the reader offers. */
    const deliver = (bytes: Buffer, sizes: () => number) => {
      const targets: Buffer[] = [];
      for (let at = 0; at < bytes.length; ) {
        const into = reader.nextBuffer();
        expect(into.length).toBeGreaterThan(0);
        const n = Math.min(into.length, sizes(), bytes.length - at);
        bytes.copy(into, 0, at, at + n);
        targets.push(into);
        at += n;
        expect(reader.received(n)).toBe(true);
      }
      return targets;
    };
    return { sock, conn, inBuffers, arrived, deliver };
  }

  it('a 128 KiB payload after its header is read straight into the device-writable buffers', () => {
    const i = onreadInitiator([3]);
    const into = [Buffer.alloc(100_000), Buffer.alloc(31_072)];
    i.inBuffers.set(3, into);
    const payload = Buffer.alloc(131_072);
    for (let k = 0; k < payload.length; k++) payload[k] = (k * 7 + 3) & 0xff;
    const bytes = Buffer.concat([encodeVqCompletion(0, 3, payload.length), payload, encodeBareCompletion(0, 9)]);
    const targets = i.deliver(bytes, () => 65_536);
    expect(Buffer.concat(into).equals(payload)).toBe(true);
    expect(i.arrived).toEqual([3, 9]);
    // The first read (header + the payload's first bytes) went to the scratch; every later
    // payload read went into the caller's memory itself.
    const direct = targets.filter((t) => into.some((b) => t.buffer === b.buffer && t.byteOffset >= b.byteOffset && t.byteOffset + t.length <= b.byteOffset + b.length));
    expect(direct.length).toBeGreaterThanOrEqual(2);
    expect(targets[0]!.buffer).not.toBe(into[0]!.buffer);
  });

  it("a payload's short last piece (virtio-blk's status byte) is not read on its own: it comes through the scratch with what follows", () => {
    const i = onreadInitiator([3]);
    const data = Buffer.alloc(8192);
    const status = Buffer.alloc(1, 0xee);
    i.inBuffers.set(3, [data, status]);
    const payload = Buffer.concat([Buffer.alloc(8192, 0x5c), Buffer.from([0])]);
    const targets = i.deliver(Buffer.concat([encodeVqCompletion(0, 3, payload.length), payload, encodeBareCompletion(0, 9)]), () => 4096);
    expect(data.equals(payload.subarray(0, 8192))).toBe(true);
    expect(status[0]).toBe(0);
    expect(i.arrived).toEqual([3, 9]);
    // The data went straight into the caller's buffer; no read was offered the 1-byte status
    // buffer (a system call for one byte), the last read brought it and the next completion.
    expect(targets.some((t) => t.buffer === data.buffer)).toBe(true);
    expect(targets.some((t) => t.buffer === status.buffer)).toBe(false);
  });

  it('random read sizes: every completion and every payload byte arrives in order', () => {
    let seed = 12345;
    const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8) % 300;
    const i = onreadInitiator([1, 2, 4]);
    const payloads = new Map<number, Buffer>();
    const parts: Buffer[] = [];
    for (const [id, len] of [[1, 1000], [5, 0], [2, 17], [4, 4096], [6, 0]] as const) {
      if (len > 0) {
        const p = Buffer.alloc(len, id * 31);
        payloads.set(id, p);
        i.inBuffers.set(id, [Buffer.alloc(len >> 1), Buffer.alloc(0), Buffer.alloc(len - (len >> 1))]);
        parts.push(encodeVqCompletion(0, id, len), p);
      } else parts.push(encodeBareCompletion(0, id));
    }
    i.deliver(Buffer.concat(parts), () => 1 + rnd());
    expect(i.arrived).toEqual([1, 5, 2, 4, 6]);
    for (const [id, p] of payloads) expect(Buffer.concat(i.inBuffers.get(id)!).equals(p), `id ${id}`).toBe(true);
  });

  it('after close() reads land in the reader\'s own memory: a late payload never touches the caller\'s buffer', () => {
    const i = onreadInitiator([3]);
    const into = [Buffer.alloc(64, 0xee)];
    i.inBuffers.set(3, into);
    i.deliver(encodeVqCompletion(0, 3, 64), () => 16);
    void i.conn.close();
    i.deliver(Buffer.alloc(64, 0x11), () => 64);
    expect(into[0]!.equals(Buffer.alloc(64, 0xee))).toBe(true);
    expect(i.arrived).toEqual([]);
  });
});
