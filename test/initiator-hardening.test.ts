import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import {
  BlkConfig,
  BlkRequestType,
  BlockDevice,
  FileBlockExport,
  Opcode,
  TcpTransport,
  VofConnectionError,
  encodeBareCompletion,
  encodeRequestHeader,
  encodeVqCompletion,
  silentLogger,
} from '../src/index.js';
import { withInstanceOverrides } from './helpers/device-proxy.js';
import { InitiatorQueue } from '../src/initiator/initiator-queue.js';
import { TargetFixture } from './helpers/target-fixture.js';

/**
 * Issue 10, finding 10: the initiator against a target that lies. A fake target (a bare TCP
 * server) answers the initiator's commands with whatever the test scripts.
 */

const MiB = 1024 * 1024;

interface FakeTarget {
  port: number;
  /** Bytes the initiator sent, as they arrived. */
  received: () => Buffer;
  /** Resolves when the initiator closed its end. */
  closed: Promise<void>;
  send: (b: Buffer) => void;
  stop: () => void;
}

/** A TCP server accepting one connection; `onCommand` sees each 16-byte command (payload skipped). */
async function fakeTarget(onCommand: (cmd: Buffer, t: FakeTarget) => void): Promise<FakeTarget> {
  let sock: net.Socket | null = null;
  let buf = Buffer.alloc(0);
  let all = Buffer.alloc(0);
  let closedResolve: () => void = () => {};
  const closed = new Promise<void>((r) => (closedResolve = r));
  const server = net.createServer((s) => {
    sock = s;
    s.on('data', (d: Buffer) => {
      all = Buffer.concat([all, d]);
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 16) {
        const cmd = buf.subarray(0, 16);
        const out = cmd.readUInt16LE(0) === Opcode.Vq ? cmd.readUInt32LE(8) : 0;
        if (buf.length < 16 + out) break;
        buf = buf.subarray(16 + out);
        onCommand(Buffer.from(cmd), t);
      }
    });
    s.on('error', () => {});
    s.on('close', () => closedResolve());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const t: FakeTarget = {
    port: (server.address() as net.AddressInfo).port,
    received: () => all,
    closed,
    send: (b) => sock?.write(b),
    stop: () => {
      sock?.destroy();
      server.close();
    },
  };
  return t;
}

let stops: Array<() => void> = [];
afterEach(() => {
  for (const s of stops) s();
  stops = [];
});

async function queueTo(t: FakeTarget): Promise<InitiatorQueue> {
  stops.push(t.stop);
  const conn = await new TcpTransport(silentLogger).connect({ host: '127.0.0.1', port: t.port }, { timeoutMs: 5000, maxVqPayload: 64 * MiB });
  return new InitiatorQueue(conn, 4);
}

const readRequest = (q: InitiatorQueue, into: Buffer) => q.vq([encodeRequestHeader(BlkRequestType.IN, 0n)], [into, Buffer.alloc(1)]);

describe('initiator against a bad target', () => {
  it('a VQ completion claiming more than in_length is refused before any payload is buffered', async () => {
    // Claims 60 MiB (under the 64 MiB transport limit) for a 513-byte read, then sends nothing.
    const t = await fakeTarget((cmd, t) => t.send(encodeVqCompletion(0, cmd.readUInt16LE(2), 60 * MiB)));
    const q = await queueTo(t);
    const err = await readRequest(q, Buffer.alloc(512)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VofConnectionError);
    expect(String(err)).toMatch(/claims 62914560 bytes written into 513 device-writable bytes/);
    await t.closed;
    expect(q.closed).toBe(true);
  });

  it('a completion for an id not in flight closes the queue instead of desynchronizing the stream', async () => {
    // Answers the read under another id, with a 513-byte payload that must not be parsed as
    // completions, then answers the real id.
    const t = await fakeTarget((cmd, t) => {
      const id = cmd.readUInt16LE(2);
      const fakeCompletions = Buffer.concat(Array.from({ length: 32 }, () => encodeBareCompletion(0, id)));
      t.send(Buffer.concat([encodeVqCompletion(0, id + 1, 513), fakeCompletions.subarray(0, 513)]));
    });
    const q = await queueTo(t);
    const into = Buffer.alloc(512, 0xaa);
    const err = await readRequest(q, into).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VofConnectionError);
    expect(String(err)).toMatch(/completion for command id 1, which is not in flight/);
    expect(into.every((x) => x === 0xaa)).toBe(true);
    await t.closed;
    await expect(q.call({ opcode: Opcode.GetStatus })).rejects.toBeInstanceOf(VofConnectionError);
  });

  it('a capacity above 2^53 bytes is refused clearly, not rounded', async () => {
    const fx = new TargetFixture();
    const path = await fx.addDisk('plain', MiB);
    const real = await FileBlockExport.open(path);
    // 2^55 sectors (2^64 bytes): only the capacity field lies.
    const huge = withInstanceOverrides(real, 'huge', (inner) => ({
      readConfig: (offset: number, bytes: number) => {
        const c = Buffer.alloc(BlkConfig.SIZE + 8);
        for (let i = 0; i < BlkConfig.SIZE; i++) c[i] = Number(inner.readConfig(i, 1));
        c.writeBigUInt64LE(1n << 55n, BlkConfig.capacity);
        return c.readBigUInt64LE(offset) & ((1n << BigInt(8 * bytes)) - 1n);
      },
    }));
    fx.target.addExport('huge', huge);
    await fx.listen();
    try {
      await expect(BlockDevice.open(`${fx.url}/huge`, { keepaliveIntervalMs: 0 })).rejects.toThrow(/capacity of 36028797018963968 sectors \(18446744073709551616 bytes\) exceeds 2\^53-1 bytes/);
      expect(fx.target.instanceCount).toBe(0);
    } finally {
      await fx.close();
    }
  });
});
