import { once } from 'node:events';
import net, { type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { Opcode, encodeBareCompletion, encodeCommand, encodeVqCompletion, silentLogger, type VqRequestData } from '../src/index.js';
import { TcpTargetConnection } from '../src/transport/tcp/tcp-target-connection.js';
import type { TargetConnection } from '../src/transport/transport.js';
import { TcpInitiatorConnection } from '../src/transport/tcp/tcp-initiator-connection.js';
import { waitFor } from './helpers/wait-for.js';

/**
 * Writes produced in one event-loop turn leave in one write: counted at the socket's own
 * _write/_writev, the calls that become system calls, on real loopback sockets.
 */
/** completeVq's callback as a promise, for a test to await. */
function completeVq(conn: TargetConnection, req: VqRequestData, completion: Buffer, written: number): Promise<void> {
  return new Promise((resolve, reject) => conn.completeVq(req, completion, written, (err) => (err ? reject(err) : resolve())));
}

const cleanups: Array<() => void> = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

/** A connected pair on loopback: `ours` is wrapped by the connection under test, `peer` is raw. */
async function socketPair(): Promise<{ ours: Socket; peer: Socket }> {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as net.AddressInfo).port;
  const accepted = once(server, 'connection');
  const ours = net.connect(port, '127.0.0.1');
  await once(ours, 'connect');
  const [peer] = (await accepted) as [Socket];
  cleanups.push(() => {
    ours.destroy();
    peer.destroy();
    server.close();
  });
  return { ours, peer };
}

/** Counts the socket's low-level writes (each is one write/writev system call). */
function countWrites(s: Socket): () => number {
  let n = 0;
  const raw = s as unknown as { _write: (...a: unknown[]) => unknown; _writev: (...a: unknown[]) => unknown };
  const w = raw._write.bind(s);
  const wv = raw._writev.bind(s);
  raw._write = (...a: unknown[]) => (n++, w(...a));
  raw._writev = (...a: unknown[]) => (n++, wv(...a));
  return () => n;
}

/** Collects what the raw peer receives until `length` bytes have arrived. */
function receive(peer: Socket, length: number): Promise<Buffer> {
  return new Promise((resolve) => {
    const parts: Buffer[] = [];
    let got = 0;
    const onData = (chunk: Buffer) => {
      parts.push(chunk);
      got += chunk.length;
      if (got < length) return;
      peer.off('data', onData);
      resolve(Buffer.concat(parts));
    };
    peer.on('data', onData);
  });
}

describe('TCP write batching', () => {
  it('target: completions produced in one turn leave in one write, each settling after it was written', async () => {
    const { ours, peer } = await socketPair();
    const conn = new TcpTargetConnection(ours, 1 << 20, silentLogger);
    const requests: VqRequestData[] = [];
    conn.start({ admitVq: () => 'accept', onCommand: (_c, r) => requests.push(r as VqRequestData), onEnd: () => {}, onClose: () => {} });
    // Eight VQ commands, each asking for 100+id device-writable bytes.
    for (let id = 0; id < 8; id++) peer.write(encodeCommand({ opcode: Opcode.Vq, commandId: id, outLength: 0, inLength: 100 + id }));
    await waitFor('the eight commands at the target', () => requests.length >= 8, 5000, 1);
    const writes = countWrites(ours);
    const expected: Buffer[] = [];
    const writables: Buffer[] = [];
    for (const r of requests) writables.push(r.writableNow()!);
    // The device fills each in place; all eight completions are produced in one turn.
    const settled: Promise<void>[] = [];
    for (let id = 0; id < 8; id++) {
      writables[id]!.fill(id);
      const done = encodeVqCompletion(0, id, 100 + id);
      expected.push(done, Buffer.from(writables[id]!));
      settled.push(completeVq(conn, requests[id]!, done, 100 + id));
    }
    conn.sendCompletion(encodeBareCompletion(0, 99));
    expected.push(encodeBareCompletion(0, 99));
    const want = Buffer.concat(expected);
    const got = await receive(peer, want.length);
    await Promise.all(settled);
    expect(got.equals(want)).toBe(true);
    expect(writes()).toBe(1);
    // A later turn is a new batch.
    await new Promise((r) => setImmediate(r));
    conn.sendCompletion(encodeBareCompletion(0, 100));
    await receive(peer, 16);
    expect(writes()).toBe(2);
  });

  it('initiator: commands issued in one turn leave in one write', async () => {
    const { ours, peer } = await socketPair();
    const conn = new TcpInitiatorConnection(ours, 1 << 20);
    conn.start({ onCompletion: () => {}, expectedPayload: () => 0, payloadBuffers: () => [], onClose: () => {} });
    const writes = countWrites(ours);
    const expected: Buffer[] = [];
    for (let id = 0; id < 8; id++) {
      const out = Buffer.alloc(50 + id, id);
      const cmd = encodeCommand({ opcode: Opcode.Vq, commandId: id, outLength: out.length, inLength: 0 });
      conn.sendVq(cmd, [out], []);
      expected.push(cmd, out);
    }
    const want = Buffer.concat(expected);
    const got = await receive(peer, want.length);
    expect(got.equals(want)).toBe(true);
    expect(writes()).toBe(1);
  });
});
