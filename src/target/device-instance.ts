import {
  DeviceStatus,
  Status,
  VIRTIO_OF_F_KEYED_NUM_DESCS,
} from '../protocol/constants.js';
import { encodeConfigChangeCompletion, encodeKeepaliveCompletion } from '../protocol/completion.js';
import { quotePeerString } from '../util/escape.js';
import { VIRTIO_F_ADMIN_VQ } from '../protocol/admin-records.js';
import { ADMIN_MAX_REQUEST_BYTES, ADMIN_QUEUE_SIZE, type InstanceAdmin } from '../admin/instance-admin.js';
import type { Logger } from '../util/log.js';
import type { VirtioDeviceInstance } from './device.js';
import {
  FEATURE_WINDOWS,
  featureWindow,
  statusTransitionProblem,
  withFeatureWindow,
} from './device-status.js';
import type { QueueSession } from './queue-session.js';

export interface KeepalivePolicy {
  /** How often the target sends a Keepalive Completion (0xffff) on the control queue. */
  readonly intervalMs: number;
  /** Destroy the instance when the initiator has sent nothing on any of its queues this long. */
  readonly timeoutMs: number;
}

/** Result of a control-queue operation: a status code, and a value for the Get commands. */
export type OpResult = { status: number; value?: bigint | number; generation?: number };
const ok = (value?: bigint | number): OpResult => (value === undefined ? { status: Status.SUCCESS } : { status: Status.SUCCESS, value });
const fail = (status: number): OpResult => ({ status });

/**
 * The target's side of one Virtio-oF device instance: device status and feature negotiation,
 * config space, keepalive, and the queues bound to it. Transport-independent.
 */
export class DeviceInstance {
  private status = 0;
  private driverFeatures = 0n;
  private ofFeatures = 0n;
  private configChangeOutstanding = false;
  private lastHeard = Date.now();
  private readonly keepaliveTimer: NodeJS.Timeout | null;
  private readonly unsubscribeConfig: () => void;
  readonly virtqueues = new Map<number, QueueSession>();
  destroyed = false;
  /** The Admin Virtqueue's side of this instance; null when the device has none. */
  admin: InstanceAdmin | null = null;

  constructor(
    readonly id: number,
    readonly tvqn: string,
    readonly ivqn: string,
    readonly device: VirtioDeviceInstance,
    readonly control: QueueSession,
    private readonly keepalive: KeepalivePolicy,
    private readonly log: Logger,
    private readonly onDestroyed: (inst: DeviceInstance) => void,
  ) {
    this.unsubscribeConfig = device.onConfigChange(() => this.configChanged());
    this.keepaliveTimer =
      keepalive.intervalMs > 0 ? setInterval(() => this.keepaliveTick(), keepalive.intervalMs) : null;
    this.keepaliveTimer?.unref();
  }

  /** Virtio-oF features this instance offers: keyed descriptors only on keyed transports. */
  get offeredOfFeatures(): bigint {
    return this.control.connection.kind === 'keyed' ? 1n << VIRTIO_OF_F_KEYED_NUM_DESCS : 0n;
  }

  get deviceStatus(): number {
    return this.status;
  }

  /** A VQ command may run only on a live device the driver has set up. */
  get acceptsRequests(): boolean {
    return (
      (this.status & DeviceStatus.DRIVER_OK) !== 0 &&
      (this.status & (DeviceStatus.DEVICE_NEEDS_RESET | DeviceStatus.FAILED)) === 0
    );
  }

  /** "instance 7 ("ivqn" → "tvqn")" with the peer-chosen names escaped, for log lines. */
  get label(): string {
    return `instance ${this.id} (${quotePeerString(this.ivqn)} → ${quotePeerString(this.tvqn)})`;
  }

  heard(): void {
    this.lastHeard = Date.now();
  }

  private keepaliveTick(): void {
    if (this.destroyed) return;
    const silent = Date.now() - this.lastHeard;
    if (silent > this.keepalive.timeoutMs) {
      this.log.warn(`${this.label}: initiator silent for ${silent} ms, destroying`);
      this.destroy();
      return;
    }
    this.control.sendEvent(encodeKeepaliveCompletion());
  }

  /**
   * The device failed in a way only a reset can clear: DEVICE_NEEDS_RESET, announced like a
   * config change (virtio 1.x: the device notifies the driver), and no more VQ commands run.
   */
  needsReset(why: string): void {
    if (this.destroyed || (this.status & DeviceStatus.DEVICE_NEEDS_RESET) !== 0) return;
    this.admin?.recordNeedsReset(why);
    this.log.error(`${this.label}: DEVICE_NEEDS_RESET: ${why}`);
    this.status |= DeviceStatus.DEVICE_NEEDS_RESET;
    this.configChanged();
  }

  private configChanged(): void {
    if (this.destroyed) return;
    this.admin?.recordConfigChange(this.device.configGeneration());
    if (this.configChangeOutstanding) return;
    this.configChangeOutstanding = true;
    this.control.sendEvent(encodeConfigChangeCompletion(this.device.configGeneration()));
  }

  getFeature(select: number): OpResult {
    if (select !== 0) return fail(Status.EFEATURE);
    return ok(this.offeredOfFeatures);
  }

  setFeature(select: number, bits: bigint): OpResult {
    if (select !== 0) return bits === 0n ? ok() : fail(Status.EFEATURE);
    if ((bits & ~this.offeredOfFeatures) !== 0n) return fail(Status.EFEATURE);
    this.ofFeatures = bits;
    return ok();
  }

  get keyedNumDescsNegotiated(): boolean {
    return (this.ofFeatures & (1n << VIRTIO_OF_F_KEYED_NUM_DESCS)) !== 0n;
  }

  getDeviceFeature(select: number): OpResult {
    if (select >= FEATURE_WINDOWS) return fail(Status.EDEVFEATURE);
    return ok(featureWindow(this.offeredDeviceFeatures, select));
  }

  setDriverFeature(select: number, bits: bigint): OpResult {
    if (select >= FEATURE_WINDOWS) return fail(Status.EDEVFEATURE);
    if (this.status & DeviceStatus.FEATURES_OK) return fail(Status.ESTATUS);
    this.driverFeatures = withFeatureWindow(this.driverFeatures, select, bits);
    return ok();
  }

  setStatus(next: number): OpResult {
    if (next === 0) {
      this.reset();
      return ok();
    }
    const problem = statusTransitionProblem(this.status, next);
    if (problem) {
      this.log.info(`instance ${this.id}: set status 0x${next.toString(16)} refused: ${problem}`);
      return fail(Status.ESTATUS);
    }
    const becomingFeaturesOk = (next & DeviceStatus.FEATURES_OK) !== 0 && (this.status & DeviceStatus.FEATURES_OK) === 0;
    if (becomingFeaturesOk) {
      if ((this.driverFeatures & ~this.offeredDeviceFeatures) !== 0n) {
        this.log.info(`instance ${this.id}: FEATURES_OK refused: driver features not a subset of the device's`);
        return fail(Status.ESTATUS);
      }
      this.device.setDriverFeatures(this.driverFeatures);
    }
    this.status = next;
    return ok();
  }

  reset(): void {
    // The reset at the start of every initialization is routine; one of a live device is logged.
    if (this.status !== 0) this.admin?.recordReset();
    this.status = 0;
    this.driverFeatures = 0n;
    this.configChangeOutstanding = false;
    this.device.reset();
  }

  getConfig(offset: number, bytes: number): OpResult {
    const problem = this.configAccessProblem(offset, bytes);
    if (problem !== Status.SUCCESS) return fail(problem);
    // Reading the config re-arms config change notifications (seed: Config Change Completion).
    this.configChangeOutstanding = false;
    return { status: Status.SUCCESS, value: this.device.readConfig(offset, bytes), generation: this.device.configGeneration() };
  }

  setConfig(offset: number, bytes: number, value: bigint): OpResult {
    const problem = this.configAccessProblem(offset, bytes);
    if (problem !== Status.SUCCESS) return fail(problem);
    return this.device.writeConfig(offset, bytes, value) ? ok() : fail(Status.ECONFOFF);
  }

  private configAccessProblem(offset: number, bytes: number): number {
    if (bytes !== 1 && bytes !== 2 && bytes !== 4 && bytes !== 8) return Status.ECONFBYTES;
    if (offset + bytes > this.device.configSize) return Status.ECONFOFF;
    return Status.SUCCESS;
  }

  getVqSize(vqIndex: number): OpResult {
    if (vqIndex >= this.queueCount) return fail(Status.EQUEUEQUOT);
    return ok(this.maxQueueSize(vqIndex));
  }

  /** The device's features plus VIRTIO_F_ADMIN_VQ when it has an admin side. */
  get offeredDeviceFeatures(): bigint {
    return this.admin ? this.device.features | (1n << VIRTIO_F_ADMIN_VQ) : this.device.features;
  }

  /**
   * Index of the admin virtqueue: one past the device's own virtqueues, present once
   * VIRTIO_F_ADMIN_VQ has been accepted with FEATURES_OK (docs/PROTOCOL.md).
   */
  get adminQueueIndex(): number | null {
    const accepted = (this.status & DeviceStatus.FEATURES_OK) !== 0 && (this.driverFeatures & (1n << VIRTIO_F_ADMIN_VQ)) !== 0n;
    return accepted && this.admin ? this.device.numQueues : null;
  }

  /** Virtqueues an initiator may connect: the device's, plus the admin queue when negotiated. */
  get queueCount(): number {
    return this.device.numQueues + (this.adminQueueIndex === null ? 0 : 1);
  }

  maxQueueSize(vqIndex: number): number {
    return vqIndex === this.adminQueueIndex ? ADMIN_QUEUE_SIZE : this.device.maxQueueSize(vqIndex);
  }

  /** Largest device-readable or device-writable part of one request on this queue. */
  maxRequestBytes(vqIndex: number): number {
    return vqIndex === this.adminQueueIndex ? ADMIN_MAX_REQUEST_BYTES : this.device.maxRequestBytes;
  }

  /** Run a VQ request on the device, or on the admin side for the admin queue. */
  handleRequest(vqIndex: number, readable: Buffer, inLength: number): Promise<readonly Buffer[]> {
    if (vqIndex >= this.device.numQueues) {
      // Only the admin queue lies beyond the device's queues (a queue bound before a reset that
      // dropped VIRTIO_F_ADMIN_VQ gets nothing written).
      return vqIndex === this.adminQueueIndex && this.admin ? this.admin.handleRequest(vqIndex, readable, inLength) : Promise.resolve([]);
    }
    return this.device.handleRequest(vqIndex, readable, inLength);
  }

  /** Tear down: virtqueue connections close, the device model is released. Idempotent. */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    if (this.keepaliveTimer) clearInterval(this.keepaliveTimer);
    this.unsubscribeConfig();
    for (const vq of this.virtqueues.values()) vq.closeWhenIdle();
    this.virtqueues.clear();
    this.control.closeWhenIdle();
    this.device.destroy();
    this.onDestroyed(this);
  }
}
