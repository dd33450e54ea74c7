import type { AdminCommandSet } from './admin/admin-command-set.js';
import type { HealthTestResult } from '../protocol/admin-records.js';

/** Where a device reports what belongs in its export's error log. */
export interface DeviceEventSink {
  /** A request failed in the device (e.g. VIRTIO_BLK_S_IOERR); `status` is the device's status. */
  ioError(vqIndex: number, status: number, detail: string): void;
}

/**
 * A device's part of the Admin Virtqueue. Devices that have one offer VIRTIO_F_ADMIN_VQ (the
 * target adds the bit) and get the common, transport and vendor classes from the target core.
 */
export interface DeviceAdminSupport {
  /** Register the device's own classes (device range) and hear about errors for the log. */
  register(commands: AdminCommandSet, events: DeviceEventSink): void;
  /** The common class's HEALTH_TEST; without it the command is not offered. */
  healthTest?(samples: number): Promise<HealthTestResult>;
}

/**
 * A request's cancellation as the device sees it (reset, disconnect, shutdown). The target's
 * request slot is this object: nothing is made per command for it. AbortSignal fits it too.
 */
export interface RequestCancel {
  readonly aborted: boolean;
  /** Throws once the request is cancelled: long work calls it between steps. */
  throwIfAborted(): void;
  /** For work that waits on something else: settles when the request is cancelled. */
  whenAborted?(): Promise<void>;
}

/**
 * A request handed to a device through submitRequest, as the device sees it: its cancellation
 * and where its end is reported. The target's request slot is this object, reused for the
 * queue's next commands, so a device reports the end of a request exactly once (deviceDone or
 * deviceFailed) and then forgets the object.
 */
export interface DeviceRequest extends RequestCancel {
  /** The request ended: `written` bytes of its writable buffer hold what the driver gets. */
  deviceDone(written: number): void;
  /** The device could not run the request at all (a fault; block errors are a status byte). */
  deviceFailed(err: unknown): void;
}

/**
 * What the target needs from a virtio device model. A DeviceExport is registered under a TVQN;
 * every control-queue Connect to it creates one DeviceModel.
 */

export interface DeviceModel {
  readonly deviceId: number;
  readonly vendorId: number;
  /** Device feature bits offered (bits 0..127). */
  readonly features: bigint;
  readonly numQueues: number;
  /** Largest queue size the device supports for a virtqueue. */
  maxQueueSize(vqIndex: number): number;
  /** Largest device-readable plus device-writable bytes one request may carry. */
  readonly maxRequestBytes: number;
  readonly configSize: number;
  /** Little-endian value of `bytes` config bytes at `offset` (range checked by the caller). */
  readConfig(offset: number, bytes: number): bigint;
  /** false when the field is not writable by the driver. */
  writeConfig(offset: number, bytes: number, value: bigint): boolean;
  configGeneration(): number;
  /** Called when the device's config space changes on its own (resize, another driver's write). */
  onConfigChange(listener: () => void): () => void;
  /**
   * Called when the device fails in a way only a reset clears (its storage is gone): the target
   * sets DEVICE_NEEDS_RESET and tells the driver. Optional; returns the unsubscribe.
   */
  onFault?(listener: (why: string) => void): () => void;
  /** The driver accepted these features (FEATURES_OK). */
  setDriverFeatures(features: bigint): void;
  /** Return to the just-created state (Reset Device or status 0). */
  reset(): void;
  /**
   * Run one request. `readable` holds the device-readable bytes; `writable` is the
   * device-writable buffer the transport supplied (the command's in_length bytes, fewer only
   * where the transport caps it), which the device fills in place from its first byte. The
   * result is how many bytes of it the device wrote (0..writable.length): exactly those reach
   * the driver. `writable` may hold stale bytes, so a device never counts a byte it did not
   * write. `cancel` turns aborted when the request is cancelled (reset, disconnect, shutdown):
   * long work checks it between steps and stops early (its result is then discarded). Once the
   * returned promise settles the device must not touch `readable`, `writable` or `cancel` again:
   * all three serve the queue's next command.
   */
  handleRequest(vqIndex: number, readable: Buffer, writable: Buffer, cancel?: RequestCancel): Promise<number>;
  /**
   * handleRequest without a promise, the entry point the target uses when a device has it: the
   * same buffers and rules, and the end is reported on `request` (deviceDone with the bytes
   * written, or deviceFailed), once, possibly before this call returns. A device that keeps
   * its per-request state in objects it reuses allocates nothing per request this way.
   */
  submitRequest?(vqIndex: number, readable: Buffer, writable: Buffer, request: DeviceRequest): void;
  /** The instance is gone; no more calls follow. */
  destroy(): void;
  /** Admin Virtqueue support; absent: the device offers no VIRTIO_F_ADMIN_VQ. */
  readonly admin?: DeviceAdminSupport;
}

/** What the transport of an instance's control queue allows one request to carry. */
export interface InstanceLimits {
  /** Keyed descriptors per VQ command (header and status included); 0 when unlimited (stream). */
  readonly maxDescriptors: number;
}

export interface DeviceExport {
  /** A short human-readable description for logs and `vof info`. */
  readonly description: string;
  createInstance(limits?: InstanceLimits): DeviceModel;
  /**
   * Re-read the size of the storage (the operator's `vof revalidate`); a changed capacity is a
   * config change for every instance. Absent: the device has no size to re-read.
   */
  revalidateSize?(): Promise<{ capacityBytes: number; changed: boolean }>;
  close(): Promise<void>;
}
