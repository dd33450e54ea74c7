import { AdminGenericStatus, AdminStatusType, NEEDED_RESULT, NEEDED_RESULT_SIZE } from '../protocol/admin-command.js';
import { getLE32 } from '../protocol/fields.js';
export { formatAdminStatus } from '../protocol/admin-records.js';
import {
  AdminBlkCommand,
  AdminClass,
  AdminCommonCommand,
  AdminVirtioOfCommand,
  AdminVofCommand,
  ERROR_LOG_ENTRY_SIZE,
  ERROR_LOG_HEADER_SIZE,
  HEALTH_TEST_RESULT_SIZE,
  QUEUE_ENTRY_SIZE,
  QUEUE_LIST_HEADER_SIZE,
  adminClassName,
  adminCommandName,
  formatAdminStatus,
  decodeCommandList,
  decodeErrorLogPage,
  decodeFormatList,
  decodeHealthTestResult,
  decodeQueueList,
  encodeErrorLogRequest,
  encodeFormatRequest,
  encodeHealthTestRequest,
  type AdminCommandId,
  type BlkFormat,
  type ErrorLogPage,
  type HealthTestResult,
  type QueueInfo,
} from '../protocol/admin-records.js';
import { seedAdminHeader, type AdminHeaderFormat, type AdminResponse } from '../protocol/admin-header-format.js';

/** An admin command answered with anything but GENERIC OK. */
export class AdminError extends Error {
  override name = 'AdminError';
  constructor(
    readonly cls: number,
    readonly command: number,
    readonly statusType: number,
    readonly status: number,
  ) {
    super(`admin ${adminClassName(cls)} ${adminCommandName(cls, command)}: ${formatAdminStatus(cls, statusType, status)}`);
  }
  /** e.g. "INVALID_CLASS" or "EXPORT_IN_USE". */
  get statusName(): string {
    return formatAdminStatus(this.cls, this.statusType, this.status).split(' ')[1]!;
  }
}

/** Sends the device-readable bytes on the admin queue; resolves with what the device wrote. */
export type AdminTransport = (readable: Buffer, writableBytes: number) => Promise<Buffer>;

const DEFAULT_RESULT_BYTES = 4096;
const MAX_RESULT_BYTES = 64 * 1024 - 2;

/**
 * The initiator's admin commands (`device.admin.<command>()`), over the device's admin virtqueue.
 * Results that do not fit the first buffer are asked for again once, at the size the device
 * says it needs.
 */
export class AdminClient {
  constructor(
    private readonly transport: AdminTransport,
    private readonly header: AdminHeaderFormat = seedAdminHeader,
  ) {}

  /** Send arbitrary device-readable bytes with `writableBytes` of device-writable room (diagnostics, tests). */
  sendRaw(readable: Buffer, writableBytes: number): Promise<Buffer> {
    return this.transport(readable, writableBytes);
  }

  /** Send any command; the status comes back as it is (no throw). `resultBytes` room for the result. */
  async raw(cls: number, command: number, data: Buffer = Buffer.alloc(0), resultBytes = DEFAULT_RESULT_BYTES): Promise<AdminResponse> {
    const written = await this.transport(this.header.encodeRequest({ cls, command, data }), resultBytes + 2);
    const response = this.header.decodeResponse(written);
    if (!response) throw new AdminError(cls, command, AdminStatusType.GENERIC, AdminGenericStatus.DATA_TRANSFER_ERR);
    return response;
  }

  /** Send a command and return its result; anything but OK rejects with AdminError. */
  async call(cls: number, command: number, data?: Buffer, resultBytes = DEFAULT_RESULT_BYTES): Promise<Buffer> {
    let r = await this.raw(cls, command, data, resultBytes);
    if (r.statusType === AdminStatusType.GENERIC && r.status === AdminGenericStatus.DATA_TRANSFER_ERR && r.result.length >= NEEDED_RESULT_SIZE) {
      const needed = getLE32(r.result, NEEDED_RESULT.needed);
      if (needed > resultBytes && needed <= MAX_RESULT_BYTES) r = await this.raw(cls, command, data, needed);
    }
    if (r.statusType !== AdminStatusType.GENERIC || r.status !== AdminGenericStatus.OK) {
      throw new AdminError(cls, command, r.statusType, r.status);
    }
    return r.result;
  }

  // common class
  async listCommands(): Promise<AdminCommandId[]> {
    return decodeCommandList(await this.call(AdminClass.COMMON, AdminCommonCommand.LIST_COMMANDS));
  }
  async errorLog(options: { skip?: number; max?: number } = {}): Promise<ErrorLogPage> {
    const max = options.max ?? 0;
    const room = ERROR_LOG_HEADER_SIZE + ERROR_LOG_ENTRY_SIZE * (max || 64);
    return decodeErrorLogPage(await this.call(AdminClass.COMMON, AdminCommonCommand.READ_ERROR_LOG, encodeErrorLogRequest(options.skip ?? 0, max), room));
  }
  async healthTest(samples = 0): Promise<HealthTestResult> {
    return decodeHealthTestResult(await this.call(AdminClass.COMMON, AdminCommonCommand.HEALTH_TEST, encodeHealthTestRequest(samples), HEALTH_TEST_RESULT_SIZE));
  }
  // transport class
  async queues(): Promise<QueueInfo[]> {
    const room = QUEUE_LIST_HEADER_SIZE + QUEUE_ENTRY_SIZE * 16;
    return decodeQueueList(await this.call(AdminClass.VIRTIO_OF, AdminVirtioOfCommand.LIST_QUEUES, undefined, room));
  }
  // device class (virtio-blk)
  async formats(): Promise<{ formats: BlkFormat[]; current: number }> {
    return decodeFormatList(await this.call(AdminClass.BLK, AdminBlkCommand.LIST_FORMATS));
  }
  async format(blockSize: number, metadataBytes = 0): Promise<void> {
    await this.call(AdminClass.BLK, AdminBlkCommand.FORMAT, encodeFormatRequest(blockSize, metadataBytes), 0);
  }
  // vendor class (vof)
  async resetCounters(): Promise<void> {
    await this.call(AdminClass.VOF, AdminVofCommand.RESET_COUNTERS, undefined, 0);
  }
  async clearErrorLog(): Promise<void> {
    await this.call(AdminClass.VOF, AdminVofCommand.CLEAR_ERROR_LOG, undefined, 0);
  }
}
