import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { constants as fsc, promises as fsp, readFileSync, type Stats } from 'node:fs';
import { DEFAULT_VENDOR_ID, DeviceId, VIRTIO_F_VERSION_1 } from '../../protocol/constants.js';
import { getLE32, getLE64 } from '../../protocol/fields.js';
import type { DeviceEventSink, DeviceExport, DeviceRequest, InstanceLimits, RequestCancel, DeviceModel } from '../device.js';
import { alignmentAddon, allocAligned } from '../../util/aligned-buffer.js';
import { BlkAdmin, alignedToBlock, readSector } from './blk-admin.js';
import { DirectFileIo, type DirectIoAlignment } from './direct-file-io.js';
import { chooseFileIo, defaultFileIoMode, openFileIo, type FileIo, type FileIoBackend, type FileIoMode } from './file-io.js';
import type { IoDone } from './uring-ring.js';
import {
  BlkConfig,
  BlkFeature,
  BlkRequestType,
  BlkStatus,
  ID_BYTES,
  REQUEST_HEADER,
  REQUEST_HEADER_SIZE,
  SECTOR_SIZE,
  SEGMENT,
  SEGMENT_SIZE,
  WRITE_ZEROES_FLAG_UNMAP,
} from '../../protocol/virtio-blk.js';

export interface FileBlockOptions {
  /** Refuse writes and offer VIRTIO_BLK_F_RO. */
  readonly readOnly?: boolean;
  /** Number of request virtqueues (VIRTIO_BLK_F_MQ when > 1). Default 2. */
  readonly numQueues?: number;
  /** Largest virtqueue size. Default 128. */
  readonly queueSize?: number;
  /**
   * Logical block size reported in blk_size. Default 512, or with `direct` the file's direct-I/O
   * offset alignment (512 or 4096), which is also the smallest block size `direct` allows.
   */
  readonly blockSize?: number;
  /**
   * Open the file (or block device) with O_DIRECT: reads and writes bypass the page cache and
   * move between the disk and the transport's buffer (aligned pool memory) without a copy.
   * Needs the native addon (it tells buffer addresses and the file's alignment) and a file
   * system that does direct I/O: tmpfs and ramfs are refused, as is a file system that refuses
   * O_DIRECT (EINVAL) — never a silent fallback to the page cache. Default false (buffered).
   */
  readonly direct?: boolean;
  /**
   * Serial returned by GET_ID (at most 20 bytes). Default: "vof-" and 16 hex digits derived
   * from the backing file's identity (device, inode, birth time): stable while the file lives,
   * and saying nothing about its name or path.
   */
  readonly serial?: string;
  /**
   * How the backing file is read and written: io_uring in the native addon, libuv's thread pool
   * (Node's fs), or auto (io_uring where it works). Default: VOF_FILE_IO, else auto.
   */
  readonly fileIo?: FileIoMode;
  /** fromIo only: whether the storage takes flushes (default true). */
  readonly canFlush?: boolean;
  /** fromIo only: how logs and descriptions name the storage. */
  readonly label?: string;
}

/** Most data bytes one request may move; the initiator splits larger transfers. */
export const MAX_TRANSFER_BYTES = 4 * 1024 * 1024;
/**
 * Most sectors one WRITE_ZEROES may zero (64 MiB): bounds the work of one request; more is IOERR.
 * The zeroing runs in ZERO_CHUNK steps and stops between two when the request is cancelled.
 */
export const MAX_WRITE_ZEROES_SECTORS = (64 * 1024 * 1024) / SECTOR_SIZE;
const ZERO_CHUNK = Buffer.alloc(1024 * 1024);
/** statfs f_type of file systems that keep files in memory: direct I/O has no disk to go to. */
const MEMORY_FS_TYPES = new Map([
  [0x01021994, 'tmpfs'],
  [0x858458f6, 'ramfs'],
]);
/** Direct-I/O alignment assumed when the kernel cannot say (statx without STATX_DIOALIGN, < 6.1). */
const ASSUMED_DIRECT_ALIGNMENT: DirectIoAlignment = { memAlign: 4096, offsetAlign: 4096 };
/** seg_max on stream transports, where the wire sets no limit on segments. */
const STREAM_SEG_MAX = 128;
/** Keyed descriptors a request needs besides its data segments: the header and the status byte. */
const NON_DATA_DESCRIPTORS = 2;

function bit(b: bigint): bigint {
  return 1n << b;
}

/** Byte size of a regular file or a block device (from sysfs: Node has no BLKGETSIZE64). */
function sizeOf(path: string, st: Stats): number {
  if (st.isFile()) return st.size;
  if (st.isBlockDevice()) {
    const major = Number((BigInt(st.rdev) >> 8n) & 0xfffn);
    const minor = Number((BigInt(st.rdev) & 0xffn) | ((BigInt(st.rdev) >> 12n) & 0xfff00n));
    const sectors = Number(readFileSync(`/sys/dev/block/${major}:${minor}/size`, 'utf8').trim());
    return sectors * SECTOR_SIZE;
  }
  throw new Error(`${path} is neither a regular file nor a block device`);
}

/**
 * What O_DIRECT demands of the open file, from the kernel where it says (statx, BLKSSZGET), or
 * why direct I/O cannot work for it.
 */
async function directIoAlignment(path: string, st: Stats, fd: number): Promise<DirectIoAlignment> {
  const addon = alignmentAddon();
  if (addon instanceof Error) throw addon;
  // tmpfs refuses O_DIRECT before Linux 6.6 and accepts it since while still caching every
  // page: either way there is no disk to bypass the cache for. (Only for regular files: a
  // device node's own file system, devtmpfs, says nothing about the device.)
  const memoryFs = st.isFile() ? MEMORY_FS_TYPES.get(Number((await fsp.statfs(path)).type)) : undefined;
  if (memoryFs) throw new Error(`direct I/O: ${path} is on ${memoryFs}, which keeps files in memory (export it without "direct")`);
  const got = addon.directIoAlignment(fd);
  if (got === null) return ASSUMED_DIRECT_ALIGNMENT;
  if (got.memAlign === 0 || got.offsetAlign === 0) throw new Error(`direct I/O: the file system does no direct I/O for ${path} (export it without "direct")`);
  if (got.offsetAlign > 4096 || got.memAlign > 4096) {
    throw new Error(`direct I/O: ${path} needs ${got.offsetAlign}-byte offsets and ${got.memAlign}-byte buffer alignment; vof serves blocks of 512 or 4096 bytes`);
  }
  return got;
}

/**
 * virtio-blk backed by a regular file or a block device. One open file descriptor serves every
 * instance; each request is bounds-checked against the capacity before any I/O, so the file
 * is never touched outside [0, capacity).
 */
export class FileBlockExport implements DeviceExport {
  readonly description: string;
  readonly readOnly: boolean;
  readonly numQueues: number;
  readonly queueSize: number;
  /** Logical block size (blk_size): requests must be aligned to it. Changed by the admin FORMAT. */
  blockSize: number;
  /** Instances alive now (FORMAT is refused while others use the export). */
  instanceCount = 0;
  /** What GET_ID returns: at most 20 bytes, NUL-padded by the request when shorter. */
  readonly serial: Buffer;
  /** The smallest logical block size the file allows (512; with direct I/O its offset alignment). */
  readonly minBlockSize: number;
  /** The file was opened with O_DIRECT (FileBlockOptions.direct). */
  readonly direct: boolean;
  /** WRITE_ZEROES's source: aligned with direct I/O, so zeroing needs no bounce buffer. */
  private readonly zeroChunk: Buffer;
  private generation = 0;
  private readonly events = new EventEmitter();

  /** The storage takes flushes (VIRTIO_BLK_F_FLUSH is offered): false for an NBD server without them. */
  readonly canFlush: boolean;

  private constructor(
    readonly path: string,
    private readonly file: fsp.FileHandle | null,
    private readonly io: FileIo,
    /** The backing store's size; revalidateSize() re-reads it. */
    private sizeBytes: number,
    options: FileBlockOptions,
    defaultSerial: string,
    alignment: DirectIoAlignment | null,
  ) {
    this.readOnly = options.readOnly ?? false;
    this.canFlush = options.canFlush ?? true;
    this.numQueues = Math.max(1, options.numQueues ?? 2);
    this.queueSize = Math.min(1024, Math.max(1, options.queueSize ?? 128));
    this.direct = alignment !== null;
    this.minBlockSize = alignment === null || alignment.offsetAlign <= SECTOR_SIZE ? SECTOR_SIZE : 4096;
    this.blockSize = options.blockSize ?? this.minBlockSize;
    this.serial = Buffer.from(options.serial ?? defaultSerial, 'utf8');
    this.zeroChunk = this.direct ? allocAligned(ZERO_CHUNK.length).fill(0) : ZERO_CHUNK;
    this.description = `virtio-blk ${options.label ?? path} (${this.capacityBytes} bytes${this.readOnly ? ', read-only' : ''}${this.direct ? ', direct I/O' : ''})`;
    if (this.blockSize !== SECTOR_SIZE && this.blockSize !== 4096) throw new Error(`block size ${this.blockSize}: 512 or 4096`);
    if (this.blockSize < this.minBlockSize) {
      throw new Error(`block size ${this.blockSize}: direct I/O on ${path} needs ${this.minBlockSize}-byte blocks`);
    }
    this.events.setMaxListeners(0);
  }

  static async open(path: string, options: FileBlockOptions = {}): Promise<FileBlockExport> {
    const flags = (options.readOnly ? fsc.O_RDONLY : fsc.O_RDWR) | (options.direct ? fsc.O_DIRECT : 0);
    if (options.serial !== undefined && Buffer.byteLength(options.serial, 'utf8') > ID_BYTES) {
      throw new Error(`serial "${options.serial}" is over ${ID_BYTES} bytes`);
    }
    const { backend } = chooseFileIo(options.fileIo ?? defaultFileIoMode());
    const addon = options.direct ? alignmentAddon() : null;
    if (addon instanceof Error) throw new Error(`direct I/O needs vof's native addon to align buffers: ${addon.message}`);
    let file: fsp.FileHandle;
    try {
      file = await fsp.open(path, flags);
    } catch (err) {
      if (options.direct && (err as NodeJS.ErrnoException).code === 'EINVAL') {
        throw new Error(`direct I/O: the file system of ${path} refuses O_DIRECT (export it without "direct")`, { cause: err });
      }
      throw err;
    }
    try {
      const st = await file.stat();
      const id = await file.stat({ bigint: true });
      const digest = createHash('sha256').update(`vof-serial\0${id.dev}\0${id.ino}\0${id.birthtimeNs}`).digest('hex');
      const alignment = options.direct ? await directIoAlignment(path, st, file.fd) : null;
      const plain = openFileIo(file, backend);
      const io = alignment ? new DirectFileIo(plain, alignment) : plain;
      return new FileBlockExport(path, file, io, sizeOf(path, st), options, `vof-${digest.slice(0, ID_BYTES - 4)}`, alignment);
    } catch (err) {
      await file.close();
      throw err;
    }
  }

  /**
   * An export over storage that is not a local file (an NBD source, the null device): `label`
   * names it in logs and descriptions; the serial is derived from it unless given.
   */
  static fromIo(label: string, io: FileIo, sizeBytes: number, options: FileBlockOptions = {}): FileBlockExport {
    if (options.direct) throw new Error(`direct I/O is for files and block devices, not ${label}`);
    if (options.serial !== undefined && Buffer.byteLength(options.serial, 'utf8') > ID_BYTES) {
      throw new Error(`serial "${options.serial}" is over ${ID_BYTES} bytes`);
    }
    if (sizeBytes < SECTOR_SIZE) throw new Error(`${label} is ${sizeBytes} bytes: a disk needs at least one 512-byte sector`);
    const digest = createHash('sha256').update(`vof-serial\0${label}`).digest('hex');
    return new FileBlockExport(label, null, io, sizeBytes, { ...options, label }, `vof-${digest.slice(0, ID_BYTES - 4)}`, null);
  }

  get features(): bigint {
    let f =
      bit(VIRTIO_F_VERSION_1) |
      bit(BlkFeature.SEG_MAX) |
      bit(BlkFeature.SIZE_MAX) |
      bit(BlkFeature.BLK_SIZE) |
      bit(BlkFeature.TOPOLOGY) |
      bit(BlkFeature.CONFIG_WCE) |
      bit(BlkFeature.DISCARD) |
      bit(BlkFeature.WRITE_ZEROES);
    // Without FLUSH the driver treats the disk as write-through: nothing to flush on request.
    if (this.canFlush) f |= bit(BlkFeature.FLUSH);
    if (this.numQueues > 1) f |= bit(BlkFeature.MQ);
    if (this.readOnly) f |= bit(BlkFeature.RO);
    return f;
  }

  /**
   * Whole 512-byte sectors of the backing store, whatever the logical block size; with direct
   * I/O whole blocks of the smallest block size it allows (the kernel cannot read a partial one).
   */
  get capacityBytes(): number {
    return this.sizeBytes - (this.sizeBytes % this.minBlockSize);
  }

  /**
   * Admin FORMAT: a new logical block size (the bytes stay); drivers hear a config change. The
   * admin command refuses sizes below minBlockSize before calling this.
   */
  format(blockSize: number): void {
    this.blockSize = blockSize;
    this.configChanged();
  }

  /**
   * Re-reads the size of the backing file or block device, which an operator grew or shrank
   * (as nvmet's revalidate_size): when the capacity changed, every instance hears a config
   * change, and requests are bounds-checked against the new capacity from now on. Storage that
   * is not a local file (an NBD source, null:SIZE) has no size to re-read.
   */
  async revalidateSize(): Promise<{ capacityBytes: number; changed: boolean }> {
    if (!this.file) throw new Error(`${this.path} is not a local file or block device: its size cannot be re-read`);
    const before = this.capacityBytes;
    this.sizeBytes = sizeOf(this.path, await this.file.stat());
    const changed = this.capacityBytes !== before;
    if (changed) this.configChanged();
    return { capacityBytes: this.capacityBytes, changed };
  }

  get configGeneration(): number {
    return this.generation;
  }

  /** The config changed for every instance (a resize): bump the generation, tell instances. */
  configChanged(): void {
    this.generation = (this.generation + 1) >>> 0;
    this.events.emit('change');
  }

  onConfigChange(listener: () => void): () => void {
    this.events.on('change', listener);
    return () => this.events.off('change', listener);
  }

  /** The storage failed for good (e.g. an NBD source declared lost): every instance needs a reset. */
  fault(why: string): void {
    this.events.emit('fault', why);
  }

  onFault(listener: (why: string) => void): () => void {
    this.events.on('fault', listener);
    return () => this.events.off('fault', listener);
  }

  /** struct virtio_blk_config as one instance sees it (writeback and seg_max are per instance). */
  config(instance: { writeback: number; segMax: number } = { writeback: 1, segMax: STREAM_SEG_MAX }): Buffer {
    const c = Buffer.alloc(BlkConfig.SIZE);
    c.writeBigUInt64LE(BigInt(this.capacityBytes / SECTOR_SIZE), BlkConfig.capacity);
    c.writeUInt32LE(MAX_TRANSFER_BYTES, BlkConfig.size_max);
    c.writeUInt32LE(instance.segMax, BlkConfig.seg_max);
    c.writeUInt32LE(this.blockSize, BlkConfig.blk_size);
    c.writeUInt8(0, BlkConfig.physical_block_exp);
    c.writeUInt16LE(1, BlkConfig.min_io_size);
    c.writeUInt32LE(MAX_TRANSFER_BYTES / this.blockSize, BlkConfig.opt_io_size);
    c.writeUInt8(instance.writeback, BlkConfig.writeback);
    c.writeUInt16LE(this.numQueues, BlkConfig.num_queues);
    c.writeUInt32LE(MAX_TRANSFER_BYTES / SECTOR_SIZE, BlkConfig.max_discard_sectors);
    c.writeUInt32LE(1, BlkConfig.max_discard_seg);
    c.writeUInt32LE(this.blockSize / SECTOR_SIZE, BlkConfig.discard_sector_alignment);
    c.writeUInt32LE(MAX_WRITE_ZEROES_SECTORS, BlkConfig.max_write_zeroes_sectors);
    c.writeUInt32LE(1, BlkConfig.max_write_zeroes_seg);
    c.writeUInt8(0, BlkConfig.write_zeroes_may_unmap);
    return c;
  }

  createInstance(limits?: InstanceLimits): DeviceModel {
    const descriptors = limits?.maxDescriptors ?? 0;
    // seg_max counts data segments; on a keyed queue each takes a descriptor, and so do the
    // request header and the status byte.
    const segMax = descriptors > 0 ? Math.max(1, descriptors - NON_DATA_DESCRIPTORS) : STREAM_SEG_MAX;
    this.instanceCount++;
    return new FileBlockInstance(this, segMax, () => this.instanceCount--);
  }

  /** Bounds check in bytes; false when [offset, offset+length) is outside the disk. */
  inRange(sector: number, length: number): boolean {
    // Exact for any sector of a disk (capacity < 2^53 bytes); a larger one is out of range.
    return sector * SECTOR_SIZE + length <= this.capacityBytes;
  }

  /**
   * Direct I/O only: requests whose buffer was not aligned and went through a bounce buffer
   * (a copy). Transport pool buffers are aligned; what remains are e.g. small TCP writes, whose
   * payload is read in place from the socket's chunk.
   */
  get bouncedRequests(): number {
    return this.io instanceof DirectFileIo ? this.io.bounced : 0;
  }

  /** Which file I/O backend serves this export (FileBlockOptions.fileIo). */
  get fileIoBackend(): FileIoBackend {
    return this.io.backend;
  }

  // The promise forms, for callers off the per-command path (WRITE_ZEROES, admin, tests): each
  // goes through its submit method, so every read, write and sync of the export passes one place.
  read(into: Buffer, offset: number): Promise<void> {
    return new Promise((resolve, reject) => this.submitRead(into, 0, into.length, offset, promisedIo(resolve, reject)));
  }

  write(from: Buffer, offset: number): Promise<void> {
    return new Promise((resolve, reject) => this.submitWrite(from, 0, from.length, offset, promisedIo(resolve, reject)));
  }

  sync(): Promise<void> {
    return new Promise((resolve, reject) => this.submitSync(promisedIo(resolve, reject)));
  }

  /** read() of bytes [offset, offset + length) of `into`, without a promise (FileIo.submitRead). */
  submitRead(into: Buffer, offset: number, length: number, position: number, done: IoDone): void {
    this.io.submitRead(into, offset, length, position, done);
  }

  submitWrite(from: Buffer, offset: number, length: number, position: number, done: IoDone): void {
    this.io.submitWrite(from, offset, length, position, done);
  }

  /** fdatasync of the backing file (FLUSH, write-through): `done` hears when it is durable. */
  submitSync(done: IoDone): void {
    this.io.submitDatasync(done);
  }

  /** Zero a range in 1 MiB steps; stops between two steps once `cancel` aborts (and throws). */
  async writeZeroes(offset: number, length: number, cancel?: Pick<RequestCancel, 'throwIfAborted'>): Promise<void> {
    // Storage that zeroes by itself (an NBD server's WRITE_ZEROES) does it in one request.
    const own = this.io.writeZeroes?.(offset, length);
    if (own) return own;
    for (let pos = 0; pos < length; pos += this.zeroChunk.length) {
      cancel?.throwIfAborted();
      await this.write(this.zeroChunk.subarray(0, Math.min(this.zeroChunk.length, length - pos)), offset + pos);
    }
  }

  /** DISCARD: storage that can drop a range does (NBD_CMD_TRIM); for a file it is only a hint. */
  discard(offset: number, length: number): Promise<void> {
    return this.io.trim ? this.io.trim(offset, length) : Promise.resolve();
  }

  async close(): Promise<void> {
    await this.io.close();
    await this.file?.close();
  }
}

/**
 * Per-instance state: the features this driver accepted and its cache mode. Each instance has
 * its own writeback field (virtio-blk: a write is stable only if writeback was 0 from its
 * submission to its completion, so one initiator must not switch another's cache mode).
 */
class FileBlockInstance implements DeviceModel {
  readonly deviceId = DeviceId.Block;
  readonly vendorId = DEFAULT_VENDOR_ID;
  readonly configSize = BlkConfig.SIZE;
  readonly maxRequestBytes = MAX_TRANSFER_BYTES + REQUEST_HEADER_SIZE + SEGMENT_SIZE;
  private negotiated = 0n;
  /** FLUSH and CONFIG_WCE of `negotiated`, asked per write: as booleans, not a BigInt per test. */
  private flushNegotiated = false;
  private wceNegotiated = false;
  /** 1 = writeback, 0 = writethrough; always 0 once features without FLUSH are accepted. */
  writeback = 1;
  /** Changes of this instance's own config (its writeback), added to the disk's generation. */
  private ownGeneration = 0;
  private readonly ownChanges = new EventEmitter();
  private events: DeviceEventSink | null = null;
  private released = false;
  /** Request records not in use (at most one per request this instance ever had in flight at once). */
  private readonly freeOps: BlkOp[] = [];
  readonly admin: BlkAdmin;

  constructor(
    private readonly disk: FileBlockExport,
    readonly segMax: number,
    private readonly onDestroy: () => void,
  ) {
    // The admin side hands over the error-log sink: failed requests are reported there.
    this.admin = new BlkAdmin(disk, (events) => (this.events = events));
  }

  get features(): bigint {
    return this.disk.features;
  }
  get numQueues(): number {
    return this.disk.numQueues;
  }
  maxQueueSize(): number {
    return this.disk.queueSize;
  }
  readConfig(offset: number, bytes: number): bigint {
    const c = this.disk.config(this);
    const tmp = Buffer.alloc(8);
    c.copy(tmp, 0, offset, offset + bytes);
    return tmp.readBigUInt64LE(0);
  }
  writeConfig(offset: number, bytes: number, value: bigint): boolean {
    // Only writeback is driver-writable, and only with VIRTIO_BLK_F_CONFIG_WCE.
    if (offset !== BlkConfig.writeback || bytes !== 1) return false;
    if (!(this.negotiated & bit(BlkFeature.CONFIG_WCE))) return false;
    const wb = Number(value & 0xffn) ? 1 : 0;
    // Without FLUSH a driver could never make a writeback cache durable: writethrough only.
    if (wb === 1 && !(this.negotiated & bit(BlkFeature.FLUSH))) return false;
    if (wb !== this.writeback) {
      this.writeback = wb;
      this.ownGeneration = (this.ownGeneration + 1) >>> 0;
      this.ownChanges.emit('change');
    }
    return true;
  }
  configGeneration(): number {
    return (this.disk.configGeneration + this.ownGeneration) >>> 0;
  }
  onConfigChange(listener: () => void): () => void {
    const offDisk = this.disk.onConfigChange(listener);
    this.ownChanges.on('change', listener);
    return () => {
      offDisk();
      this.ownChanges.off('change', listener);
    };
  }
  onFault(listener: (why: string) => void): () => void {
    return this.disk.onFault(listener);
  }
  setDriverFeatures(features: bigint): void {
    this.negotiated = features;
    this.flushNegotiated = (features & bit(BlkFeature.FLUSH)) !== 0n;
    this.wceNegotiated = (features & bit(BlkFeature.CONFIG_WCE)) !== 0n;
    // virtio-blk: with CONFIG_WCE but not FLUSH negotiated, writeback starts (and stays) 0.
    this.writeback = features & bit(BlkFeature.FLUSH) ? 1 : 0;
  }
  reset(): void {
    this.negotiated = 0n;
    this.flushNegotiated = this.wceNegotiated = false;
    this.writeback = 1;
  }
  destroy(): void {
    if (this.released) return;
    this.released = true;
    this.onDestroy();
  }

  /** Writes reach stable storage before completion unless the driver runs a writeback cache. */
  private get writeThrough(): boolean {
    if (!this.flushNegotiated) return true;
    if (this.wceNegotiated) return this.writeback === 0;
    return false;
  }

  /** handleRequest of submitRequest: a promise per request, for callers that want one. */
  handleRequest(vq: number, readable: Buffer, writable: Buffer, cancel?: RequestCancel): Promise<number> {
    return new Promise((resolve, reject) => {
      this.submitRequest(vq, readable, writable, {
        get aborted() {
          return cancel?.aborted ?? false;
        },
        throwIfAborted: () => cancel?.throwIfAborted(),
        deviceDone: resolve,
        deviceFailed: reject,
      });
    });
  }

  /**
   * Fills `writable` in place (data, then the status byte last) and reports the bytes written.
   * Reads, writes and flushes, the per-command path, run on a request record of this instance
   * reused from command to command (BlkOp), straight on the file's callback entry points: no
   * promise, closure or subarray per command. The rest (GET_ID, DISCARD, WRITE_ZEROES, unknown
   * types) goes through otherRequest.
   */
  submitRequest(vq: number, readable: Buffer, writable: Buffer, request: DeviceRequest): void {
    // The status byte is the last device-writable byte; without one there is nothing to say.
    const inLength = writable.length;
    if (inLength < 1) return request.deviceDone(0);
    if (readable.length < REQUEST_HEADER_SIZE) return request.deviceDone(this.reply(vq, readable, writable, BlkStatus.IOERR, 0));
    const type = getLE32(readable, REQUEST_HEADER.type);
    const disk = this.disk;
    if (type === BlkRequestType.IN) {
      const sector = readSector(readable, REQUEST_HEADER.sector.offset);
      const dataIn = inLength - 1;
      if (!alignedToBlock(sector, dataIn, disk.blockSize) || !disk.inRange(sector, dataIn)) return request.deviceDone(this.reply(vq, readable, writable, BlkStatus.IOERR, 0));
      return disk.submitRead(writable, 0, dataIn, sector * SECTOR_SIZE, this.op(vq, readable, writable, request, BlkStep.LAST));
    }
    if (type === BlkRequestType.OUT) {
      const sector = readSector(readable, REQUEST_HEADER.sector.offset);
      const length = readable.length - REQUEST_HEADER_SIZE;
      if (disk.readOnly) return request.deviceDone(this.reply(vq, readable, writable, BlkStatus.IOERR, 0));
      if (!alignedToBlock(sector, length, disk.blockSize) || !disk.inRange(sector, length)) return request.deviceDone(this.reply(vq, readable, writable, BlkStatus.IOERR, 0));
      const op = this.op(vq, readable, writable, request, this.writeThrough ? BlkStep.WRITE_THEN_SYNC : BlkStep.LAST);
      return disk.submitWrite(readable, REQUEST_HEADER_SIZE, length, sector * SECTOR_SIZE, op);
    }
    if (type === BlkRequestType.FLUSH) {
      if (disk.readOnly) return request.deviceDone(this.reply(vq, readable, writable, BlkStatus.OK, 0));
      return disk.submitSync(this.op(vq, readable, writable, request, BlkStep.LAST));
    }
    this.slowRequest(vq, readable, writable, request);
  }

  /**
   * otherRequest reported on `request`. A method of its own: closures over `request` in
   * submitRequest would make V8 allocate a context for every call of it, on the fast path too.
   */
  private slowRequest(vq: number, readable: Buffer, writable: Buffer, request: DeviceRequest): void {
    this.otherRequest(vq, readable, writable, request).then(
      (written) => request.deviceDone(written),
      (err: unknown) => request.deviceFailed(err),
    );
  }

  /** A request record from the pool (one is made only when all are in use). */
  private op(vq: number, readable: Buffer, writable: Buffer, request: DeviceRequest, step: BlkStep): BlkOp {
    const op = this.freeOps.pop() ?? new BlkOp(this);
    op.vq = vq;
    op.readable = readable;
    op.writable = writable;
    op.request = request;
    op.step = step;
    return op;
  }

  /** One file operation of `op` has ended: the next one, or the answer (IOERR on any error). */
  opStepDone(op: BlkOp, err: Error | null): void {
    if (err === null && op.step === BlkStep.WRITE_THEN_SYNC) {
      op.step = BlkStep.LAST;
      return this.disk.submitSync(op);
    }
    const { vq, readable, writable, request } = op;
    op.readable = op.writable = EMPTY;
    op.request = null;
    this.freeOps.push(op);
    // A read fills the data bytes; a write or flush leaves them to answer() to zero.
    const filled = err === null && getLE32(readable, REQUEST_HEADER.type) === BlkRequestType.IN ? writable.length - 1 : 0;
    request!.deviceDone(this.reply(vq, readable, writable, err === null ? BlkStatus.OK : BlkStatus.IOERR, filled));
  }

  /** answer(), and a status other than OK goes to the device's error events. */
  private reply(vq: number, readable: Buffer, writable: Buffer, status: number, filled: number): number {
    const written = answer(writable, status, filled);
    if (status !== BlkStatus.OK && this.events) {
      const type = readable.length >= REQUEST_HEADER_SIZE ? getLE32(readable, REQUEST_HEADER.type) : -1;
      const sector = readable.length >= REQUEST_HEADER_SIZE ? getLE64(readable, REQUEST_HEADER.sector) : 0n;
      this.events.ioError(vq, status, `${requestTypeName(type)} sector ${sector}: ${status === BlkStatus.UNSUPP ? 'UNSUPP' : 'IOERR'}`);
    }
    return written;
  }

  /** The request types off the per-command path (the header is there, the status byte too). */
  private async otherRequest(vq: number, readable: Buffer, writable: Buffer, cancel: RequestCancel): Promise<number> {
    const dataIn = writable.length - 1;
    const type = getLE32(readable, REQUEST_HEADER.type);
    try {
      switch (type) {
        case BlkRequestType.GET_ID:
          // The serial, NUL-padded to 20 bytes (or cut to the room there is).
          return this.reply(vq, readable, writable, BlkStatus.OK, this.disk.serial.copy(writable, 0, 0, Math.min(ID_BYTES, dataIn)));
        case BlkRequestType.DISCARD:
        case BlkRequestType.WRITE_ZEROES:
          return this.reply(vq, readable, writable, await this.discardOrZero(type, readable.subarray(REQUEST_HEADER_SIZE), cancel), 0);
        default:
          return this.reply(vq, readable, writable, BlkStatus.UNSUPP, 0);
      }
    } catch {
      return this.reply(vq, readable, writable, BlkStatus.IOERR, 0);
    }
  }

  /**
   * DISCARD and WRITE_ZEROES, checked in this order: feature negotiated (UNSUPP), payload is
   * exactly one segment (IOERR: a malformed request), flags known (UNSUPP, virtio 5.2.6.2),
   * disk writable, size within the advertised maximum, range inside the disk (IOERR).
   */
  private async discardOrZero(type: number, segments: Buffer, cancel?: RequestCancel): Promise<number> {
    const feature = type === BlkRequestType.DISCARD ? BlkFeature.DISCARD : BlkFeature.WRITE_ZEROES;
    if (!(this.negotiated & bit(feature))) return BlkStatus.UNSUPP;
    // One segment per request (max_discard_seg = max_write_zeroes_seg = 1).
    if (segments.length !== SEGMENT_SIZE) return BlkStatus.IOERR;
    const sector = readSector(segments, SEGMENT.sector.offset);
    const sectors = getLE32(segments, SEGMENT.numSectors);
    const flags = getLE32(segments, SEGMENT.flags);
    // The unmap flag (bit 0) belongs to WRITE_ZEROES; on DISCARD it is UNSUPP (virtio 5.2.6.2).
    const allowedFlags = type === BlkRequestType.WRITE_ZEROES ? WRITE_ZEROES_FLAG_UNMAP : 0;
    if (flags & ~allowedFlags) return BlkStatus.UNSUPP;
    if (this.disk.readOnly) return BlkStatus.IOERR;
    const maxSectors = type === BlkRequestType.DISCARD ? MAX_TRANSFER_BYTES / SECTOR_SIZE : MAX_WRITE_ZEROES_SECTORS;
    if (sectors > maxSectors) return BlkStatus.IOERR;
    const length = sectors * SECTOR_SIZE;
    if (!alignedToBlock(sector, length, this.disk.blockSize) || !this.disk.inRange(sector, length)) return BlkStatus.IOERR;
    // Discarding is only a hint: for a file (Node cannot punch holes) doing nothing is a valid answer.
    if (type === BlkRequestType.DISCARD) {
      await this.disk.discard(sector * SECTOR_SIZE, length);
      return BlkStatus.OK;
    }
    await this.disk.writeZeroes(sector * SECTOR_SIZE, length, cancel);
    if (this.writeThrough) await this.disk.sync();
    return BlkStatus.OK;
  }
}

const EMPTY = Buffer.alloc(0);

function promisedIo(resolve: () => void, reject: (err: Error) => void): IoDone {
  return { ioDone: (err) => (err ? reject(err) : resolve()) };
}

/** Where a read, write or flush is: one more file operation to go (the write-through sync), or the last. */
const BlkStep = { LAST: 0, WRITE_THEN_SYNC: 1 } as const;
type BlkStep = (typeof BlkStep)[keyof typeof BlkStep];

/**
 * A request of a FileBlockInstance between its file operations (the file's IoDone), kept and
 * reused by the instance: what the answer needs, and the step it is at.
 */
class BlkOp implements IoDone {
  vq = 0;
  readable: Buffer = EMPTY;
  writable: Buffer = EMPTY;
  request: DeviceRequest | null = null;
  step: BlkStep = BlkStep.LAST;

  constructor(private readonly instance: FileBlockInstance) {}

  ioDone(err: Error | null): void {
    this.instance.opStepDone(this, err);
  }
}

/**
 * The answer of a request whose writable buffer holds `filled` data bytes: every byte up to the
 * status is written, past them zeroes (the transport's buffer may hold an earlier request's
 * bytes, which must not leave), then the status byte last; the bytes written.
 */
function answer(writable: Buffer, status: number, filled: number): number {
  const dataIn = writable.length - 1;
  // Buffer.fill allocates even for an empty range: a read (filled == dataIn) and a write
  // (dataIn == 0) skip it.
  if (filled < dataIn) writable.fill(0, filled, dataIn);
  writable[dataIn] = status;
  return writable.length;
}

const requestTypeNames = new Map<number, string>(Object.entries(BlkRequestType).map(([k, v]) => [v, k]));
function requestTypeName(type: number): string {
  return requestTypeNames.get(type) ?? `type ${type}`;
}
