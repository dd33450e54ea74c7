import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockDevice } from '../src/initiator/blk/block-device.js';
import { BlkConfig, BlkFeature } from '../src/protocol/virtio-blk.js';
import { createLogger } from '../src/util/log.js';
import type { IovaRegion, NativeVduseControl, NativeVduseDevice, VduseBinding, VqInfo } from '../src/vduse/vduse-binding.js';
import { VIRTIO_F_ACCESS_PLATFORM, VIRTIO_RING_F_EVENT_IDX, VduseBlockDevice, vduseRemoteFeatures } from '../src/vduse/vduse-device.js';
import { TargetFixture } from './helpers/target-fixture.js';
import { waitFor } from './helpers/wait-for.js';

/**
 * VduseBlockDevice against a fake kernel (the binding replaced by an in-memory one): the VDUSE
 * messages (SET_STATUS, GET_VQ_STATE, UPDATE_IOTLB, reset), a virtio-blk read through a split
 * ring laid out in "IOVA regions", and a driver that breaks the ring rules (the queue stops, an
 * escaped log line, nothing read outside the regions, no crash). The real kernel is in
 * test/rdma/vduse-rdma.test.ts.
 */

const SIZE = 8; // queue size
const RING_IOVA = 0x10000;
const DATA_IOVA = 0x100000;
const DESC = RING_IOVA;
const AVAIL = RING_IOVA + 16 * SIZE;
const USED = RING_IOVA + 0x1000;

class FakeKernel {
  regions: Array<{ start: number; last: number; buf: Buffer }> = [];
  requests: Buffer[] = [];
  responses: Buffer[] = [];
  created: { name: string; features: bigint; vqNum: number; config: Buffer } | null = null;
  onReady: ((kind: number, index: number) => void) | null = null;
  kicks = new Set<number>();
  irqs = 0;
  mapCalls = 0;
  features = 0n;
  destroyed = false;
  configWrites: Array<{ offset: number; bytes: Buffer }> = [];
  configIrqs = 0;
  ring = Buffer.alloc(0x2000);
  data = Buffer.alloc(0x10000);

  constructor() {
    this.regions.push({ start: RING_IOVA, last: RING_IOVA + this.ring.length - 1, buf: this.ring });
    this.regions.push({ start: DATA_IOVA, last: DATA_IOVA + this.data.length - 1, buf: this.data });
  }

  binding(): VduseBinding {
    const k = this;
    class Control implements NativeVduseControl {
      createDevice(name: string, features: bigint, vqNum: number, _align: number, config: Buffer): void {
        k.created = { name, features, vqNum, config: Buffer.from(config) };
      }
      destroyDevice(): number {
        k.destroyed = true;
        return 0;
      }
      close(): void {}
    }
    class Device implements NativeVduseDevice {
      constructor(_name: string, onReady: (kind: number, index: number) => void) {
        k.onReady = onReady;
      }
      setupVq(): void {}
      vqInfo(index: number): VqInfo {
        return { num: SIZE, descAddr: DESC, driverAddr: AVAIL, deviceAddr: USED, availIdx: 0, ready: index === 0 };
      }
      setupKick(index: number): void {
        k.kicks.add(index);
      }
      clearKick(index: number): void {
        k.kicks.delete(index);
      }
      injectIrq(): number {
        k.irqs++;
        return 0;
      }
      readRequest(buf: Buffer): number {
        const r = k.requests.shift();
        if (!r) return 0;
        r.copy(buf);
        return r.length;
      }
      writeResponse(buf: Buffer): void {
        k.responses.push(Buffer.from(buf));
      }
      setConfig(offset: number, bytes: Buffer): void {
        k.configWrites.push({ offset, bytes: Buffer.from(bytes) });
      }
      injectConfigIrq(): number {
        k.configIrqs++;
        return 0;
      }
      getFeatures(): bigint {
        return k.features;
      }
      mapIova(start: number, last: number): IovaRegion | null {
        k.mapCalls++;
        const r = k.regions.find((x) => x.start <= last && x.last >= start);
        return r ? { mapping: r.buf, start: r.start, last: r.last, perm: 3 } : null;
      }
      close(): void {}
    }
    return Object.assign(Object.create(null) as object, {
      VduseControl: Control,
      VduseDevice: Object.assign(Device, { requestBytes: 152, responseBytes: 152 }),
      vduseMappings: () => 0,
    }) as VduseBinding;
  }

  /** Sends one VDUSE message and returns the response to it. */
  async message(type: number, fill: (b: Buffer) => void): Promise<Buffer> {
    const req = Buffer.alloc(152);
    const id = 100 + this.responses.length + this.requests.length;
    req.writeUInt32LE(type, 0);
    req.writeUInt32LE(id, 4);
    fill(req);
    this.requests.push(req);
    this.onReady!(0, 0);
    for (let i = 0; i < 500; i++) {
      const r = this.responses.find((x) => x.readUInt32LE(0) === id);
      if (r) return r;
      await new Promise((res) => setTimeout(res, 10));
    }
    throw new Error(`no response to message ${type}`);
  }

  desc(i: number, addr: number, len: number, flags: number, next: number): void {
    const o = i * 16;
    this.ring.writeBigUInt64LE(BigInt(addr), o);
    this.ring.writeUInt32LE(len, o + 8);
    this.ring.writeUInt16LE(flags, o + 12);
    this.ring.writeUInt16LE(next, o + 14);
  }

  /** Makes `head` available and kicks. */
  offer(head: number): void {
    const a = AVAIL - RING_IOVA;
    const idx = this.ring.readUInt16LE(a + 2);
    this.ring.writeUInt16LE(head, a + 4 + 2 * (idx % SIZE));
    this.ring.writeUInt16LE((idx + 1) & 0xffff, a + 2);
    this.onReady!(1, 0);
  }

  /**
   * A virtio-blk read of 4 KiB at `sector` as chain 0 (header → 4 KiB data → status byte),
   * made available and kicked; the data and status bytes are poisoned first.
   */
  offerRead(sector: bigint): void {
    this.data.writeUInt32LE(0, 0); // IN
    this.data.writeBigUInt64LE(sector, 8);
    this.data.fill(0xee, 0x1000, 0x2001);
    this.desc(0, DATA_IOVA, 16, NEXT, 1);
    this.desc(1, DATA_IOVA + 0x1000, 4096, NEXT | WRITE, 2);
    this.desc(2, DATA_IOVA + 0x2000, 1, WRITE, 0);
    this.offer(0);
  }

  get usedIdx(): number {
    return this.ring.readUInt16LE(USED - RING_IOVA + 2);
  }

  usedElem(i: number): { id: number; len: number } {
    const o = USED - RING_IOVA + 4 + 8 * (i % SIZE);
    return { id: this.ring.readUInt32LE(o), len: this.ring.readUInt32LE(o + 4) };
  }

  async waitUsed(n: number): Promise<void> {
    await waitFor(`used index ${n}`, () => this.usedIdx >= n, 5000, 10);
    expect(this.usedIdx).toBe(n);
  }
}

const NEXT = 1;
const WRITE = 2;

describe('VduseBlockDevice against a fake kernel', () => {
  const fx = new TargetFixture();
  const logs: string[] = [];
  const log = createLogger('debug', (_l, m) => logs.push(m));
  const kernel = new FakeKernel();
  let disk: BlockDevice;
  let device: VduseBlockDevice;
  const pattern = (b: Buffer) => {
    for (let i = 0; i < b.length; i++) b[i] = (i * 7 + 3) & 0xff;
  };

  beforeAll(async () => {
    await fx.addDisk('d', 1024 * 1024, { fill: pattern });
    const url = `${await fx.listen()}/d`;
    disk = await BlockDevice.open(url, { negotiateFeatures: vduseRemoteFeatures, log, keepaliveIntervalMs: 0 });
    device = await VduseBlockDevice.create(disk, { name: 'fake0', log, binding: kernel.binding() });
  });

  afterAll(async () => {
    await device?.close();
    await disk?.close();
    await fx.close();
  });

  it('offers the remote features VDUSE accepts, its config space, and ACCESS_PLATFORM', () => {
    const c = kernel.created!;
    expect(c.name).toBe('fake0');
    expect(c.vqNum).toBe(disk.numQueues);
    expect(c.features & (1n << VIRTIO_F_ACCESS_PLATFORM)).not.toBe(0n);
    expect(c.features & (1n << BlkFeature.CONFIG_WCE)).toBe(0n);
    expect(c.features & (1n << BlkFeature.FLUSH)).toBe(disk.device.hasFeature(BlkFeature.FLUSH) ? 1n << BlkFeature.FLUSH : 0n);
    expect(c.config.readBigUInt64LE(BlkConfig.capacity)).toBe(2048n);
  });

  it('DRIVER_OK starts the ready rings; a virtio-blk read comes back with the remote data, used length and an interrupt', async () => {
    kernel.features = 1n << VIRTIO_RING_F_EVENT_IDX;
    const r = await kernel.message(1, (b) => b.writeUInt8(0x0f, 24)); // ACK|DRIVER|DRIVER_OK|FEATURES_OK
    expect(r.readUInt32LE(4)).toBe(0);
    expect([...kernel.kicks]).toEqual([0]);
    const irqs = kernel.irqs;
    kernel.offerRead(8n);
    await kernel.waitUsed(1);
    expect(kernel.usedElem(0)).toEqual({ id: 0, len: 4097 });
    const want = Buffer.alloc(8192);
    pattern(want);
    expect(kernel.data.subarray(0x1000, 0x2000).equals(want.subarray(4096, 8192))).toBe(true);
    expect(kernel.data[0x2000]).toBe(0); // VIRTIO_BLK_S_OK
    expect(kernel.irqs).toBeGreaterThan(irqs);
    // GET_VQ_STATE: the next available entry the device takes.
    const s = await kernel.message(0, (b) => b.writeUInt32LE(0, 24));
    expect([s.readUInt32LE(4), s.readUInt32LE(24), s.readUInt16LE(28)]).toEqual([0, 0, 1]);
  });

  it('UPDATE_IOTLB drops the regions; the next use maps them again', async () => {
    const calls = kernel.mapCalls;
    const r = await kernel.message(2, (b) => {
      b.writeBigUInt64LE(0n, 24);
      b.writeBigUInt64LE(0xffffffffffffffffn, 32);
    });
    expect(r.readUInt32LE(4)).toBe(0);
    kernel.data.fill(0, 0x2000, 0x2001);
    kernel.offer(0);
    await kernel.waitUsed(2);
    expect(kernel.mapCalls).toBeGreaterThan(calls);
  });

  it('a chain outside the IOVA regions stops the queue with an escaped log line; the process goes on', async () => {
    kernel.desc(0, 0x7f000000, 16, NEXT, 1); // mapped nowhere
    kernel.desc(1, DATA_IOVA + 0x1000, 4096, WRITE, 0);
    kernel.offer(0);
    await waitFor('the virtqueue to stop', () => logs.some((l) => /virtqueue 0 stopped/.test(l)), 2000, 10);
    const line = logs.find((l) => /virtqueue 0 stopped/.test(l));
    expect(line).toBeDefined();
    expect(line).not.toMatch(/\n/);
    expect(kernel.usedIdx).toBe(2); // nothing pushed
    // Stopped: a valid chain after it is not served until a reset.
    kernel.desc(0, DATA_IOVA, 16, NEXT, 1);
    kernel.desc(1, DATA_IOVA + 0x1000, 4096, NEXT | WRITE, 2);
    kernel.offer(0);
    await new Promise((res) => setTimeout(res, 100));
    expect(kernel.usedIdx).toBe(2);
  });

  it('a reset (status 0) answers OK and gives back the kick eventfds; DRIVER_OK serves again', async () => {
    const r = await kernel.message(1, (b) => b.writeUInt8(0, 24));
    expect(r.readUInt32LE(4)).toBe(0);
    expect(kernel.kicks.size).toBe(0);
    kernel.ring.fill(0);
    const again = await kernel.message(1, (b) => b.writeUInt8(0x0f, 24));
    expect(again.readUInt32LE(4)).toBe(0);
    kernel.offerRead(0n);
    await kernel.waitUsed(1);
    const want = Buffer.alloc(4096);
    pattern(want);
    expect(kernel.data.subarray(0x1000, 0x2000).equals(want)).toBe(true);
  });

  it('a reset, then rings in new memory at the same IOVA (virtio_vdpa frees and reallocates them with no UPDATE_IOTLB): DRIVER_OK serves the new rings', async () => {
    // What the kernel does at a driver unbind/bind: the old rings' pages go back at the reset,
    // the new rings come from fresh pages that may sit at the same IOVA, and VDUSE tells user
    // space nothing (UPDATE_IOTLB is vhost-vdpa's). A device that kept its old mapping reads the
    // stale ring: the driver's new requests are never served (seen as a hang in the VM).
    const r = await kernel.message(1, (b) => b.writeUInt8(0, 24));
    expect(r.readUInt32LE(4)).toBe(0);
    const stale = kernel.ring;
    kernel.ring = Buffer.alloc(stale.length);
    kernel.regions[0]!.buf = kernel.ring;
    // The stale ring says "entry 0 is head 0 again", which the device would refuse as in flight
    // or ignore; only the new ring is right.
    stale.fill(0xff);
    const again = await kernel.message(1, (b) => b.writeUInt8(0x0f, 24));
    expect(again.readUInt32LE(4)).toBe(0);
    kernel.offerRead(8n);
    await kernel.waitUsed(1);
    expect(kernel.usedElem(0)).toEqual({ id: 0, len: 4097 });
    const want = Buffer.alloc(8192);
    pattern(want);
    expect(kernel.data.subarray(0x1000, 0x2000).equals(want.subarray(4096))).toBe(true);
    expect(logs.filter((l) => /stopped/.test(l))).toHaveLength(1); // only the earlier bad chain's
  });

  it('a config change from the target: the config space is read again, written to VDUSE, a config interrupt injected', async () => {
    // The target's Config Change event, as RemoteDevice reports it.
    disk.device.emit('configChange', 7);
    await waitFor('a config interrupt', () => kernel.configIrqs > 0, 3000, 10);
    expect(kernel.configIrqs).toBe(1);
    expect(kernel.configWrites).toHaveLength(1);
    const w = kernel.configWrites[0]!;
    expect(w.offset).toBe(0);
    expect(w.bytes.length).toBe(BlkConfig.SIZE);
    expect(w.bytes.readBigUInt64LE(BlkConfig.capacity)).toBe(2048n);
    expect(logs.some((l) => /config changed \(capacity 2048 sectors\)$/.test(l))).toBe(true);
  });
});

/**
 * --bind vhost: the IOVA regions are the VM's memory, where its requests' bytes lie, so each is
 * pinned (RemoteDevice.pinMemory: registered on every rdma:// queue) while it is mapped, and
 * released when VDUSE drops it (UPDATE_IOTLB), at a reset and at close. Over TCP a pin registers
 * nothing, but the device's bookkeeping is the same, and that is what this checks; the VM has no
 * QEMU to hand /dev/vhost-vdpa-N to, so the RDMA side of it is not tested there.
 */
describe('VduseBlockDevice --bind vhost pins each mapped IOVA region', () => {
  const fx = new TargetFixture();
  const log = createLogger('silent', () => {});
  const kernel = new FakeKernel();
  let disk: BlockDevice;
  let device: VduseBlockDevice | undefined;

  beforeAll(async () => {
    await fx.addDisk('v', 1024 * 1024);
    const url = `${await fx.listen()}/v`;
    disk = await BlockDevice.open(url, { negotiateFeatures: vduseRemoteFeatures, log, keepaliveIntervalMs: 0 });
    device = await VduseBlockDevice.create(disk, { name: 'fakevh', log, binding: kernel.binding(), bind: 'vhost' });
  });

  afterAll(async () => {
    await device?.close();
    await disk?.close();
    await fx.close();
  });

  async function readOnce(expectUsed: number): Promise<void> {
    kernel.offerRead(0n);
    await kernel.waitUsed(expectUsed);
  }

  it('pinned while mapped; UPDATE_IOTLB, a reset and close release them', async () => {
    const pinned = disk.device.pinnedMemory;
    expect(pinned.size).toBe(0);
    expect((await kernel.message(1, (b) => b.writeUInt8(0x0f, 24))).readUInt32LE(4)).toBe(0);
    await readOnce(1);
    // The ring's region and the data's: both mapped on first use, both pinned.
    expect(pinned.size).toBe(2);
    // UPDATE_IOTLB for the data region alone: its pin goes, the ring's stays.
    const r = await kernel.message(2, (b) => {
      b.writeBigUInt64LE(BigInt(DATA_IOVA), 24);
      b.writeBigUInt64LE(BigInt(DATA_IOVA + 0xffff), 32);
    });
    expect(r.readUInt32LE(4)).toBe(0);
    expect(pinned.size).toBe(1);
    // Used again: mapped and pinned again.
    await readOnce(2);
    expect(pinned.size).toBe(2);
    // A reset drops every mapping, and every pin with it.
    expect((await kernel.message(1, (b) => b.writeUInt8(0, 24))).readUInt32LE(4)).toBe(0);
    expect(pinned.size).toBe(0);
    kernel.ring.fill(0);
    expect((await kernel.message(1, (b) => b.writeUInt8(0x0f, 24))).readUInt32LE(4)).toBe(0);
    await readOnce(1);
    expect(pinned.size).toBe(2);
    await device!.close();
    device = undefined;
    expect(pinned.size).toBe(0);
  });
});
