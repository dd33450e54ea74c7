import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BlockDevice,
  CONNECT_BODY_SIZE,
  Opcode,
  SECTOR_SIZE,
  encodeConnectBody,
  encodeKeyedDescriptor,
  statusName,
} from '../../src/index.js';
import { RawQueue } from '../helpers/raw-queue.js';
import { RawRdmaQueue } from '../helpers/raw-rdma-queue.js';
import { TargetFixture } from '../helpers/target-fixture.js';
import { rdmaAddress } from './rdma-env.js';
import { pattern } from '../helpers/pattern.js';

const st = (c: Buffer) => statusName(c.readUInt16LE(0));
const quiet = { keepaliveIntervalMs: 0 };

/**
 * The issue-9 attack over RDMA: the binding rule is transport-independent, but the Connect
 * Body arrives inline in the SEND and the refused VQ command carries keyed descriptors, so the
 * path differs from TCP. A refused peer must not get an RDMA READ or WRITE out of the target.
 */
describe('allow-lists over RDMA: virtqueues cannot be borrowed', () => {
  let fx: TargetFixture;
  let rdmaUrl: string;
  let tcpUrl: string;
  beforeAll(async () => {
    fx = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 120000 } });
    await fx.addDisk('private', 1024 * 1024, { numQueues: 2, allow: ['host-a', 'host-b'] });
    rdmaUrl = await fx.target.listen(`rdma://${rdmaAddress()}:0`);
    tcpUrl = await fx.target.listen('tcp://127.0.0.1:0');
  });
  afterAll(async () => {
    await fx?.close();
  });

  it("mallory gets EACLREJECTED/EBADVQN/EBADDEV, never a queue of host-a's instance or a byte of her disk", async () => {
    const a = await BlockDevice.open(`${rdmaUrl}/private`, { ivqn: 'host-a', maxQueues: 1, ...quiet });
    try {
      const secret = pattern(4 * SECTOR_SIZE, 3);
      await a.write(0, secret);
      await a.flush();
      const id = a.device.instanceId;

      const ctl = await RawRdmaQueue.open(rdmaUrl);
      expect(st(await ctl.connectControl('private', 'mallory'))).toBe('EACLREJECTED');
      await ctl.close();

      // One connection per virtqueue: the fourth refused Connect on a connection closes it.
      let m!: RawRdmaQueue;
      const connect = (vqIndex: number, body?: { ivqn: string; tvqn: string }) =>
        m.call(
          { opcode: Opcode.Connect, commandId: 2, deviceInstanceId: id, vqIndex, length: body ? CONNECT_BODY_SIZE : 0, queueSize: 4 },
          body ? encodeConnectBody(body) : undefined,
        );
      for (const vq of [0, 1]) {
        if (m) await m.close();
        m = await RawRdmaQueue.open(rdmaUrl);
        expect(st(await connect(vq))).toBe('EBADVQN');
        expect(st(await connect(vq, { ivqn: 'mallory', tvqn: 'private' }))).toBe('EBADVQN');
        expect(st(await connect(vq, { ivqn: 'host-b', tvqn: 'private' }))).toBe('EBADVQN');
      }
      // A VQ read on the refused connection, with a descriptor the target could not even use:
      // ENOCMD, and no RDMA operation (a bad one would have broken the queue pair).
      const desc = Buffer.alloc(32);
      encodeKeyedDescriptor({ addr: 0x1000n, length: 16, key: 0x1234 }, desc, 0);
      encodeKeyedDescriptor({ addr: 0x2000n, length: 513, key: 0x1234 }, desc, 16);
      const read = await m.call({ opcode: Opcode.Vq, commandId: 3, outLength: 16, inLength: 513 }, desc);
      expect([st(read), read.readUInt32LE(4)]).toEqual(['ENOCMD', 0]);
      expect(st(await connect(1, { ivqn: 'mallory', tvqn: 'private' }))).toBe('EBADVQN'); // still alive: its fourth refusal
      await m.close();
      expect(fx.logged(/closing the queue: 4 refused Connects on one connection/)).toBe(true);

      // A matching body over another transport (TCP) does not reach an RDMA instance either.
      const t = await RawQueue.open(Number(tcpUrl.split(':').pop()));
      const c = await t.call(
        { opcode: Opcode.Connect, commandId: 4, deviceInstanceId: id, vqIndex: 1, length: CONNECT_BODY_SIZE, queueSize: 4 },
        encodeConnectBody({ ivqn: 'host-a', tvqn: 'private' }),
      );
      expect(st(c)).toBe('EBADDEV');
      await t.close();

      // host-a's free slot is hers, with her Connect Body.
      const own = await RawRdmaQueue.open(rdmaUrl);
      const ok = await own.call(
        { opcode: Opcode.Connect, commandId: 5, deviceInstanceId: id, vqIndex: 1, length: CONNECT_BODY_SIZE, queueSize: 4 },
        encodeConnectBody({ ivqn: 'host-a', tvqn: 'private' }),
      );
      expect(st(ok)).toBe('SUCCESS');
      await own.close();

      expect((await a.read(0, 8 * SECTOR_SIZE)).equals(Buffer.concat([secret, Buffer.alloc(4 * SECTOR_SIZE)]))).toBe(true);
      expect(fx.logged(new RegExp(`^rdma://[^ ]+: Connect → EBADVQN \\(0x1011\\): virtqueue 0 of instance ${id} refused: no Connect Body`))).toBe(true);
      expect(fx.logged(new RegExp(`^rdma://[^ ]+: virtqueue 1 of instance ${id} attached: "host-a" → "private"$`))).toBe(true);
    } finally {
      await a.close();
    }
  });
});
