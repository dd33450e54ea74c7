import { Liveness, timeoutBelowInterval } from '../util/liveness.js';
import {
  DeviceStatus,
  Status,
  VIRTIO_F_VERSION_1,
  VIRTIO_OF_F_KEYED_NUM_DESCS,
} from '../protocol/constants.js';
import { encodeConfigChangeCompletion, encodeKeepaliveCompletion } from '../protocol/completion.js';
import { quotePeerString } from '../util/escape.js';
import { VIRTIO_F_ADMIN_VQ } from '../protocol/admin-records.js';
import { ADMIN_MAX_REQUEST_BYTES, ADMIN_QUEUE_SIZE, type InstanceAdmin } from './admin/instance-admin.js';
import type { Logger } from '../util/log.js';
import type { DeviceRequest, RequestCancel, DeviceModel } from './device.js';
import {
  FEATURE_WINDOWS,
  featureWindow,
  statusTransitionProblem,
  withFeatureWindow,
} from './device-status.js';
import type { TargetQueue } from './target-queue.js';

/** A request slot's deviceDone and deviceFailed bound once, for devices that answer with a promise. */
export interface DeviceRequestCallbacks {
  readonly onExecuted: (written: number) => void;
  readonly onExecuteFailed: (err: unknown) => void;
}
import { VOF_F_INLINE_DATA } from '../protocol/inline-data.js';
import { VOF_F_REMOTE_INVALIDATE } from '../protocol/remote-invalidation.js';
import { VOF_F_AUTH } from '../protocol/auth.js';
import type { TargetAuth } from './target-auth.js';

export interface KeepalivePolicy {
  /** How often the target sends a Keepalive Completion (0xffff) on the control queue; 0 sends none. */
  readonly intervalMs: number;
  /**
   * Destroy the instance when the initiator has sent nothing on any of its queues this long;
   * 0 never does (vanished initiators then hold their instances until the target stops).
   * Independent of intervalMs: it runs on its own timer.
   */
  readonly timeoutMs: number;
}

/** Why a keepalive policy cannot work as meant; null when it is fine. */
export function keepalivePolicyProblem(p: KeepalivePolicy): string | null {
  if (!Number.isFinite(p.intervalMs) || p.intervalMs < 0 || !Number.isFinite(p.timeoutMs) || p.timeoutMs < 0) {
    return 'keepalive interval and timeout must be non-negative numbers of milliseconds';
  }
  return null;
}

/** Settings that work but are probably not what was meant (logged as warnings). */
export function keepalivePolicyWarnings(p: KeepalivePolicy): string[] {
  const out: string[] = [];
  if (p.timeoutMs === 0) out.push('keepalive timeout 0: instances of initiators that vanish are never reclaimed');
  else {
    const short = timeoutBelowInterval(p.intervalMs, p.timeoutMs, 'an initiator keeping alive at the same pace would be dropped');
    if (short !== null) out.push(short);
  }
  return out;
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
  /** A DEVICE_NEEDS_RESET notice waiting for the outstanding Config Change to be read. */
  private needsResetNoticeQueued = false;
  /** Keepalive Completions every interval, and the dead-initiator timer (the keepalive timeout). */
  private readonly liveness: Liveness;
  private readonly unsubscribeConfig: () => void;
  readonly virtqueues = new Map<number, TargetQueue>();
  destroyed = false;
  /** The Admin Virtqueue's side of this instance; null when the device has none. */
  admin: InstanceAdmin | null = null;
  /**
   * vof in-band authentication: offered (VOF_F_AUTH) when the target holds any secret; `auth`
   * is the exchange for this instance's IVQN when the target holds a secret for it, and then
   * authentication is required (docs/PROTOCOL.md "In-band authentication").
   */
  authOffered = false;
  auth: TargetAuth | null = null;

  constructor(
    readonly id: number,
    readonly tvqn: string,
    readonly ivqn: string,
    readonly device: DeviceModel,
    readonly control: TargetQueue,
    private readonly keepalive: KeepalivePolicy,
    private readonly log: Logger,
    private readonly onDestroyed: (inst: DeviceInstance) => void,
  ) {
    const offConfig = device.onConfigChange(() => this.configChanged());
    // Storage that fails beyond what one request's status can say (an NBD source that stayed away).
    const offFault = device.onFault?.((why) => this.needsReset(why));
    this.unsubscribeConfig = () => {
      offConfig();
      offFault?.();
    };
    this.liveness = new Liveness(
      keepalive.intervalMs,
      keepalive.timeoutMs,
      () => this.control.sendEvent(encodeKeepaliveCompletion()),
      (silent) => {
        if (this.destroyed) return;
        this.log.warn(`${this.label}: initiator silent for ${Math.round(silent)} ms, destroying (keepalive timeout ${this.keepalive.timeoutMs} ms)`);
        this.destroy();
      },
    );
    this.liveness.startKeepalive();
    this.liveness.watch();
  }

  /**
   * Virtio-oF features this instance offers: keyed descriptors only on keyed transports, and
   * vof's inline data where the control connection can take it (the target's setting), and
   * vof's remote invalidation where the transport can send it.
   */
  get offeredOfFeatures(): bigint {
    const auth = this.authOffered ? 1n << VOF_F_AUTH : 0n;
    return this.transportOfFeatures | auth;
  }

  private get transportOfFeatures(): bigint {
    const can = this.control.connection.capabilities;
    if (!can.keyed) return 0n;
    const inline = can.inlineDataBytes > 0 ? 1n << VOF_F_INLINE_DATA : 0n;
    const invalidate = can.remoteInvalidation ? 1n << VOF_F_REMOTE_INVALIDATE : 0n;
    return (1n << VIRTIO_OF_F_KEYED_NUM_DESCS) | inline | invalidate;
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
    this.liveness.heard();
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
    // Only one Config Change Completion may be outstanding; this notice must not be lost to
    // that rule, so it waits for the initiator's next Get Config (see configRead).
    if (this.configChangeOutstanding) this.needsResetNoticeQueued = true;
    else this.configChanged();
  }

  /**
   * Config changes are announced to a driver that has finished initializing (DRIVER_OK); one
   * still setting up reads the config anyway.
   */
  private configChanged(): void {
    if (this.destroyed) return;
    this.admin?.recordConfigChange(this.device.configGeneration());
    if (this.configChangeOutstanding) return;
    if ((this.status & DeviceStatus.DRIVER_OK) === 0) return;
    this.configChangeOutstanding = true;
    this.control.sendEvent(encodeConfigChangeCompletion(this.device.configGeneration()));
  }

  /** A Get Config Completion has just been sent: send a queued DEVICE_NEEDS_RESET notice now. */
  configRead(): void {
    if (!this.needsResetNoticeQueued || this.configChangeOutstanding) return;
    this.needsResetNoticeQueued = false;
    this.configChanged();
  }

  /** Only the window of select 0 holds Virtio-oF features; every other window is empty. */
  getFeature(select: number): OpResult {
    return ok(select === 0 ? this.offeredOfFeatures : 0n);
  }

  setFeature(select: number, bits: bigint): OpResult {
    if (select !== 0) return bits === 0n ? ok() : fail(Status.EFEATURE);
    if ((bits & ~this.offeredOfFeatures) !== 0n) return fail(Status.EFEATURE);
    this.ofFeatures = bits;
    return ok();
  }

  get authNegotiated(): boolean {
    return (this.ofFeatures & (1n << VOF_F_AUTH)) !== 0n;
  }

  /** The target holds a secret for the IVQN and the initiator has not proved it (yet). */
  get authPending(): boolean {
    return this.auth !== null && !this.auth.authenticated;
  }

  get keyedNumDescsNegotiated(): boolean {
    return (this.ofFeatures & (1n << VIRTIO_OF_F_KEYED_NUM_DESCS)) !== 0n;
  }

  /**
   * vof inline data: the agreed size (Get Inline Data Size) once VOF_F_INLINE_DATA is set, else
   * 0. Virtqueues take it when their Connect succeeds (docs/PROTOCOL.md).
   */
  get remoteInvalidation(): boolean {
    return (this.ofFeatures & (1n << VOF_F_REMOTE_INVALIDATE)) !== 0n;
  }

  get inlineDataSize(): number {
    return (this.ofFeatures & (1n << VOF_F_INLINE_DATA)) !== 0n ? this.control.connection.capabilities.inlineDataBytes : 0;
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

  /** Any status but 0: a reset (status 0) goes through reset(), which waits for the virtqueues. */
  setStatus(next: number): OpResult {
    const problem = statusTransitionProblem(this.status, next);
    if (problem) {
      this.log.info(`instance ${this.id}: set status 0x${next.toString(16)} refused: ${problem}`);
      return fail(Status.ESTATUS);
    }
    const becomingFeaturesOk = (next & DeviceStatus.FEATURES_OK) !== 0 && (this.status & DeviceStatus.FEATURES_OK) === 0;
    if (becomingFeaturesOk) {
      if ((this.driverFeatures & (1n << VIRTIO_F_VERSION_1)) === 0n) {
        this.log.info(`${this.label}: FEATURES_OK refused: VIRTIO_F_VERSION_1 not accepted (legacy drivers are not supported)`);
        return fail(Status.ESTATUS);
      }
      if ((this.driverFeatures & ~this.offeredDeviceFeatures) !== 0n) {
        this.log.info(`instance ${this.id}: FEATURES_OK refused: driver features not a subset of the device's`);
        return fail(Status.ESTATUS);
      }
      this.device.setDriverFeatures(this.driverFeatures);
    }
    this.status = next;
    return ok();
  }

  /**
   * Reset Device or Set Status 0. New VQ commands are refused at once (ESTATUS); the ones in
   * flight are cancelled and have all completed, none with SUCCESS, when this resolves.
   */
  async reset(): Promise<void> {
    // The reset at the start of every initialization is routine; one of a live device is logged.
    if (this.status !== 0) this.admin?.recordReset();
    this.status = 0;
    this.driverFeatures = 0n;
    this.configChangeOutstanding = false;
    this.needsResetNoticeQueued = false;
    await Promise.all([...this.virtqueues.values()].map((vq) => vq.cancelAll('device reset')));
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
    // A device queue first: adminQueueIndex's feature test makes BigInts, asked twice per command.
    if (vqIndex < this.device.numQueues) return this.device.maxRequestBytes;
    return vqIndex === this.adminQueueIndex ? ADMIN_MAX_REQUEST_BYTES : this.device.maxRequestBytes;
  }

  /** Run a VQ request on the device, or on the admin side for the admin queue; the bytes written. */
  handleRequest(vqIndex: number, readable: Buffer, writable: Buffer, cancel?: RequestCancel): Promise<number> {
    if (vqIndex >= this.device.numQueues) {
      // Only the admin queue lies beyond the device's queues (a queue bound before a reset that
      // dropped VIRTIO_F_ADMIN_VQ gets nothing written).
      return vqIndex === this.adminQueueIndex && this.admin ? this.admin.handleRequest(vqIndex, readable, writable) : Promise.resolve(0);
    }
    return this.device.handleRequest(vqIndex, readable, writable, cancel);
  }

  /**
   * handleRequest with the end reported on `request` (DeviceRequest): the device's own
   * submitRequest where it has one, else its promise adapted (the admin queue's too).
   */
  submitRequest(vqIndex: number, readable: Buffer, writable: Buffer, request: DeviceRequest & DeviceRequestCallbacks): void {
    const device = this.device;
    if (vqIndex < device.numQueues && device.submitRequest) return device.submitRequest(vqIndex, readable, writable, request);
    this.handleRequest(vqIndex, readable, writable, request).then(request.onExecuted, request.onExecuteFailed);
  }

  /** Tear down: virtqueue connections close, the device model is released. Idempotent. */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.liveness.stop();
    this.auth?.stop();
    this.unsubscribeConfig();
    this.admin?.close();
    for (const vq of this.virtqueues.values()) vq.closeWhenIdle();
    this.virtqueues.clear();
    this.control.closeWhenIdle();
    this.device.destroy();
    this.onDestroyed(this);
  }
}
