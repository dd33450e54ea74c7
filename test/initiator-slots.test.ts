import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { BlockDevice, BlockIoError, FileBlockExport, VofConnectionError, silentLogger } from '../src/index.js';
import { withInstanceOverrides } from './helpers/device-proxy.js';
import { TargetFixture } from './helpers/target-fixture.js';

/**
 * Issue 18, the initiator's requests on pre-allocated slots (IoSlot on the device,
 * BlockRequest on the disk): slots are reused request after request, and a request in any
 * state (in flight at the target, waiting for a queue slot, held while reconnecting) ends the
 * right way when the path fails, the device is lost or closed: with the right error or, after
 * a reconnect, with its data; and it leaves no slot behind.
 */

const BLOCK = 4096;
const DISK = 64 * BLOCK;

/** A TCP proxy to the target that can cut every connection and refuse new ones. */
async function cuttableProxy(targetPort: number) {
  const sockets = new Set<net.Socket>();
  let refusing = false;
  const server = net.createServer((client) => {
    if (refusing) return void client.destroy();
    const up = net.connect(targetPort, '127.0.0.1');
    for (const s of [client, up]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {});
    }
    client.pipe(up);
    up.pipe(client);
    client.on('close', () => up.destroy());
    up.on('close', () => client.destroy());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    port: (server.address() as net.AddressInfo).port,
    cut: () => {
      for (const s of sockets) s.destroy();
    },
    refuse: (on: boolean) => (refusing = on),
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

/** Each block begins with its own offset. */
const fill = (b: Buffer) => {
  for (let i = 0; i < b.length; i += BLOCK) b.writeUInt32LE(i, i);
};

/**
 * A disk whose requests wait for the gate while it is closed (they stay in flight at the
 * target), and that answers IOERR for reads at `ioErrorAt`.
 */
async function gatedTarget() {
  const fx = new TargetFixture({ log: silentLogger });
  const path = await fx.addDisk('plain', DISK, { fill });
  let open: () => void = () => {};
  let gate: Promise<void> = Promise.resolve();
  const ioErrorAt = BLOCK * 7;
  fx.target.addExport(
    'gated',
    withInstanceOverrides(await FileBlockExport.open(path), 'gated', (inner) => ({
      handleRequest: async (vq, readable, writable, cancel) => {
        await gate;
        if (readable.readUInt32LE(0) === 0 && Number(readable.readBigUInt64LE(8)) * 512 === ioErrorAt) {
          writable[writable.length - 1] = 1; // VIRTIO_BLK_S_IOERR
          return writable.length;
        }
        return inner.handleRequest(vq, readable, writable, cancel);
      },
    })),
  );
  await fx.listen();
  const proxy = await cuttableProxy(fx.port);
  cleanups.push(async () => {
    open();
    await proxy.close();
    await fx.close();
  });
  return {
    url: `tcp://127.0.0.1:${proxy.port}/gated`,
    proxy,
    ioErrorAt,
    close: () => (gate = new Promise((r) => (open = r))),
    open: () => open(),
  };
}

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** Every slot made is free again, on both layers, and no more were made than `atMost`. */
function expectAllFree(d: BlockDevice, atMost: number): void {
  for (const slots of [d.requestSlots, d.device.requestSlots]) {
    expect(slots.free).toBe(slots.made);
    expect(slots.made).toBeLessThanOrEqual(atMost);
  }
}

/** Settles with the error, or null. */
const outcome = (p: Promise<unknown>) => p.then(() => null, (e: unknown) => e);

/** submitRead as a promise that records whether its callback came inside the call. */
function callbackRead(d: BlockDevice, at: number, buf: Buffer): { sync: () => boolean; done: Promise<Error | null> } {
  let inside = true;
  let sync = false;
  const done = new Promise<Error | null>((resolve) => {
    d.submitRead(at, buf, (err) => {
      sync = inside;
      resolve(err);
    });
  });
  inside = false;
  return { sync: () => sync, done };
}

describe('initiator request slots', () => {
  it('are reused: 2000 reads, 4 at a time through read() and submitRead(), make at most 4 slots per layer and read the right blocks', async () => {
    const t = await gatedTarget();
    const d = await BlockDevice.open(t.url, { log: silentLogger, maxQueues: 1 });
    cleanups.push(() => d.close());
    let next = 0;
    const worker = async (k: number) => {
      const buf = Buffer.alloc(BLOCK);
      while (next < 2000) {
        const at = ((next++ * 5) % 64) * BLOCK;
        if (at === t.ioErrorAt) continue;
        if (k % 2 === 0) await d.read(at, buf);
        else {
          const r = callbackRead(d, at, buf);
          expect(await r.done).toBeNull();
          expect(r.sync()).toBe(false);
        }
        expect(buf.readUInt32LE(0)).toBe(at);
      }
    };
    await Promise.all([0, 1, 2, 3].map(worker));
    expectAllFree(d, 4);
    expect(d.device.requestSlots.made).toBeGreaterThan(0);
  });

  it('a device error (IOERR) fails that request with BlockIoError and frees its slot for the next', async () => {
    const t = await gatedTarget();
    const d = await BlockDevice.open(t.url, { log: silentLogger, maxQueues: 1 });
    cleanups.push(() => d.close());
    const err = await outcome(d.read(t.ioErrorAt, BLOCK));
    expect(err).toBeInstanceOf(BlockIoError);
    expect((err as Error).message).toBe(`read at ${t.ioErrorAt}: IOERR`);
    const r = callbackRead(d, t.ioErrorAt, Buffer.alloc(BLOCK));
    expect(await r.done).toBeInstanceOf(BlockIoError);
    expect((await d.read(0, BLOCK)).readUInt32LE(0)).toBe(0);
    expectAllFree(d, 1);
  });

  it('without reconnect, a path failure fails requests in flight and waiting for a queue slot with VofConnectionError, and frees every slot', async () => {
    const t = await gatedTarget();
    const d = await BlockDevice.open(t.url, { log: silentLogger, maxQueues: 1, queueSize: 2 });
    t.close();
    // 2 in flight at the target (the gate holds them), 4 waiting for one of the 2 command ids.
    const reads = Array.from({ length: 5 }, (_, i) => outcome(d.read(i * BLOCK, BLOCK)));
    const cb = callbackRead(d, 5 * BLOCK, Buffer.alloc(BLOCK));
    await new Promise((r) => setTimeout(r, 50));
    expect(d.device.queues[0]!.inFlight).toBe(2);
    expect(cb.sync()).toBe(false);
    const lost = new Promise<Error>((r) => d.device.once('lost', r));
    t.proxy.cut();
    expect(await lost).toBeInstanceOf(VofConnectionError);
    for (const e of await Promise.all(reads)) expect(e).toBeInstanceOf(VofConnectionError);
    expect(await cb.done).toBeInstanceOf(VofConnectionError);
    expectAllFree(d, 6);
    // The lost device fails new requests the same way, on a free slot, not inside the call.
    const after = callbackRead(d, 0, Buffer.alloc(BLOCK));
    expect(await after.done).toBeInstanceOf(VofConnectionError);
    expect(after.sync()).toBe(false);
    await expect(d.read(0, BLOCK)).rejects.toBeInstanceOf(VofConnectionError);
    expectAllFree(d, 6);
    await d.close();
  });

  it('with reconnect, requests in flight, waiting, and held while reconnecting all complete with their data after the reconnect', async () => {
    const t = await gatedTarget();
    const d = await BlockDevice.open(t.url, { log: silentLogger, maxQueues: 1, queueSize: 2, ctrlLossTimeoutMs: 30_000, reconnectDelayMs: 50 });
    cleanups.push(() => d.close());
    t.close();
    const bufs = Array.from({ length: 6 }, () => Buffer.alloc(BLOCK));
    const reads = bufs.slice(0, 5).map((b, i) => d.read((i + 1) * BLOCK, b));
    const cb = callbackRead(d, 6 * BLOCK, bufs[5]!);
    await new Promise((r) => setTimeout(r, 50));
    expect(d.device.queues[0]!.inFlight).toBe(2);
    const reconnected = new Promise<void>((r) => d.device.once('reconnected', () => r()));
    t.proxy.refuse(true);
    t.proxy.cut();
    await new Promise<void>((r) => (d.device.state === 'reconnecting' ? r() : d.device.once('disconnected', () => r())));
    // Held while reconnecting: submitted now, sent once the device is back.
    const held = d.read(9 * BLOCK, BLOCK);
    const heldCb = callbackRead(d, 10 * BLOCK, Buffer.alloc(BLOCK));
    t.open();
    t.proxy.refuse(false);
    await reconnected;
    await Promise.all(reads);
    expect(await cb.done).toBeNull();
    bufs.forEach((b, i) => expect(b.readUInt32LE(0)).toBe((i + 1) * BLOCK));
    expect((await held).readUInt32LE(0)).toBe(9 * BLOCK);
    expect(await heldCb.done).toBeNull();
    expect(d.device.resubmittedRequests).toBe(6);
    expectAllFree(d, 8);
  });

  it('close() while reconnecting fails held and resubmitted requests with VofConnectionError, and frees every slot', async () => {
    const t = await gatedTarget();
    const d = await BlockDevice.open(t.url, { log: silentLogger, maxQueues: 1, ctrlLossTimeoutMs: -1, reconnectDelayMs: 50 });
    t.close();
    const inFlight = outcome(d.read(0, BLOCK));
    await new Promise((r) => setTimeout(r, 50));
    t.proxy.refuse(true);
    t.proxy.cut();
    await new Promise<void>((r) => (d.device.state === 'reconnecting' ? r() : d.device.once('disconnected', () => r())));
    const held = outcome(d.read(BLOCK, BLOCK));
    const heldCb = callbackRead(d, 2 * BLOCK, Buffer.alloc(BLOCK));
    await d.close();
    expect(await inFlight).toBeInstanceOf(VofConnectionError);
    expect(await held).toBeInstanceOf(VofConnectionError);
    expect(await heldCb.done).toBeInstanceOf(VofConnectionError);
    expectAllFree(d, 3);
  });
});
