import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CONNECT_BODY_SIZE, Opcode, encodeConnectBody, statusName, type Command } from '../src/index.js';
import { VOF_F_AUTH, VOF_OP_AUTH_NEGOTIATE, VOF_OP_AUTH_REPLY, generateSecret } from '../src/protocol/auth.js';
import { VOF_OP_GET_INLINE_DATA_SIZE } from '../src/protocol/inline-data.js';
import { RawQueue } from './helpers/raw-queue.js';
import { TargetFixture } from './helpers/target-fixture.js';

/**
 * The rules of the target's opcode table (src/target/control-opcodes.ts), every opcode on every
 * kind of queue, as statuses on the wire: Connect only on an unbound queue, nothing else before
 * it; on a virtqueue only VQ commands and Disconnect; on the control queue of an instance that
 * must authenticate and has not, only the exchange's own commands, keepalives and the
 * transport's questions (docs/PROTOCOL.md "In-band authentication"), everything else EACLREJECTED.
 */

const st = (c: Buffer) => statusName(c.readUInt16LE(0));

/** One command of every opcode the table holds but Connect, Disconnect and the auth steps (ids from 10). */
const OPCODES: readonly Command[] = [
  { opcode: Opcode.Keepalive, commandId: 10 },
  { opcode: Opcode.GetFeature, commandId: 11, featureSelect: 0 },
  { opcode: Opcode.SetFeature, commandId: 12, featureSelect: 0, feature: 1n << VOF_F_AUTH },
  { opcode: Opcode.GetKeyedNumDescs, commandId: 13 },
  { opcode: VOF_OP_GET_INLINE_DATA_SIZE, commandId: 14 },
  { opcode: Opcode.GetVendorId, commandId: 15 },
  { opcode: Opcode.GetDeviceId, commandId: 16 },
  { opcode: Opcode.ResetDevice, commandId: 17 },
  { opcode: Opcode.GetStatus, commandId: 18 },
  { opcode: Opcode.SetStatus, commandId: 19, status: 1 },
  { opcode: Opcode.GetDeviceFeature, commandId: 20, featureSelect: 0 },
  { opcode: Opcode.SetDriverFeature, commandId: 21, featureSelect: 0, feature: 1n },
  { opcode: Opcode.GetVqSize, commandId: 22, vqIndex: 0 },
  { opcode: Opcode.GetConfig, commandId: 23, offset: 0, bytes: 8 },
  { opcode: Opcode.SetConfig, commandId: 24, offset: 0, bytes: 8, config: 0n },
];

describe('the opcode table: where each opcode may run', () => {
  let fx: TargetFixture;
  beforeAll(async () => {
    fx = new TargetFixture({ keepalive: { intervalMs: 0, timeoutMs: 120000 }, auth: { 'host-auth': generateSecret() } });
    await fx.addDisk('disk', 1024 * 1024);
    await fx.listen();
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('an unbound queue: every command but Connect is ENOCMD, and the queue stays usable for Connect', async () => {
    const q = await RawQueue.open(fx.port);
    try {
      for (const cmd of [...OPCODES, { opcode: Opcode.Disconnect, commandId: 30 } as Command]) {
        expect([cmd.opcode, st(await q.call(cmd))]).toEqual([cmd.opcode, 'ENOCMD']);
      }
      expect(st(await q.connectControl('disk', 'host-plain'))).toBe('SUCCESS');
    } finally {
      q.socket.destroy();
    }
  });

  it('a control queue before authentication: the exchange, keepalives and the transport’s questions run; device commands and VQ are EACLREJECTED', async () => {
    const q = await RawQueue.open(fx.port);
    try {
      expect(st(await q.connectControl('disk', 'host-auth'))).toBe('SUCCESS');
      const seen: [number, string][] = [];
      for (const cmd of OPCODES) seen.push([cmd.opcode, st(await q.call(cmd))]);
      seen.push([Opcode.Vq, st(await q.call({ opcode: Opcode.Vq, commandId: 25, outLength: 0, inLength: 0 }))]);
      seen.push([Opcode.Connect, st(await q.connectControl('disk', 'host-auth'))]);
      expect(seen).toEqual([
        [Opcode.Keepalive, 'SUCCESS'],
        [Opcode.GetFeature, 'SUCCESS'],
        [Opcode.SetFeature, 'SUCCESS'],
        // Allowed before authentication, then refused for its own reason: not negotiated on TCP.
        [Opcode.GetKeyedNumDescs, 'ENOCMD'],
        [VOF_OP_GET_INLINE_DATA_SIZE, 'ENOCMD'],
        [Opcode.GetVendorId, 'EACLREJECTED'],
        [Opcode.GetDeviceId, 'EACLREJECTED'],
        [Opcode.ResetDevice, 'EACLREJECTED'],
        [Opcode.GetStatus, 'EACLREJECTED'],
        [Opcode.SetStatus, 'EACLREJECTED'],
        [Opcode.GetDeviceFeature, 'EACLREJECTED'],
        [Opcode.SetDriverFeature, 'EACLREJECTED'],
        [Opcode.GetVqSize, 'EACLREJECTED'],
        [Opcode.GetConfig, 'EACLREJECTED'],
        [Opcode.SetConfig, 'EACLREJECTED'],
        [Opcode.Vq, 'EACLREJECTED'],
        [Opcode.Connect, 'ENOCMD'],
      ]);
      // Disconnect is always valid.
      expect(st(await q.call({ opcode: Opcode.Disconnect, commandId: 26 }))).toBe('SUCCESS');
    } finally {
      q.socket.destroy();
    }
  });

  it('a virtqueue: every control command, the auth steps and a second Connect are ENOCMD; Disconnect succeeds', async () => {
    const control = await RawQueue.open(fx.port);
    const vq = await RawQueue.open(fx.port);
    try {
      const c = await control.connectControl('disk', 'host-plain');
      expect(st(c)).toBe('SUCCESS');
      const connect = {
        opcode: Opcode.Connect,
        commandId: 1,
        deviceInstanceId: c.readUInt16LE(4),
        vqIndex: 0,
        length: CONNECT_BODY_SIZE,
        queueSize: 4,
      } as const;
      const body = encodeConnectBody({ ivqn: 'host-plain', tvqn: 'disk' });
      expect(st(await vq.call(connect, body))).toBe('SUCCESS');
      const auth: Command[] = [
        { opcode: VOF_OP_AUTH_NEGOTIATE, commandId: 27, data: Buffer.alloc(12) },
        { opcode: VOF_OP_AUTH_REPLY, commandId: 28, data: Buffer.alloc(12) },
      ];
      for (const cmd of [...OPCODES, ...auth]) expect([cmd.opcode, st(await vq.call(cmd))]).toEqual([cmd.opcode, 'ENOCMD']);
      expect(st(await vq.call({ ...connect, commandId: 29 }, body))).toBe('ENOCMD');
      expect(st(await vq.call({ opcode: Opcode.Disconnect, commandId: 30 }))).toBe('SUCCESS');
    } finally {
      vq.socket.destroy();
      control.socket.destroy();
    }
  });
});
