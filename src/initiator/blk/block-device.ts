import { VIRTIO_F_VERSION_1 } from '../../protocol/constants.js';
import { RemoteDevice, type ConnectOptions } from '../remote-device.js';
import { VofResumeError } from '../vof-error.js';
import { BlockRequest, type BlockCallback, type BlockRequestOwner } from './blk-request.js';
import type { AdminClient } from '../admin-client.js';
import { VIRTIO_F_ADMIN_VQ } from '../../protocol/admin-records.js';
import {
  BlkConfig,
  BlkFeature,
  BlkRequestType,
  BlkStatus,
  ID_BYTES,
  SECTOR_SIZE,
  WRITE_ZEROES_FLAG_UNMAP,
  encodeSegment,
} from '../../protocol/virtio-blk.js';

/** virtio-blk features this client understands and asks for. */
const SUPPORTED =
  (1n << VIRTIO_F_VERSION_1) |
  (1n << VIRTIO_F_ADMIN_VQ) |
  (1n << BlkFeature.SIZE_MAX) |
  (1n << BlkFeature.SEG_MAX) |
  (1n << BlkFeature.RO) |
  (1n << BlkFeature.BLK_SIZE) |
  (1n << BlkFeature.FLUSH) |
  (1n << BlkFeature.TOPOLOGY) |
  (1n << BlkFeature.CONFIG_WCE) |
  (1n << BlkFeature.MQ) |
  (1n << BlkFeature.DISCARD) |
  (1n << BlkFeature.WRITE_ZEROES);

const statusNames: Record<number, string> = { [BlkStatus.IOERR]: 'IOERR', [BlkStatus.UNSUPP]: 'UNSUPP' };

/** The device answered a block request with VIRTIO_BLK_S_IOERR or VIRTIO_BLK_S_UNSUPP. */
export class BlockIoError extends Error {
  override name = 'BlockIoError';
  readonly statusName: string;
  constructor(
    readonly status: number,
    what: string,
  ) {
    super(`${what}: ${statusNames[status] ?? `status ${status}`}`);
    this.statusName = statusNames[status] ?? 'UNKNOWN';
  }
}

export interface BlockDeviceOptions extends ConnectOptions {
  /** Most virtqueues to use (default: all the device offers). */
  readonly maxQueues?: number;
  /** Largest data bytes per request; bigger reads and writes are split (default 1 MiB). */
  readonly maxTransferBytes?: number;
}

/**
 * A remote virtio-blk disk. Promise-based, with callback entry points for reads and writes
 * (submitRead, submitWrite) that allocate nothing per request; concurrent calls are spread
 * over the connected virtqueues (each of which pipelines up to its queue size). Each request
 * runs on a reusable slot of its own memory (BlockRequest) and of the device's (IoSlot).
 */
export class BlockDevice {
  /** Capacity in bytes. */
  capacity: number;
  /** Logical block size (blk_size): offsets and lengths are multiples of it. Follows config changes. */
  blockSize: number;
  readonly readOnly: boolean;
  private readonly maxTransfer: number;
  private nextQueue = 0;
  /** Block request slots not in use; one is made only when every slot is busy. */
  private readonly freeSlots: BlockRequest[] = [];
  private slotsMade = 0;
  /** Where each slot's request ends (bound once). */
  private readonly slotOwner: BlockRequestOwner = {
    blockRequestEnded: (slot, err) => {
      const status = slot.statusByte;
      const failure = err ?? (status === BlkStatus.OK ? null : new BlockIoError(status, slot.at >= 0 ? `${slot.what} at ${slot.at}` : slot.what));
      const callback = slot.release();
      this.freeSlots.push(slot);
      callback?.(failure);
    },
  };

  private constructor(
    readonly device: RemoteDevice,
    capacitySectors: bigint,
    blockSize: number,
    sizeMax: number,
    maxTransfer: number,
  ) {
    this.capacity = Number(capacitySectors) * SECTOR_SIZE;
    this.blockSize = blockSize;
    this.readOnly = device.hasFeature(BlkFeature.RO);
    const limit = device.hasFeature(BlkFeature.SIZE_MAX) && sizeMax > 0 ? sizeMax : maxTransfer;
    this.maxTransfer = Math.max(4096, Math.min(maxTransfer, limit) - (Math.min(maxTransfer, limit) % 4096));
    // A format (admin FORMAT) or resize changes blk_size and capacity: follow it.
    device.on('configChange', () => {
      this.refreshConfig().catch(() => {});
    });
  }

  /** Re-read capacity and blk_size from the config space (done on every Config Change). */
  async refreshConfig(): Promise<void> {
    const cfg = await this.device.readConfig(0, BlkConfig.SIZE);
    this.capacity = Number(cfg.readBigUInt64LE(BlkConfig.capacity)) * SECTOR_SIZE;
    if (this.device.hasFeature(BlkFeature.BLK_SIZE)) this.blockSize = cfg.readUInt32LE(BlkConfig.blk_size) || SECTOR_SIZE;
  }

  /** Admin commands (format, error log, health test, queues, …): see AdminClient. */
  get admin(): AdminClient {
    return this.device.admin;
  }

  static async open(url: string, options: BlockDeviceOptions = {}): Promise<BlockDevice> {
    let opened: BlockDevice | null = null;
    const device = await RemoteDevice.connect(url, {
      ...options,
      // A reconnect must find the disk it left: not smaller, same logical block size.
      verifyResume: async (readConfig) => {
        const cfg = await readConfig(0, BlkConfig.SIZE);
        const capacity = Number(cfg.readBigUInt64LE(BlkConfig.capacity)) * SECTOR_SIZE;
        const blk = opened?.device.hasFeature(BlkFeature.BLK_SIZE) ? cfg.readUInt32LE(BlkConfig.blk_size) || SECTOR_SIZE : SECTOR_SIZE;
        if (!opened) return;
        if (capacity < opened.capacity) throw new VofResumeError(`${url}: cannot resume: capacity shrank from ${opened.capacity} to ${capacity} bytes`);
        if (blk !== opened.blockSize) throw new VofResumeError(`${url}: cannot resume: logical block size changed from ${opened.blockSize} to ${blk}`);
        opened.capacity = capacity;
      },
      negotiateFeatures: (offered) => (options.negotiateFeatures ?? ((f) => f))(offered & SUPPORTED),
      queueCount: async (dev) => {
        let n = 1;
        if (dev.hasFeature(BlkFeature.MQ)) n = Number((await dev.getConfig(BlkConfig.num_queues, 2)).value);
        return Math.max(1, Math.min(n, options.maxQueues ?? n));
      },
    });
    try {
      const cfg = await device.readConfig(0, BlkConfig.SIZE);
      const capacity = cfg.readBigUInt64LE(BlkConfig.capacity);
      // Offsets are JS numbers: refuse a disk whose bytes they could not all address exactly.
      if (capacity * BigInt(SECTOR_SIZE) > BigInt(Number.MAX_SAFE_INTEGER)) {
        throw new RangeError(`${url}: capacity of ${capacity} sectors (${capacity * BigInt(SECTOR_SIZE)} bytes) exceeds 2^53-1 bytes, the largest offset this library can address`);
      }
      const blk = device.hasFeature(BlkFeature.BLK_SIZE) ? cfg.readUInt32LE(BlkConfig.blk_size) : SECTOR_SIZE;
      opened = new BlockDevice(device, capacity, blk || SECTOR_SIZE, cfg.readUInt32LE(BlkConfig.size_max), options.maxTransferBytes ?? 1024 * 1024);
      return opened;
    } catch (err) {
      await device.close();
      throw err;
    }
  }

  get numQueues(): number {
    return this.device.virtqueueCount;
  }

  /** The device has a volatile cache that flush() empties (VIRTIO_BLK_F_FLUSH). */
  get canFlush(): boolean {
    return this.device.hasFeature(BlkFeature.FLUSH);
  }

  /** discard() is supported (VIRTIO_BLK_F_DISCARD). */
  get canDiscard(): boolean {
    return this.device.hasFeature(BlkFeature.DISCARD);
  }

  /** writeZeroes() is supported (VIRTIO_BLK_F_WRITE_ZEROES). */
  get canWriteZeroes(): boolean {
    return this.device.hasFeature(BlkFeature.WRITE_ZEROES);
  }

  private queue(): number {
    const q = this.nextQueue;
    this.nextQueue = (q + 1) % Math.max(1, this.device.virtqueueCount);
    return q;
  }

  private check(offset: number, length: number, what: string): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new RangeError(`${what}: offset and length must be non-negative integers`);
    }
    if (offset % this.blockSize !== 0 || length % this.blockSize !== 0) {
      throw new RangeError(`${what}: offset ${offset} and length ${length} must be multiples of the block size ${this.blockSize}`);
    }
    if (offset + length > this.capacity) {
      throw new RangeError(`${what}: [${offset}, ${offset + length}) is beyond the capacity ${this.capacity}`);
    }
  }

  /**
   * One virtio-blk request on a slot: `extraOut` follows the header (data to write, a
   * segment), `data` is read into. `callback` null: the slot's own promise is made and returned.
   */
  private submit(type: number, sector: number, extraOut: Buffer | null, data: Buffer | null, what: string, at: number, callback: BlockCallback | null, flush = false): Promise<Buffer | undefined> | undefined {
    const slot = this.freeSlots.pop() ?? this.newSlot();
    slot.start(type, sector, extraOut, data, what, at, flush, callback ?? slot.settle);
    const done = callback ? undefined : new Promise<Buffer | undefined>(slot.executor);
    this.device.submitRequest(this.queue(), slot.out, slot.in, flush, slot.onDone);
    return done;
  }

  private newSlot(): BlockRequest {
    this.slotsMade++;
    return new BlockRequest(this.slotOwner);
  }

  /** Block request slots made (at most the most requests ever in flight at once) and free now. */
  get requestSlots(): { made: number; free: number } {
    return { made: this.slotsMade, free: this.freeSlots.length };
  }

  /** A request's promise, when it is made without a callback. */
  private promised(type: number, sector: number, extraOut: Buffer | null, data: Buffer | null, what: string, at: number, flush = false): Promise<Buffer | undefined> {
    return this.submit(type, sector, extraOut, data, what, at, null, flush)!;
  }

  /** Read `length` bytes (or fill `into`) starting at byte `offset`. */
  read(offset: number, lengthOrBuffer: number | Buffer): Promise<Buffer> {
    let into: Buffer;
    try {
      into = typeof lengthOrBuffer === 'number' ? Buffer.alloc(lengthOrBuffer) : lengthOrBuffer;
      this.check(offset, into.length, 'read');
    } catch (err) {
      return Promise.reject(err as Error);
    }
    if (into.length === 0) return Promise.resolve(into);
    // One request (the common case): its slot's promise resolves with `into` itself.
    if (into.length <= this.maxTransfer) return this.promised(BlkRequestType.IN, offset / SECTOR_SIZE, null, into, 'read', offset) as Promise<Buffer>;
    const parts: Promise<unknown>[] = [];
    for (let pos = 0; pos < into.length; pos += this.maxTransfer) {
      const chunk = into.subarray(pos, Math.min(into.length, pos + this.maxTransfer));
      parts.push(this.promised(BlkRequestType.IN, (offset + pos) / SECTOR_SIZE, null, chunk, 'read', offset + pos));
    }
    return Promise.all(parts).then(() => into);
  }

  write(offset: number, data: Buffer): Promise<void> {
    try {
      this.check(offset, data.length, 'write');
    } catch (err) {
      return Promise.reject(err as Error);
    }
    if (data.length === 0) return Promise.resolve();
    if (data.length <= this.maxTransfer) return this.promised(BlkRequestType.OUT, offset / SECTOR_SIZE, data, null, 'write', offset) as Promise<unknown> as Promise<void>;
    const parts: Promise<unknown>[] = [];
    for (let pos = 0; pos < data.length; pos += this.maxTransfer) {
      const chunk = data.subarray(pos, Math.min(data.length, pos + this.maxTransfer));
      parts.push(this.promised(BlkRequestType.OUT, (offset + pos) / SECTOR_SIZE, chunk, null, 'write', offset + pos));
    }
    return Promise.all(parts).then(() => {});
  }

  /**
   * read() with a callback and no Promise: fills `into` from byte `offset`, then calls
   * `callback` (never inside this call). Nothing is allocated per read of up to the largest
   * transfer. Arguments out of range throw at once, as programming errors.
   */
  submitRead(offset: number, into: Buffer, callback: BlockCallback): void {
    this.check(offset, into.length, 'read');
    if (into.length > this.maxTransfer) {
      this.read(offset, into).then(() => callback(null), callback);
      return;
    }
    this.submit(BlkRequestType.IN, offset / SECTOR_SIZE, null, into, 'read', offset, callback);
  }

  /** write() with a callback and no Promise (see submitRead). */
  submitWrite(offset: number, data: Buffer, callback: BlockCallback): void {
    this.check(offset, data.length, 'write');
    if (data.length > this.maxTransfer) {
      this.write(offset, data).then(() => callback(null), callback);
      return;
    }
    this.submit(BlkRequestType.OUT, offset / SECTOR_SIZE, data, null, 'write', offset, callback);
  }

  /** Make completed writes durable (VIRTIO_BLK_T_FLUSH; the target fdatasyncs). */
  async flush(): Promise<void> {
    if (!this.device.hasFeature(BlkFeature.FLUSH)) return;
    // The target syncs the whole backing file, so one request covers writes on every queue.
    await this.promised(BlkRequestType.FLUSH, 0, null, null, 'flush', -1, true);
  }

  async discard(offset: number, length: number): Promise<void> {
    this.check(offset, length, 'discard');
    if (!this.device.hasFeature(BlkFeature.DISCARD)) throw new BlockIoError(BlkStatus.UNSUPP, 'discard');
    await this.segmentRequests(BlkRequestType.DISCARD, offset, length, 0, 'discard');
  }

  async writeZeroes(offset: number, length: number, unmap = false): Promise<void> {
    this.check(offset, length, 'writeZeroes');
    if (!this.device.hasFeature(BlkFeature.WRITE_ZEROES)) throw new BlockIoError(BlkStatus.UNSUPP, 'writeZeroes');
    await this.segmentRequests(BlkRequestType.WRITE_ZEROES, offset, length, unmap ? WRITE_ZEROES_FLAG_UNMAP : 0, 'writeZeroes');
  }

  private async segmentRequests(type: number, offset: number, length: number, flags: number, what: string): Promise<void> {
    const maxKey = type === BlkRequestType.DISCARD ? BlkConfig.max_discard_sectors : BlkConfig.max_write_zeroes_sectors;
    const maxSectors = Number((await this.device.getConfig(maxKey, 4)).value) || 1;
    const parts: Promise<unknown>[] = [];
    for (let pos = 0; pos < length; ) {
      const sectors = Math.min(maxSectors, (length - pos) / SECTOR_SIZE);
      const seg = encodeSegment(BigInt((offset + pos) / SECTOR_SIZE), sectors, flags);
      parts.push(this.promised(type, 0, seg, null, what, offset + pos));
      pos += sectors * SECTOR_SIZE;
    }
    await Promise.all(parts);
  }

  /** The device's serial (VIRTIO_BLK_T_GET_ID), without NUL padding. */
  async getId(): Promise<string> {
    const id = Buffer.alloc(ID_BYTES);
    await this.promised(BlkRequestType.GET_ID, 0, null, id, 'get id', -1);
    const end = id.indexOf(0);
    return id.subarray(0, end < 0 ? ID_BYTES : end).toString('utf8');
  }

  close(): Promise<void> {
    return this.device.close();
  }
}
