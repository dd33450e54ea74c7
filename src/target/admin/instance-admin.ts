import { AdminGenericStatus, AdminStatusType } from '../../protocol/admin-command.js';
import {
  AdminClass,
  AdminCommonCommand,
  AdminTransportStatus,
  AdminVirtioOfCommand,
  AdminVofCommand,
  ERROR_LOG_REQUEST_SIZE,
  ErrorLogEntryType,
  HEALTH_TEST_REQUEST_SIZE,
  NO_VQ,
  QueueRole,
  QueueTransport,
  adminClassName,
  adminCommandName,
  decodeErrorLogRequest,
  decodeHealthTestRequest,
  encodeCommandList,
  encodeErrorLogPage,
  encodeHealthTestResult,
  encodeQueueList,
  formatAdminStatus,
  type QueueInfo,
} from '../../protocol/admin-records.js';
import { formatStatus } from '../../protocol/constants.js';
import type { DeviceInstance } from '../device-instance.js';
import type { TargetQueue } from '../target-queue.js';
import { quotePeerString } from '../../util/escape.js';
import type { Logger } from '../../util/log.js';
import { AdminCommandSet, expectData, generic, type AdminCaller } from './admin-command-set.js';
import type { DeviceErrorLog } from './error-log.js';
import { seedAdminHeader, type AdminHeaderFormat } from '../../protocol/admin-header-format.js';
import { HEALTH_TEST_MAX_SAMPLES, HealthTestBudget } from './health-test-budget.js';

/** Queue size of the admin virtqueue (Get VQ Size answers it). */
export const ADMIN_QUEUE_SIZE = 16;
/** Largest device-readable or device-writable part of one admin command. */
export const ADMIN_MAX_REQUEST_BYTES = 64 * 1024;

/**
 * The admin side of one device instance: the command set (common, transport and vendor classes
 * from here, the device class from the device), the admin virtqueue's request handling, and
 * what the instance reports to its export's error log. Transport-independent.
 */
export class InstanceAdmin {
  readonly commands = new AdminCommandSet();
  private healthTestRunning = false;
  /** This instance's entries in the export's error log. */
  private readonly logOwner: number;
  private lastConfigGeneration = -1;
  private readonly caller: AdminCaller;

  constructor(
    private readonly inst: DeviceInstance,
    readonly errorLog: DeviceErrorLog,
    private readonly log: Logger,
    /** The export's health test rate limit, shared by its instances. */
    private readonly healthTests: HealthTestBudget = new HealthTestBudget(),
    /**
     * Whether the instance's IVQN, with the identity its control queue's connection proved,
     * holds the export's admin grant (the target decides it at Connect; default: it does not).
     */
    readonly granted = false,
    private readonly header: AdminHeaderFormat = seedAdminHeader,
  ) {
    this.logOwner = errorLog.newOwner();
    this.caller = { granted };
    this.registerCommonClass();
    this.registerTransportClass();
    this.registerVendorClass();
    inst.device.admin?.register(this.commands, {
      ioError: (vqIndex, status, detail) => {
        const q = inst.virtqueues.get(vqIndex);
        if (q) q.stats.errors++;
        this.entry(ErrorLogEntryType.IO_ERROR, detail, vqIndex, status);
      },
    });
  }

  /** Run one request from the admin virtqueue, answering into `writable`; returns the bytes written. */
  async handleRequest(vqIndex: number, readable: Buffer, writable: Buffer): Promise<number> {
    const capacity = this.header.resultCapacity(writable.length);
    // Not even room for the status: nothing can be said (the completion reports 0 bytes written).
    if (capacity < 0) return 0;
    const req = this.header.decodeRequest(readable);
    const response = req
      ? await this.commands.run(req, capacity, this.caller, (err) => {
          this.log.error(`instance ${this.inst.id}: admin ${adminClassName(req.cls)} ${adminCommandName(req.cls, req.command)} failed: ${err.stack ?? err.message}`);
        })
      : { result: Buffer.alloc(0), statusType: 0, status: AdminGenericStatus.DATA_TRANSFER_ERR };
    if (req && response.statusType === AdminStatusType.TRANSPORT_SPECIFIC && response.status === AdminTransportStatus.ACL_REJECTED) {
      // The operator's side of the refusal: who asked, for what, and how to grant it.
      this.log.info(`${this.inst.label}: admin ${adminClassName(req.cls)} ${adminCommandName(req.cls, req.command)} refused: no admin grant on the export for this IVQN${this.identityNote} (vof target --admin)`);
    }
    if (response.status !== AdminGenericStatus.OK || response.statusType !== 0) {
      const what = req ? `admin ${req.cls}/${req.command}` : 'admin (short)';
      const detail = `${what}: ${formatAdminStatus(req?.cls ?? 0, response.statusType, response.status)}`;
      this.entry(ErrorLogEntryType.REFUSED_COMMAND, detail, vqIndex, response.status);
      const q = this.inst.virtqueues.get(vqIndex);
      if (q) q.stats.errors++;
    }
    return this.header.encodeResponse(response, writable);
  }

  /** ' with identity "x"' or ' (no identity)': what the grant was checked against, for log lines. */
  private get identityNote(): string {
    const identity = this.inst.control.connection.identity;
    return identity === undefined ? ' (no identity)' : ` with identity ${quotePeerString(identity)}`;
  }

  private entry(type: number, detail: string, vqIndex = NO_VQ, status = 0): void {
    this.errorLog.record({ type, detail, vqIndex, instanceId: this.inst.id, status }, this.logOwner);
  }

  /** The instance is gone: its entries stay in the export's log (for granted readers). */
  close(): void {
    this.errorLog.forget(this.logOwner);
  }

  recordReset(): void {
    this.entry(ErrorLogEntryType.RESET, `device reset by ${quotePeerString(this.inst.ivqn)}`);
  }
  recordNeedsReset(why: string): void {
    this.entry(ErrorLogEntryType.DEVICE_NEEDS_RESET, why);
  }
  /**
   * Once per generation of this instance's config: each instance's entries are its own, so an
   * export-wide change (a resize) is one entry in the log of every instance that hears it.
   */
  recordConfigChange(generation: number): void {
    if (generation === this.lastConfigGeneration) return;
    this.lastConfigGeneration = generation;
    this.entry(ErrorLogEntryType.CONFIG_CHANGE, `config generation ${generation}`);
  }
  /** A Virtio-oF command got a non-SUCCESS status. */
  recordRefused(vqIndex: number, status: number, commandId: number): void {
    this.entry(ErrorLogEntryType.REFUSED_COMMAND, `${formatStatus(status)}, command id ${commandId}`, vqIndex, status);
  }

  private registerCommonClass(): void {
    const c = this.commands;
    c.add(AdminClass.COMMON, AdminCommonCommand.LIST_COMMANDS, (data) => {
      expectData(data, 0, 'LIST_COMMANDS');
      return { result: encodeCommandList(this.commands.list()) };
    });
    // The instance's own entries; with the export's admin grant, the whole export's log. Other
    // instances' entries name their IVQNs, instance ids and what they did: not for everyone.
    c.add(AdminClass.COMMON, AdminCommonCommand.READ_ERROR_LOG, (data, caller) => {
      expectData(data, ERROR_LOG_REQUEST_SIZE, 'READ_ERROR_LOG');
      const owner = caller.granted ? undefined : this.logOwner;
      const { skip, maxEntries } = decodeErrorLogRequest(data);
      return { result: encodeErrorLogPage(this.errorLog.page(skip, maxEntries, owner)) };
    });
    const device = this.inst.device.admin;
    if (device?.healthTest) {
      const healthTest = device.healthTest.bind(device);
      c.add(AdminClass.COMMON, AdminCommonCommand.HEALTH_TEST, async (data) => {
        expectData(data, HEALTH_TEST_REQUEST_SIZE, 'HEALTH_TEST');
        // One at a time per instance, and a rate limit per export: beyond either it is a valid
        // command that cannot run now (the admin seed's ERR; it has no "busy" status).
        if (this.healthTestRunning) return generic(AdminGenericStatus.ERR);
        if (!this.healthTests.take()) {
          const { burst, intervalMs } = this.healthTests;
          this.log.info(`${this.inst.label}: HEALTH_TEST refused: the export ran its ${burst} health tests; one more every ${intervalMs} ms`);
          return generic(AdminGenericStatus.ERR);
        }
        this.healthTestRunning = true;
        try {
          // 0 stays the device's default; more than the cap is cut to it (the result says how many ran).
          const r = await healthTest(Math.min(HEALTH_TEST_MAX_SAMPLES, decodeHealthTestRequest(data)));
          if (!r.passed) {
            this.entry(ErrorLogEntryType.HEALTH_TEST_FAILED, `health test: ${r.errors} of ${r.samples} samples failed`);
          }
          return { result: encodeHealthTestResult(r) };
        } finally {
          this.healthTestRunning = false;
        }
      });
    }
  }

  /** LIST_QUEUES: this instance's queues only, grant or not (their peers are its initiator's addresses). */
  private registerTransportClass(): void {
    this.commands.add(AdminClass.VIRTIO_OF, AdminVirtioOfCommand.LIST_QUEUES, (data) => {
      expectData(data, 0, 'LIST_QUEUES');
      const adminIndex = this.inst.adminQueueIndex;
      const describe = (q: TargetQueue, vqIndex: number, role: number): QueueInfo => ({
        vqIndex,
        role,
        transport: q.connection.capabilities.keyed ? QueueTransport.RDMA : QueueTransport.TCP,
        queueSize: q.size,
        inFlight: q.inFlightCount,
        commands: q.stats.commands,
        bytesOut: q.stats.bytesOut,
        bytesIn: q.stats.bytesIn,
        errors: q.stats.errors,
        peer: q.connection.peer,
      });
      const list = [describe(this.inst.control, NO_VQ, QueueRole.CONTROL)];
      for (const [vq, q] of [...this.inst.virtqueues].sort((a, b) => a[0] - b[0])) {
        list.push(describe(q, vq, vq === adminIndex ? QueueRole.ADMIN : QueueRole.VIRTQUEUE));
      }
      return { result: encodeQueueList(list) };
    });
  }

  /**
   * Both need the export's admin grant: the counters are the target's record of what the
   * instance did (its errors included), not the initiator's to rewrite, and the error log is
   * the export's, shared by every instance.
   */
  private registerVendorClass(): void {
    this.commands.add(
      AdminClass.VOF,
      AdminVofCommand.RESET_COUNTERS,
      (data) => {
        expectData(data, 0, 'RESET_COUNTERS');
        for (const q of [this.inst.control, ...this.inst.virtqueues.values()]) q.stats.reset();
        return {};
      },
      'export',
    );
    this.commands.add(
      AdminClass.VOF,
      AdminVofCommand.CLEAR_ERROR_LOG,
      (data) => {
        expectData(data, 0, 'CLEAR_ERROR_LOG');
        this.errorLog.clear();
        this.log.info(`${this.inst.label}: cleared the export's error log (admin grant)`);
        return {};
      },
      'export',
    );
  }
}
