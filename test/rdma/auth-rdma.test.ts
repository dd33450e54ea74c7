import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockDevice, CONNECT_BODY_SIZE, Opcode, SECTOR_SIZE, VofAuthError, VofError, encodeConnectBody, statusName } from '../../src/index.js';
import {
  VOF_F_AUTH,
  VOF_OP_AUTH_NEGOTIATE,
  VOF_OP_AUTH_REPLY,
  generateSecret,
  initiatorResponse,
  parseSecret,
  targetResponse,
} from '../../src/protocol/auth.js';
import { RawRdmaQueue } from '../helpers/raw-rdma-queue.js';
import { TargetFixture } from '../helpers/target-fixture.js';
import { rdmaAddress } from './rdma-env.js';
import { waitFor } from '../helpers/wait-for.js';

const st = (c: Buffer) => statusName(c.readUInt16LE(0));
const quiet = { keepaliveIntervalMs: 0 };
const AUTH_BIT = 1n << VOF_F_AUTH;

/**
 * vof in-band authentication over RDMA (issue 17): the same 16-byte commands and completions as
 * over TCP, each in its own SEND; the gate before device commands and virtqueue Connects holds
 * on keyed queues too.
 */
describe('in-band authentication over RDMA', () => {
  let fx: TargetFixture;
  let base: string;
  let url: string;
  const secretA = generateSecret();
  const keyA = parseSecret(secretA);
  beforeAll(async () => {
    fx = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 120000 }, auth: { 'host-a': secretA } });
    await fx.addDisk('disk', 1024 * 1024);
    base = await fx.target.listen(`rdma://${rdmaAddress()}:0`);
    url = `${base}/disk`;
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('right secret: data written reads back', async () => {
    const disk = await BlockDevice.open(url, { ivqn: 'host-a', authSecret: secretA, maxQueues: 1, ...quiet });
    try {
      const data = Buffer.alloc(4 * SECTOR_SIZE, 0xa7);
      await disk.write(8192, data);
      expect(await disk.read(8192, data.length)).toEqual(data);
      expect(disk.device.ofFeatures & AUTH_BIT).toBe(AUTH_BIT);
    } finally {
      await disk.close();
    }
    expect(fx.logged(/^rdma:\/\/[^ ]+: instance \d+ \("host-a" → "disk"\) authenticated/)).toBe(true);
  });

  it('wrong secret: "authentication failed"; missing secret: EACLREJECTED', async () => {
    const wrong = await BlockDevice.open(url, { ivqn: 'host-a', authSecret: generateSecret(), maxQueues: 1, ...quiet }).catch((e: unknown) => e);
    expect(wrong).toBeInstanceOf(VofAuthError);
    expect((wrong as Error).message).toMatch(/authentication failed/);
    expect(fx.logged(/authentication failed: the response does not prove the secret/)).toBe(true);
    const missing = await BlockDevice.open(url, { ivqn: 'host-a', maxQueues: 1, ...quiet }).catch((e: unknown) => e);
    expect(missing).toBeInstanceOf(VofError);
    expect((missing as VofError).statusName).toBe('EACLREJECTED');
    await waitFor('the refused instances to go', () => fx.target.instanceCount === 0, 60000);
  });

  it('a virtqueue Connect before authentication is refused, after it accepted', async () => {
    const q = await RawRdmaQueue.open(base);
    const vqConnect = async (id: number) => {
      const v = await RawRdmaQueue.open(base);
      try {
        return st(
          await v.call(
            { opcode: Opcode.Connect, commandId: 1, deviceInstanceId: id, vqIndex: 0, length: CONNECT_BODY_SIZE, queueSize: 4 },
            encodeConnectBody({ ivqn: 'host-a', tvqn: 'disk' }),
          ),
        );
      } finally {
        await v.close();
      }
    };
    try {
      const c = await q.connectControl('disk', 'host-a');
      expect(st(c)).toBe('SUCCESS');
      const id = c.readUInt16LE(4);
      expect(st(await q.call({ opcode: Opcode.SetFeature, commandId: 2, featureSelect: 0, feature: AUTH_BIT }))).toBe('SUCCESS');
      expect(st(await q.call({ opcode: Opcode.GetVendorId, commandId: 3 }))).toBe('EACLREJECTED');
      expect(await vqConnect(id)).toBe('EACLREJECTED');

      const nonceI = Buffer.alloc(12, 0x11);
      const n = await q.call({ opcode: VOF_OP_AUTH_NEGOTIATE, commandId: 4, data: nonceI });
      expect(st(n)).toBe('SUCCESS');
      const t = { ivqn: 'host-a', tvqn: 'disk', instanceId: id, nonceI, nonceT: Buffer.from(n.subarray(4, 16)) };
      const r = await q.call({ opcode: VOF_OP_AUTH_REPLY, commandId: 5, data: initiatorResponse(keyA, t) });
      expect(st(r)).toBe('SUCCESS');
      expect(Buffer.from(r.subarray(4, 16))).toEqual(targetResponse(keyA, t));
      expect(st(await q.call({ opcode: Opcode.GetVendorId, commandId: 6 }))).toBe('SUCCESS');
      expect(await vqConnect(id)).toBe('SUCCESS');
    } finally {
      await q.close();
    }
  });
});
