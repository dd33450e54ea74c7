import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockDevice, Opcode, encodeCommand, statusName } from '../src/index.js';
import { TargetFixture } from './helpers/target-fixture.js';

/** A body-less virtqueue Connect from `localAddress`; resolves with the completion's status name. */
function bodylessVqConnect(port: number, localAddress: string, instanceId: number, vqIndex: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: '127.0.0.1', localAddress }, () => {
      s.write(encodeCommand({ opcode: Opcode.Connect, commandId: 7, deviceInstanceId: instanceId, vqIndex, length: 0, queueSize: 4 }));
    });
    s.once('data', (d: Buffer) => {
      resolve(statusName(d.readUInt16LE(0)));
      s.destroy();
    });
    s.once('error', reject);
  });
}

describe('target hardening', () => {
  let fx: TargetFixture;
  beforeAll(async () => {
    fx = new TargetFixture({ keepalive: { intervalMs: 50, timeoutMs: 300 } });
    await fx.addDisk('acl', 1024 * 1024, { numQueues: 3, allow: ['owner'] });
    await fx.listen();
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('a virtqueue Connect without a body from another host is EBADVQN: the allow-list cannot be bypassed by instance id', async () => {
    const d = await BlockDevice.open(`${fx.url}/acl`, { ivqn: 'owner', maxQueues: 1, keepaliveIntervalMs: 20 });
    try {
      const id = d.device.instanceId;
      expect(await bodylessVqConnect(fx.port, '127.0.0.2', id, 1)).toBe('EBADVQN');
      expect(fx.logged(/without a Connect Body from tcp:\/\/127\.0\.0\.2:\d+, not the control queue's host/)).toBe(true);
      // The control queue's own host may still reuse its body.
      expect(await bodylessVqConnect(fx.port, '127.0.0.1', id, 2)).toBe('SUCCESS');
    } finally {
      await d.close();
    }
  });

  it('virtqueue traffic keeps an instance alive when the initiator sends no keepalives', async () => {
    const d = await BlockDevice.open(`${fx.url}/acl`, { ivqn: 'owner', keepaliveIntervalMs: 0 });
    try {
      // Six target timeouts (300 ms) of nothing but block I/O.
      const end = Date.now() + 1800;
      let rounds = 0;
      while (Date.now() < end) {
        await d.read(0, 4096);
        rounds++;
      }
      expect(rounds).toBeGreaterThan(10);
      expect(fx.target.instanceCount).toBe(1);
      expect(fx.logged(/initiator silent/)).toBe(false);
    } finally {
      await d.close();
    }
  });
});
