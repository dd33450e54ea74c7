import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BlockDevice, DeviceStatus, FileBlockExport, Opcode, VofError, encodeCommand, statusName, type DeviceExport, type DeviceModel } from '../src/index.js';
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

type HandleRequest = DeviceModel['handleRequest'];

/** `real`, with every instance's handleRequest replaced by `wrap(original)`. */
function withHandleRequest(real: FileBlockExport, description: string, wrap: (original: HandleRequest) => HandleRequest): DeviceExport {
  return {
    description,
    close: () => real.close(),
    createInstance(): DeviceModel {
      const inner = real.createInstance();
      const handleRequest = wrap(inner.handleRequest.bind(inner));
      return new Proxy(inner, {
        get(t, k) {
          if (k === 'handleRequest') return handleRequest;
          // The target prefers submitRequest: hide it so the wrapped handleRequest is called.
          if (k === 'submitRequest') return undefined;
          const v: unknown = Reflect.get(t, k, t);
          return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
        },
      });
    },
  };
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

  it('a virtqueue Connect without a body to an allow-listed export is refused from any host: the allow-list cannot be bypassed by instance id', async () => {
    const d = await BlockDevice.open(`${fx.url}/acl`, { ivqn: 'owner', maxQueues: 1, keepaliveIntervalMs: 20 });
    try {
      const id = d.device.instanceId;
      // Another host is not the instance's initiator: EBADDEV, as for an unused id.
      expect(await bodylessVqConnect(fx.port, '127.0.0.2', id, 1)).toBe('EBADDEV');
      // Not even from the control queue's own host (a co-located process proves nothing).
      expect(await bodylessVqConnect(fx.port, '127.0.0.1', id, 2)).toBe('EBADVQN');
      expect(fx.logged(/no Connect Body: required on an export with an allow-list/)).toBe(true);
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

  it('a device fault sets DEVICE_NEEDS_RESET, announces it as a config change, and only a reset clears it', async () => {
    const path = join(fx.dir, 'flaky.img');
    writeFileSync(path, Buffer.alloc(1024 * 1024));
    const real = await FileBlockExport.open(path);
    let failNext = false;
    const flaky = withHandleRequest(real, 'flaky', (original) => async (vq, readable, writable) => {
      if (failNext) {
        failNext = false;
        throw new Error('backing store vanished');
      }
      return original(vq, readable, writable);
    });
    fx.target.addExport('flaky', flaky, ['owner']);
    const d = await BlockDevice.open(`${fx.url}/flaky`, { ivqn: 'owner', keepaliveIntervalMs: 20 });
    try {
      await d.read(0, 512);
      const event = new Promise<number>((r) => d.device.once('configChange', r));
      failNext = true;
      const err = await d.read(0, 512).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(VofError);
      expect((err as VofError).statusName).toBe('ESTATUS');
      await event;
      expect((await d.device.getStatus()) & DeviceStatus.DEVICE_NEEDS_RESET).toBe(DeviceStatus.DEVICE_NEEDS_RESET);
      expect(fx.logged(/DEVICE_NEEDS_RESET: vq \d: backing store vanished/)).toBe(true);
      // No more requests until the driver resets the device.
      const refused = await d.read(0, 512).catch((e: unknown) => e);
      expect((refused as VofError).statusName).toBe('ESTATUS');
      await d.device.setStatus(0);
      expect(await d.device.getStatus()).toBe(0);
    } finally {
      await d.close();
    }
  });

  it('closing the target lets a request in flight finish first', async () => {
    const own = new TargetFixture();
    const path = join(own.dir, 'slow.img');
    writeFileSync(path, Buffer.alloc(1024 * 1024, 0x42));
    const real = await FileBlockExport.open(path);
    let started: () => void = () => {};
    const running = new Promise<void>((r) => (started = r));
    const slow = withHandleRequest(real, 'slow', (original) => async (vq, readable, writable) => {
      started();
      await new Promise((r) => setTimeout(r, 300));
      return original(vq, readable, writable);
    });
    own.target.addExport('slow', slow);
    await own.listen();
    const d = await BlockDevice.open(`${own.url}/slow`, { keepaliveIntervalMs: 0 });
    const read = d.read(0, 4096);
    await running;
    await own.close();
    expect((await read).every((x) => x === 0x42)).toBe(true);
    await d.close().catch(() => {});
  });
});
