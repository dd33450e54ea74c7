import { promises as fsp, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import {
  BlkConfig,
  BlkFeature,
  BlkRequestType,
  BlockDevice,
  FileBlockExport,
  RemoteDevice,
  VIRTIO_F_VERSION_1,
  encodeRequestHeader,
  encodeSegment,
  type DeviceModel,
} from '../src/index.js';
import { TargetFixture } from './helpers/target-fixture.js';
import type { IoDone } from '../src/target/blk/uring-ring.js';

const MiB = 1024 * 1024;
const bit = (b: bigint) => 1n << b;
const BASE = bit(VIRTIO_F_VERSION_1);
const FLUSH = bit(BlkFeature.FLUSH);
const WCE = bit(BlkFeature.CONFIG_WCE);
const WZ = bit(BlkFeature.WRITE_ZEROES);

/**
 * Run one request the way the target does: into a transport-supplied writable buffer of
 * `inLength` bytes (filled with stale 0xee bytes first); returns the bytes the device wrote.
 */
async function run(inst: DeviceModel, readable: Buffer, inLength: number): Promise<Buffer> {
  const writable = Buffer.alloc(inLength, 0xee);
  const n = await inst.handleRequest(0, readable, writable);
  return writable.subarray(0, n);
}

/** Status byte of a request: the last device-written byte. */
function statusOf(written: Buffer): number {
  return written[written.length - 1]!;
}

type FileHandle = fsp.FileHandle;

describe('FileBlockExport: durability (FLUSH and writethrough)', () => {
  const fx = new TargetFixture(); // for its temp dir
  let rwPath: string;
  let roPath: string;
  let rw: FileBlockExport;
  let ro: FileBlockExport;
  let fileHandleProto: FileHandle;

  beforeAll(async () => {
    rwPath = join(fx.dir, 'rw.img');
    roPath = join(fx.dir, 'ro.img');
    await fsp.writeFile(rwPath, Buffer.alloc(MiB));
    await fsp.writeFile(roPath, Buffer.alloc(MiB, 0x5a));
    rw = await FileBlockExport.open(rwPath, { numQueues: 2 });
    ro = await FileBlockExport.open(roPath, { readOnly: true });
    const probe = await fsp.open(rwPath, 'r');
    fileHandleProto = Object.getPrototypeOf(probe) as FileHandle;
    await probe.close();
  });
  afterEach(() => {
    vi.restoreAllMocks();
  });
  afterAll(async () => {
    await rw?.close();
    await ro?.close();
    await fx.close();
  });

  function instance(exp: FileBlockExport, features: bigint): DeviceModel {
    const inst = exp.createInstance();
    inst.setDriverFeatures(features);
    return inst;
  }
  const out = (sector: bigint, data: Buffer) => Buffer.concat([encodeRequestHeader(BlkRequestType.OUT, sector), data]);
  const flush = () => encodeRequestHeader(BlkRequestType.FLUSH, 0n);

  it('FLUSH fdatasyncs the backing file before it completes', async () => {
    const { file, io } = rw as unknown as { file: FileHandle; io: { backend: string; submitDatasync(done: IoDone): void; fd?: number } };
    const ioDatasync = vi.spyOn(io, 'submitDatasync');
    const handleDatasync = vi.spyOn(fileHandleProto, 'datasync');
    const sync = vi.spyOn(FileBlockExport.prototype, 'submitSync');
    const inst = instance(rw, BASE | FLUSH);
    const written = await run(inst, flush(), 1);
    expect([...written]).toEqual([0]);
    expect(sync).toHaveBeenCalledTimes(1);
    expect(sync.mock.contexts[0]).toBe(rw);
    // And it is the export's own file descriptor that got fdatasync'd, by the backend in use.
    expect(ioDatasync).toHaveBeenCalledTimes(1);
    expect(rw.fileIoBackend).toBe(io.backend);
    if (io.backend === 'libuv') {
      expect(handleDatasync).toHaveBeenCalledTimes(1);
      expect(handleDatasync.mock.contexts[0]).toBe(file);
    } else {
      expect(handleDatasync).not.toHaveBeenCalled();
      expect(io.fd).toBe(file.fd);
    }
  });

  it('FLUSH does not complete until the sync has', async () => {
    let release!: () => void;
    const sync = vi.spyOn(FileBlockExport.prototype, 'submitSync').mockImplementation((d) => (release = () => d.ioDone(null)));
    const inst = instance(rw, BASE | FLUSH);
    let done = false;
    const p = run(inst, flush(), 1).then((w) => {
      done = true;
      return w;
    });
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    expect(sync).toHaveBeenCalledTimes(1);
    expect(done).toBe(false);
    release();
    expect(statusOf(await p)).toBe(0);
    expect(done).toBe(true);
  });

  it('a failing sync turns FLUSH into IOERR', async () => {
    vi.spyOn(FileBlockExport.prototype, 'submitSync').mockImplementation((d) => d.ioDone(new Error('EIO')));
    const inst = instance(rw, BASE | FLUSH);
    expect(statusOf(await run(inst, flush(), 1))).toBe(1);
  });

  it('OUT without VIRTIO_BLK_F_FLUSH negotiated is writethrough: synced before completion', async () => {
    const sync = vi.spyOn(FileBlockExport.prototype, 'submitSync');
    const inst = instance(rw, BASE);
    const data = Buffer.alloc(1024, 0xa1);
    expect(statusOf(await run(inst, out(4n, data), 1))).toBe(0);
    expect(sync).toHaveBeenCalledTimes(1);
    expect(readFileSync(rwPath).subarray(4 * 512, 4 * 512 + 1024).equals(data)).toBe(true);
    // WRITE_ZEROES follows the same rule.
    const wz = instance(rw, BASE | WZ);
    const seg = Buffer.concat([encodeRequestHeader(BlkRequestType.WRITE_ZEROES, 0n), encodeSegment(4n, 1, 0)]);
    expect(statusOf(await run(wz, seg, 1))).toBe(0);
    expect(sync).toHaveBeenCalledTimes(2);
    expect(readFileSync(rwPath).subarray(4 * 512, 5 * 512).every((x) => x === 0)).toBe(true);
  });

  it('OUT with FLUSH negotiated runs a writeback cache: no sync until FLUSH', async () => {
    const sync = vi.spyOn(FileBlockExport.prototype, 'submitSync');
    const inst = instance(rw, BASE | FLUSH | WZ);
    expect(statusOf(await run(inst, out(8n, Buffer.alloc(512, 0xb2)), 1))).toBe(0);
    const seg = Buffer.concat([encodeRequestHeader(BlkRequestType.WRITE_ZEROES, 0n), encodeSegment(8n, 1, 0)]);
    expect(statusOf(await run(inst, seg, 1))).toBe(0);
    expect(sync).not.toHaveBeenCalled();
    expect(statusOf(await run(inst, flush(), 1))).toBe(0);
    expect(sync).toHaveBeenCalledTimes(1);
  });

  it('with CONFIG_WCE the writeback field decides: 0 is writethrough, 1 is writeback', async () => {
    const sync = vi.spyOn(FileBlockExport.prototype, 'submitSync');
    const inst = instance(rw, BASE | FLUSH | WCE);
    expect(inst.writeConfig(BlkConfig.writeback, 1, 0n)).toBe(true);
    expect(inst.readConfig(BlkConfig.writeback, 1)).toBe(0n);
    expect(statusOf(await run(inst, out(12n, Buffer.alloc(512, 0xc3)), 1))).toBe(0);
    expect(sync).toHaveBeenCalledTimes(1);
    expect(inst.writeConfig(BlkConfig.writeback, 1, 1n)).toBe(true);
    expect(statusOf(await run(inst, out(12n, Buffer.alloc(512, 0xc4)), 1))).toBe(0);
    expect(sync).toHaveBeenCalledTimes(1);
  });

  it('a failing writethrough sync turns OUT into IOERR', async () => {
    vi.spyOn(FileBlockExport.prototype, 'submitSync').mockImplementation((d) => d.ioDone(new Error('EIO')));
    const inst = instance(rw, BASE);
    expect(statusOf(await run(inst, out(16n, Buffer.alloc(512, 1)), 1))).toBe(1);
  });

  it('FLUSH on a read-only export succeeds without syncing; OUT is IOERR and writes nothing', async () => {
    const sync = vi.spyOn(FileBlockExport.prototype, 'submitSync');
    const write = vi.spyOn(FileBlockExport.prototype, 'submitWrite');
    const inst = instance(ro, BASE | FLUSH | bit(BlkFeature.RO));
    expect(statusOf(await run(inst, flush(), 1))).toBe(0);
    expect(statusOf(await run(inst, out(0n, Buffer.alloc(512)), 1))).toBe(1);
    expect(sync).not.toHaveBeenCalled();
    expect(write).not.toHaveBeenCalled();
    expect(readFileSync(roPath).every((x) => x === 0x5a)).toBe(true);
  });

  it('BlockDevice.flush over the wire reaches the export\'s sync', async () => {
    const t = new TargetFixture();
    try {
      await t.addDisk('d', MiB);
      const url = await t.listen();
      const sync = vi.spyOn(FileBlockExport.prototype, 'submitSync');
      const d = await BlockDevice.open(`${url}/d`, { keepaliveIntervalMs: 0 });
      try {
        expect(d.device.hasFeature(BlkFeature.FLUSH)).toBe(true);
        await d.write(0, Buffer.alloc(4096, 7));
        expect(sync).not.toHaveBeenCalled(); // writeback: FLUSH and CONFIG_WCE negotiated, writeback = 1
        await d.flush();
        expect(sync).toHaveBeenCalledTimes(1);
      } finally {
        await d.close();
      }
    } finally {
      await t.close();
    }
  });
});

describe('FileBlockExport: DISCARD / WRITE_ZEROES flags (virtio 1.2, 5.2.6.2)', () => {
  const fx = new TargetFixture(); // for its temp dir
  let exp: FileBlockExport;
  let path: string;

  beforeAll(async () => {
    path = join(fx.dir, 'flags.img');
    await fsp.writeFile(path, Buffer.alloc(64 * 1024, 0x77));
    exp = await FileBlockExport.open(path);
  });
  afterAll(async () => {
    await exp?.close();
    await fx.close();
  });

  const request = async (type: number, flags: number): Promise<number> => {
    const inst = exp.createInstance();
    inst.setDriverFeatures(BASE | FLUSH | WZ | bit(BlkFeature.DISCARD));
    const body = Buffer.concat([encodeRequestHeader(type, 0n), encodeSegment(0n, 1, flags)]);
    return statusOf(await run(inst, body, 1));
  };

  it('unknown flag bits are UNSUPP for both, and WRITE_ZEROES accepts VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP', async () => {
    expect(await request(BlkRequestType.WRITE_ZEROES, 2)).toBe(2);
    expect(await request(BlkRequestType.DISCARD, 2)).toBe(2);
    expect(readFileSync(path).subarray(0, 512).every((x) => x === 0x77)).toBe(true);
    expect(await request(BlkRequestType.WRITE_ZEROES, 1)).toBe(0);
    expect(readFileSync(path).subarray(0, 512).every((x) => x === 0)).toBe(true);
    expect(readFileSync(path).subarray(512).every((x) => x === 0x77)).toBe(true);
  });

  it('DISCARD with the unmap flag set is UNSUPP ("the device MUST set the status byte to VIRTIO_BLK_S_UNSUPP for discard commands if the unmap flag is set")', async () => {
    expect(await request(BlkRequestType.DISCARD, 1)).toBe(2);
    expect(await request(BlkRequestType.DISCARD, 0)).toBe(0);
  });
});

describe('virtio-blk config space, byte for byte', () => {
  /**
   * struct virtio_blk_config (virtio 1.2, 5.2.4) of a 1 MiB disk, 2 queues, 512-byte blocks,
   * writeback on: written out by hand, field by field.
   */
  // prettier-ignore
  const GOLDEN = Buffer.from([
    /*  0 capacity le64 = 2048 sectors   */ 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    /*  8 size_max le32 = 4 MiB          */ 0x00, 0x00, 0x40, 0x00,
    /* 12 seg_max le32 = 128             */ 0x80, 0x00, 0x00, 0x00,
    /* 16 geometry: cylinders le16, heads, sectors (F_GEOMETRY not offered) */ 0x00, 0x00, 0x00, 0x00,
    /* 20 blk_size le32 = 512            */ 0x00, 0x02, 0x00, 0x00,
    /* 24 physical_block_exp = 0         */ 0x00,
    /* 25 alignment_offset = 0           */ 0x00,
    /* 26 min_io_size le16 = 1 block     */ 0x01, 0x00,
    /* 28 opt_io_size le32 = 8192 blocks */ 0x00, 0x20, 0x00, 0x00,
    /* 32 writeback = 1                  */ 0x01,
    /* 33 unused0                        */ 0x00,
    /* 34 num_queues le16 = 2            */ 0x02, 0x00,
    /* 36 max_discard_sectors le32 = 8192 */ 0x00, 0x20, 0x00, 0x00,
    /* 40 max_discard_seg le32 = 1       */ 0x01, 0x00, 0x00, 0x00,
    /* 44 discard_sector_alignment = 1   */ 0x01, 0x00, 0x00, 0x00,
    /* 48 max_write_zeroes_sectors = 64 MiB */ 0x00, 0x00, 0x02, 0x00,
    /* 52 max_write_zeroes_seg le32 = 1  */ 0x01, 0x00, 0x00, 0x00,
    /* 56 write_zeroes_may_unmap = 0     */ 0x00,
    /* 57 unused1[3]                     */ 0x00, 0x00, 0x00,
  ]);

  let fx: TargetFixture;
  let url: string;

  beforeAll(async () => {
    fx = new TargetFixture();
    await fx.addDisk('golden', MiB, { numQueues: 2 });
    await fx.addDisk('golden4k', 3 * MiB + 700, { numQueues: 1, blockSize: 4096 });
    url = await fx.listen('tcp://127.0.0.1:0');
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('the offsets in BlkConfig are the spec\'s', () => {
    expect(BlkConfig).toEqual({
      capacity: 0,
      size_max: 8,
      seg_max: 12,
      geometry_cylinders: 16,
      geometry_heads: 18,
      geometry_sectors: 19,
      blk_size: 20,
      physical_block_exp: 24,
      alignment_offset: 25,
      min_io_size: 26,
      opt_io_size: 28,
      writeback: 32,
      num_queues: 34,
      max_discard_sectors: 36,
      max_discard_seg: 40,
      discard_sector_alignment: 44,
      max_write_zeroes_sectors: 48,
      max_write_zeroes_seg: 52,
      write_zeroes_may_unmap: 56,
      SIZE: 60,
    });
    expect(GOLDEN.length).toBe(60);
  });

  it('Get Config returns exactly the golden bytes (8-byte reads and single-byte reads)', async () => {
    const dev = await RemoteDevice.connect(`${url}/golden`, { keepaliveIntervalMs: 0 });
    try {
      const whole = await dev.readConfig(0, BlkConfig.SIZE);
      expect(whole.toString('hex')).toBe(GOLDEN.toString('hex'));
      const bytes: number[] = [];
      for (let i = 0; i < BlkConfig.SIZE; i++) bytes.push(Number((await dev.getConfig(i, 1)).value));
      expect(Buffer.from(bytes).toString('hex')).toBe(GOLDEN.toString('hex'));
      // Nothing past the end.
      await expect(dev.getConfig(BlkConfig.SIZE, 1)).rejects.toThrow(/ECONFOFF/);
    } finally {
      await dev.close();
    }
  });

  it('the device model\'s own bytes match too', async () => {
    const exp = await FileBlockExport.open(join(fx.dir, 'golden.img'), { numQueues: 2 });
    try {
      expect(exp.config().toString('hex')).toBe(GOLDEN.toString('hex'));
      const inst = exp.createInstance();
      expect(inst.configSize).toBe(60);
      const viaInstance = Buffer.alloc(60);
      for (let i = 0; i < 60; i++) viaInstance[i] = Number(inst.readConfig(i, 1));
      expect(viaInstance.equals(GOLDEN)).toBe(true);
    } finally {
      await exp.close();
    }
  });

  it('4096-byte blocks: blk_size, opt_io_size and discard alignment follow; capacity drops a partial sector', async () => {
    const dev = await RemoteDevice.connect(`${url}/golden4k`, { keepaliveIntervalMs: 0 });
    try {
      const c = await dev.readConfig(0, BlkConfig.SIZE);
      const expected = Buffer.from(GOLDEN);
      expected.writeBigUInt64LE(BigInt((3 * MiB) / 512 + 1), 0); // 3 MiB + 700 bytes → 6145 whole sectors
      expected.writeUInt32LE(4096, 20);
      expected.writeUInt32LE(1024, 28); // 4 MiB in 4 KiB blocks
      expected.writeUInt16LE(1, 34);
      expected.writeUInt32LE(8, 44); // discard alignment in 512-byte sectors
      expect(c.toString('hex')).toBe(expected.toString('hex'));
    } finally {
      await dev.close();
    }
  });
});
