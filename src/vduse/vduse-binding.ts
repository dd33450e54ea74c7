import { existsSync } from 'node:fs';
import { loadNativeAddon, REBUILD_HINT } from '../util/native-addon.js';

/**
 * The addon's VDUSE part (native/vduse.cc), typed. Every call maps to one ioctl, read, write or
 * mmap on /dev/vduse/control or /dev/vduse/NAME; the policy is in vduse-device.ts.
 */

/** /dev/vduse/control. */
export interface NativeVduseControl {
  /** VDUSE_CREATE_DEV: a virtio-blk device (vendor 0x1af4, device id 2). */
  createDevice(name: string, features: bigint, vqNum: number, vqAlign: number, config: Buffer): void;
  /** VDUSE_DESTROY_DEV: 0, or the errno (EBUSY while it is open or still a vdpa device). */
  destroyDevice(name: string): number;
  close(): void;
}

export interface VqInfo {
  num: number;
  /** -1 when the kernel gave an address above 2^53-1. */
  descAddr: number;
  driverAddr: number;
  deviceAddr: number;
  availIdx: number;
  ready: boolean;
}

export interface IovaRegion {
  /** The whole region, mmapped; munmapped when the Buffer (and every view of it) is collected. */
  mapping: Buffer;
  start: number;
  last: number;
  /** VDUSE_ACCESS_RO 1, WO 2, RW 3. */
  perm: number;
}

/** What a device's readiness callback is told. */
export const READY_MESSAGE = 0;
export const READY_KICK = 1;

/** /dev/vduse/NAME. */
export interface NativeVduseDevice {
  setupVq(index: number, maxSize: number): void;
  vqInfo(index: number): VqInfo;
  setupKick(index: number): void;
  clearKick(index: number): void;
  /** 0 or the errno. */
  injectIrq(index: number): number;
  /** Bytes read (requestBytes) or 0 when no message waits. */
  readRequest(buf: Buffer): number;
  writeResponse(buf: Buffer): void;
  setConfig(offset: number, bytes: Buffer): void;
  /** 0 or the errno. */
  injectConfigIrq(): number;
  getFeatures(): bigint;
  mapIova(start: number, last: number): IovaRegion | null;
  /**
   * `size` bytes (the bounce size) of this process's memory made the device's bounce buffer
   * (VDUSE_IOTLB_REG_UMEM, Linux >= 6.3; RLIMIT_MEMLOCK raised to its hard limit first): IOVA
   * [0, size) is then that Buffer. Throws with `code` (EINVAL, EEXIST, ENOMEM, ENOTTY).
   */
  registerBounceMemory(size: number): Buffer;
  /** VDUSE_IOTLB_DEREG_UMEM: 0 or the errno (ENOENT: none registered). */
  deregisterBounceMemory(): number;
  close(): void;
}

export interface VduseBinding {
  VduseControl: new (path?: string) => NativeVduseControl;
  VduseDevice: (new (name: string, onReady: (kind: number, index: number) => void, dir?: string) => NativeVduseDevice) & {
    readonly requestBytes: number;
    readonly responseBytes: number;
  };
  /** IOVA mappings not yet unmapped (their Buffers not yet collected). */
  vduseMappings(): number;
}

export const VDUSE_CONTROL = '/dev/vduse/control';

/** Why this host cannot run a VDUSE device, with what to do about it (null when it can). */
export function vduseProblem(control = VDUSE_CONTROL): string | null {
  if (process.platform !== 'linux') return 'VDUSE is Linux only';
  if (!existsSync(control)) {
    return `${control} is missing: modprobe vduse; needs Linux >= 5.15 with CONFIG_VDPA_USER (and virtio_vdpa or vhost_vdpa to bind the device)`;
  }
  return null;
}

export function loadVduseBinding(): VduseBinding {
  let addon: Partial<VduseBinding>;
  try {
    addon = loadNativeAddon() as Partial<VduseBinding>;
  } catch (err) {
    throw new Error(`vof's native addon does not load (${(err as Error).message}); build it with ${REBUILD_HINT}`);
  }
  if (!addon.VduseControl || !addon.VduseDevice || !addon.vduseMappings) {
    throw new Error(`vof's native addon was built without VDUSE; rebuild it with ${REBUILD_HINT}`);
  }
  return addon as VduseBinding;
}
