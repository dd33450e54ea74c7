import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { Opcode, encodeCommand, silentLogger, type VqRequestData } from '../src/index.js';
import type { Listener, TargetConnection } from '../src/transport/transport.js';
import { TcpTransport } from '../src/transport/tcp/tcp-transport.js';
import type { TcpTargetConnection } from '../src/transport/tcp/tcp-target-connection.js';
import { userBufferReadsSupported } from '../src/transport/tcp/user-buffer-read.js';

/**
 * The target's plain-TCP connections read through onread (user-buffer-read.ts) over a real
 * socket: no Buffer per read, payloads gathered in pooled frames, every byte in order whatever
 * the kernel's read sizes.
 */
describe('TCP target reading into its own memory (onread on accepted sockets)', () => {
  let listener: Listener | null = null;
  afterEach(async () => {
    await listener?.close();
    listener = null;
  });

  it('this Node offers what readIntoUserBuffers needs (else the target falls back to a Buffer per read)', () => {
    expect(userBufferReadsSupported()).toBe(true);
  });

  it('commands with payloads of every size, sent in random pieces, arrive whole and in order; none through a data event', async () => {
    const seen: Array<{ id: number; payload: Buffer }> = [];
    const conns: TargetConnection[] = [];
    let dataListeners = -1;
    const transport = new TcpTransport(silentLogger);
    listener = await transport.listen({ host: '127.0.0.1', port: 0 }, { maxVqPayload: 1 << 20 }, (conn) => {
      conns.push(conn);
      conn.start({
        admitVq: () => 'accept',
        onCommand: (cmd, payload) => {
          const req = payload as VqRequestData;
          // Copied out: the request (and its frame) is released at once for the next command.
          seen.push({ id: cmd.readUInt16LE(2), payload: Buffer.from(req.readOutNow()!) });
          req.release();
        },
        onEnd: () => {},
        onClose: () => {},
      });
      dataListeners = ((conn as unknown as { socket: net.Socket }).socket).listenerCount('data');
    });
    const sizes = [0, 16, 64, 65, 4096 + 16, 100_000, 128 * 1024 + 16, 7, 1 << 20, 3];
    const payloads = sizes.map((n, i) => Buffer.from(Array.from({ length: n }, (_, k) => (k * 31 + i) & 0xff)));
    const stream = Buffer.concat(
      payloads.flatMap((p, i) => [encodeCommand({ opcode: Opcode.Vq, commandId: i + 1, outLength: p.length, inLength: 0 }), p]),
    );
    const socket = net.connect(listener.endpoint.port, '127.0.0.1');
    await new Promise<void>((resolve) => socket.once('connect', resolve));
    socket.setNoDelay(true);
    let seed = 11;
    for (let at = 0; at < stream.length; ) {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      const n = Math.min(stream.length - at, 1 + (seed % 150_000));
      socket.write(stream.subarray(at, at + n));
      at += n;
    }
    for (let i = 0; i < 500 && seen.length < sizes.length; i++) await new Promise((r) => setTimeout(r, 10));
    socket.destroy();
    expect((conns[0] as TcpTargetConnection).readsIntoScratch).toBe(true);
    expect(dataListeners).toBe(0);
    expect(seen.map((s) => s.id)).toEqual(sizes.map((_, i) => i + 1));
    for (let i = 0; i < sizes.length; i++) expect(seen[i]!.payload.equals(payloads[i]!)).toBe(true);
  });
});
