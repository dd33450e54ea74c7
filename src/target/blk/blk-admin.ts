import { randomInt } from 'node:crypto';
import { AdminStatusType } from '../../protocol/admin-command.js';
import {
  AdminBlkCommand,
  AdminBlkStatus,
  AdminClass,
  decodeFormatRequest,
  encodeFormatList,
  type BlkFormat,
  type HealthTestResult,
} from '../../protocol/admin-records.js';
import { AdminDataError, expectData, type AdminCommandSet, type AdminReply } from '../admin/admin-command-set.js';
import type { DeviceAdminSupport, DeviceEventSink } from '../device.js';
import { SECTOR_SIZE } from '../../protocol/virtio-blk.js';

/** The formats LIST_FORMATS reports; the ones with protection information are not served. */
export const BLK_FORMATS: readonly BlkFormat[] = [
  { blockSize: 512, metadataBytes: 0, supported: true },
  { blockSize: 512, metadataBytes: 8, supported: false },
  { blockSize: 4096, metadataBytes: 0, supported: true },
  { blockSize: 4096, metadataBytes: 8, supported: false },
];

export const DEFAULT_HEALTH_SAMPLES = 64;
/** The target caps every health test at HEALTH_TEST_MAX_SAMPLES (4096) before it gets here. */
const MAX_HEALTH_SAMPLES = 4096;

/** What the virtio-blk admin class needs from the disk behind it. */
export interface FormattableDisk {
  readonly blockSize: number;
  /** Smaller block sizes cannot be served (direct I/O on a 4096-byte-sector disk): not offered. */
  readonly minBlockSize?: number;
  readonly readOnly: boolean;
  readonly capacityBytes: number;
  /** Instances of this export alive now (this one included). */
  readonly instanceCount: number;
  /** Change the logical block size; raises a config change. */
  format(blockSize: number): void;
  read(into: Buffer, offset: number): Promise<void>;
}

const classSpecific = (status: number): AdminReply => ({ statusType: AdminStatusType.CLASS_SPECIFIC, status });

/**
 * virtio-blk's part of the Admin Virtqueue: the device class (LIST_FORMATS, FORMAT) and the
 * common class's HEALTH_TEST as a read-verify of sampled blocks.
 */
export class BlkAdmin implements DeviceAdminSupport {
  constructor(
    private readonly disk: FormattableDisk,
    private readonly onEvents: (events: DeviceEventSink) => void = () => {},
  ) {}

  register(commands: AdminCommandSet, events: DeviceEventSink): void {
    this.onEvents(events);
    commands.add(AdminClass.BLK, AdminBlkCommand.LIST_FORMATS, (data) => {
      expectData(data, 0, 'LIST_FORMATS');
      const current = BLK_FORMATS.findIndex((f) => f.blockSize === this.disk.blockSize && f.metadataBytes === 0);
      return { result: encodeFormatList(this.formats(), Math.max(0, current)) };
    });
    // Export-wide: it changes the disk's geometry for every later initiator, and its refusals
    // (EXPORT_IN_USE) would tell an initiator whether other instances exist. Only with the
    // export's admin grant; without it the refusal comes before any of these checks.
    commands.add(
      AdminClass.BLK,
      AdminBlkCommand.FORMAT,
      (data) => {
        const req = decodeFormatRequest(data);
        if (!req) throw new AdminDataError(`FORMAT takes 8 bytes of data, got ${data.length}`);
        const format = this.formats().find((f) => f.blockSize === req.blockSize && f.metadataBytes === req.metadataBytes);
        if (!format?.supported) return classSpecific(AdminBlkStatus.FORMAT_UNSUPPORTED);
        if (this.disk.readOnly) return classSpecific(AdminBlkStatus.READ_ONLY);
        if (this.disk.instanceCount > 1) return classSpecific(AdminBlkStatus.EXPORT_IN_USE);
        if (req.blockSize !== this.disk.blockSize) this.disk.format(req.blockSize);
        return {};
      },
      'export',
    );
  }

  /** BLK_FORMATS as this disk serves them: sizes below its smallest block are unsupported. */
  private formats(): typeof BLK_FORMATS {
    const min = this.disk.minBlockSize ?? 0;
    return BLK_FORMATS.map((f) => (f.blockSize < min ? { ...f, supported: false } : f));
  }

  /**
   * Read `samples` logical blocks (the first, the last, the rest at random) and count those that
   * cannot be read in full: a truncated or failing backing store shows up here.
   */
  async healthTest(samples: number): Promise<HealthTestResult> {
    const n = Math.min(MAX_HEALTH_SAMPLES, samples || DEFAULT_HEALTH_SAMPLES);
    const block = this.disk.blockSize;
    const blocks = Math.floor(this.disk.capacityBytes / block);
    const started = performance.now();
    let errors = 0;
    let bytesChecked = 0;
    let firstError: bigint | null = null;
    const buf = Buffer.alloc(block);
    for (let i = 0; i < n && blocks > 0; i++) {
      const lba = i === 0 ? 0 : i === 1 ? blocks - 1 : randomInt(blocks);
      const offset = lba * block;
      try {
        await this.disk.read(buf, offset);
        bytesChecked += block;
      } catch {
        errors++;
        if (firstError === null || BigInt(offset) < firstError) firstError = BigInt(offset);
      }
    }
    return {
      passed: errors === 0 && blocks > 0,
      samples: blocks > 0 ? n : 0,
      errors,
      durationMs: performance.now() - started,
      bytesChecked,
      firstError,
    };
  }
}

/**
 * A request must cover whole logical blocks: offsets and lengths in bytes. `sector` as
 * readSector gives it: exact on any disk; one beyond 2^53 may be judged either way, and is out
 * of range (inRange) whatever it is.
 */
export function alignedToBlock(sector: number, length: number, blockSize: number): boolean {
  return (sector * SECTOR_SIZE) % blockSize === 0 && length % blockSize === 0;
}

/**
 * A le64 sector number as a JS number, without a BigInt per request: exact below 2^53
 * (4 EiB-sectors, beyond any disk), and at least 2^53 when the field is, so that a sector past
 * the end still fails the bounds check.
 */
export function readSector(buf: Buffer, offset: number): number {
  const high = buf.readUInt32LE(offset + 4);
  // Below 2^32 sectors the low word alone: V8 then keeps it a small integer, where the sum is a
  // double that costs a heap number each time it is passed on (per command).
  return high === 0 ? buf.readUInt32LE(offset) : high * 2 ** 32 + buf.readUInt32LE(offset);
}
