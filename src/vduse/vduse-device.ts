import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readlinkSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { BlockDevice } from '../initiator/blk/block-device.js';
import { BlkConfig, BlkFeature, BlkRequestType, BlkStatus, REQUEST_HEADER } from '../protocol/virtio-blk.js';
import type { RemoteDevice } from '../initiator/remote-device.js';
import type { KeyedTransferStats, PinHandle } from '../transport/pinned-memory.js';
import { VIRTIO_F_VERSION_1 } from '../protocol/constants.js';
import { getLE32 } from '../protocol/fields.js';
import { quotePeerString } from '../util/escape.js';
import type { Logger } from '../util/log.js';
import { IovaMemory } from './iova-memory.js';
import { DescriptorChain, RingError, SplitRing } from './split-ring.js';
import { READY_KICK, READY_MESSAGE, loadVduseBinding, vduseProblem, type NativeVduseControl, type NativeVduseDevice, type VduseBinding } from './vduse-binding.js';
import { WakeSignal } from '../util/wake-signal.js';

/** Transport feature bits (virtio 1.2, 6). */
export const VIRTIO_RING_F_INDIRECT_DESC = 28n;
export const VIRTIO_RING_F_EVENT_IDX = 29n;
/** VDUSE refuses a device without it (its IOVAs are not guest-physical addresses). */
export const VIRTIO_F_ACCESS_PLATFORM = 33n;

/**
 * The virtio-blk feature bits passed from the remote device to the kernel's driver. Their
 * meaning is the request format and the config space, which travel unchanged. Not passed:
 * CONFIG_WCE (VDUSE's config space is read-only and it refuses the bit), the admin virtqueue
 * (vof's, not the kernel's), and every transport bit (the ring is local: this process serves it).
 */
const PASSED_BLK =
  (1n << BlkFeature.SIZE_MAX) |
  (1n << BlkFeature.SEG_MAX) |
  (1n << BlkFeature.GEOMETRY) |
  (1n << BlkFeature.RO) |
  (1n << BlkFeature.BLK_SIZE) |
  (1n << BlkFeature.FLUSH) |
  (1n << BlkFeature.TOPOLOGY) |
  (1n << BlkFeature.MQ) |
  (1n << BlkFeature.DISCARD) |
  (1n << BlkFeature.WRITE_ZEROES);

/** What the remote device is asked for (BlockDevice.open's negotiateFeatures). */
export function vduseRemoteFeatures(offered: bigint): bigint {
  return offered & (PASSED_BLK | (1n << VIRTIO_F_VERSION_1));
}

/** The features the VDUSE device offers the kernel, from those negotiated with the remote. */
export function vduseDeviceFeatures(remoteNegotiated: bigint): bigint {
  return (
    (remoteNegotiated & PASSED_BLK) |
    (1n << VIRTIO_F_VERSION_1) |
    (1n << VIRTIO_F_ACCESS_PLATFORM) |
    (1n << VIRTIO_RING_F_EVENT_IDX) |
    (1n << VIRTIO_RING_F_INDIRECT_DESC)
  );
}

// struct vduse_dev_request / vduse_dev_response (include/uapi/linux/vduse.h): the offsets used.
const VDUSE_GET_VQ_STATE = 0;
const VDUSE_SET_STATUS = 1;
const VDUSE_UPDATE_IOTLB = 2;
const REQ_TYPE = 0;
const REQ_ID = 4;
const REQ_UNION = 24;
const RESP_RESULT = 4;
const RESP_UNION = 24;
const RESULT_OK = 0;
const RESULT_FAILED = 1;
const STATUS_DRIVER_OK = 4;

/** Messages handled per wake of the device fd (it is level-triggered: the rest wake it again). */
const MESSAGES_PER_WAKE = 64;
/** Regions mapped at most (a driver that asks for more is refused, not followed). */
const MAX_REGIONS = 4096;
/**
 * How long a reset waits for requests in flight before it answers: below the kernel's VDUSE
 * message timeout (30 s), after which it marks the device broken.
 */
const RESET_WAIT_MS = 25000;

export type VduseBind = 'virtio' | 'vhost';

export interface VduseServeOptions {
  /** The VDUSE (and vdpa) device name: /dev/vduse/NAME, /sys/bus/vdpa/devices/NAME. */
  readonly name: string;
  /** Ring size the kernel may use at most (default and cap: the remote queue size). */
  readonly queueSize?: number;
  readonly bind?: VduseBind;
  readonly log: Logger;
  /** iproute2's vdpa (default /usr/sbin/vdpa, else vdpa on PATH). */
  readonly vdpaPath?: string;
  /** For tests: the binding (default: the addon's). */
  readonly binding?: VduseBinding;
}

/** One request slot of a queue: its chain, and the completion bound once. */
class Slot {
  readonly chain = new DescriptorChain();
  /** The queue's generation when the chain was popped: a reset makes its completion void. */
  generation = 0;
  readonly done: (err: Error | null, written: number) => void;
  constructor(
    readonly queue: Queue,
    owner: VduseBlockDevice,
  ) {
    this.done = (err, written) => owner.completed(this, err, written);
  }
}

interface Queue {
  readonly index: number;
  ring: SplitRing | null;
  generation: number;
  readonly free: Slot[];
  /** Requests sent to the remote and not completed (across generations). */
  inFlight: number;
  /** The driver broke the ring's rules: served no more until a reset. */
  broken: boolean;
}

/**
 * A VDUSE virtio-blk device whose requests travel to a remote vof disk: the kernel's own
 * virtio-blk driver (bound through virtio_vdpa) or a VM (vhost_vdpa) drives its virtqueues;
 * each available descriptor chain becomes one Virtio-oF VQ command on the matching remote
 * virtqueue, its segments passed as views of the IOVA mapping (no copy here), and its used
 * length is what the remote wrote.
 */
export class VduseBlockDevice {
  private readonly binding: VduseBinding;
  private readonly control: NativeVduseControl;
  private readonly dev: NativeVduseDevice;
  private readonly memory: IovaMemory;
  private readonly queues: Queue[] = [];
  private readonly request: Buffer;
  private readonly response: Buffer;
  private readonly remote: RemoteDevice;
  private readonly log: Logger;
  private started = false;
  private closed = false;
  private added = false;
  /** Features the kernel's driver accepted (read at DRIVER_OK). */
  driverFeatures = 0n;
  /** Woken when in-flight requests reach zero. */
  private readonly drainSignal = new WakeSignal();
  /** vdpa device attached: the kernel's block device (/dev/vdX) or /dev/vhost-vdpa-N. */
  devicePath: string | null = null;
  /**
   * The pin (RemoteDevice.pinMemory) of each IOVA mapping in `memory`, taken when it is mapped
   * and released when it leaves `memory` (an IOTLB change) or the device closes: the one owner
   * of those registrations. Not the bounce memory's, which lives as long as the device.
   */
  private readonly pins = new Map<Buffer, PinHandle>();
  /**
   * rdma:// only: this process's memory registered as the device's bounce buffer
   * (VDUSE_IOTLB_REG_UMEM) and pinned, so that every request's bytes, which the kernel's DMA
   * API bounces into IOVA [0, bounce size), move with no copy. Made at the first mapping of the
   * bounce region; kept until close. `bounceProblem`: why not (logged once), null if not tried.
   */
  private bounce: { readonly memory: Buffer; readonly pin: PinHandle } | null = null;
  bounceProblem: string | null = null;
  private pinFailureLogged = false;

  private constructor(
    readonly disk: BlockDevice,
    readonly name: string,
    readonly features: bigint,
    readonly queueSize: number,
    config: Buffer,
    private readonly opts: VduseServeOptions,
  ) {
    this.binding = opts.binding ?? loadVduseBinding();
    this.remote = disk.device;
    this.log = opts.log;
    this.request = Buffer.alloc(this.binding.VduseDevice.requestBytes);
    this.response = Buffer.alloc(this.binding.VduseDevice.responseBytes);
    this.memory = new IovaMemory({ resolve: (iova) => this.mapRegion(iova) });
    this.control = new this.binding.VduseControl();
    let dev: NativeVduseDevice | null = null;
    try {
      this.control.createDevice(name, features, this.remote.virtqueueCount, 4096, config);
      try {
        dev = new this.binding.VduseDevice(name, (kind, index) => this.ready(kind, index));
        for (let i = 0; i < this.remote.virtqueueCount; i++) {
          dev.setupVq(i, queueSize);
          const q: Queue = { index: i, ring: null, generation: 0, free: [], inFlight: 0, broken: false };
          this.queues.push(q);
        }
      } catch (err) {
        dev?.close();
        this.control.destroyDevice(name);
        throw err;
      }
    } catch (err) {
      this.control.close();
      throw err;
    }
    this.dev = dev;
    this.remote.on('configChange', this.onConfigChange);
    this.remote.pinnedMemory.onRegistrationFailed = (buf, err) => {
      // Once per device: the bytes are copied (counted as bounced), the device keeps working.
      if (this.pinFailureLogged) return;
      this.pinFailureLogged = true;
      const code = (err as Error & { code?: string }).code;
      this.log.warn(`VDUSE device ${this.name}: an IOVA mapping (${buf.length} bytes) cannot be registered with the RDMA device (${err.message}${code ? `, ${code}` : ''}): its requests' bytes are copied`);
    };
  }

  /** How the requests' bytes moved on rdma:// (in place, bounced, inline), since the start. */
  get transfers(): KeyedTransferStats {
    return this.remote.pinnedMemory.stats;
  }

  private get bind(): VduseBind {
    return this.opts.bind ?? 'virtio';
  }

  /** The requests travel by RDMA (keyed transfers): worth registering memory for. */
  private get keyed(): boolean {
    return this.remote.queues[0]?.connection.capabilities.keyed === true;
  }

  /**
   * Creates the VDUSE device for `disk` (whose features were negotiated with vduseRemoteFeatures)
   * and adds it to the vdpa bus, bound to virtio_vdpa (default) or vhost_vdpa.
   */
  static async create(disk: BlockDevice, opts: VduseServeOptions): Promise<VduseBlockDevice> {
    const problem = opts.binding ? null : vduseProblem();
    if (problem) throw new Error(problem);
    const remote = disk.device;
    const bind = opts.bind ?? 'virtio';
    const driverDir = `/sys/bus/vdpa/drivers/${bind === 'virtio' ? 'virtio_vdpa' : 'vhost_vdpa'}`;
    if (!opts.binding && !existsSync(driverDir)) {
      throw new Error(`${driverDir} is missing: modprobe ${bind === 'virtio' ? 'virtio_vdpa' : 'vhost_vdpa'}`);
    }
    const remoteSize = Math.min(...remote.queues.map((q) => q.queueSize));
    let size = Math.min(opts.queueSize ?? remoteSize, remoteSize, 32768);
    // Split rings are a power of 2 in size (the kernel's virtio_ring allocates them so).
    size = 2 ** Math.floor(Math.log2(Math.max(1, size)));
    const features = vduseDeviceFeatures(remote.negotiatedFeatures);
    const config = await VduseBlockDevice.configFor(remote);
    const device = new VduseBlockDevice(disk, opts.name, features, size, config, opts);
    try {
      await device.addToBus(bind);
    } catch (err) {
      await device.close();
      throw err;
    }
    return device;
  }

  /** The remote config space as the kernel sees it: num_queues is the virtqueues served here. */
  private static async configFor(remote: RemoteDevice): Promise<Buffer> {
    const cfg = await remote.readConfig(0, BlkConfig.SIZE);
    if (remote.hasFeature(BlkFeature.MQ)) cfg.writeUInt16LE(remote.virtqueueCount, BlkConfig.num_queues);
    return cfg;
  }

  /** `vdpa dev add`, then the wanted driver; the kernel probes while this process serves. */
  private async addToBus(bind: VduseBind): Promise<void> {
    if (this.opts.binding) return; // tests without a kernel
    await this.vdpa(['dev', 'add', 'name', this.name, 'mgmtdev', 'vduse']);
    this.added = true;
    const want = bind === 'virtio' ? 'virtio_vdpa' : 'vhost_vdpa';
    const sys = `/sys/bus/vdpa/devices/${this.name}`;
    const bound = VduseBlockDevice.driverOf(sys);
    if (bound !== want) {
      // Another vdpa driver took it: move it. These writes probe the device, which needs this
      // process to answer: they run on libuv's thread pool, never on this thread.
      if (bound) await writeFile(`/sys/bus/vdpa/drivers/${bound}/unbind`, this.name);
      if (existsSync(join(sys, 'driver_override'))) await writeFile(join(sys, 'driver_override'), want);
      await writeFile(`/sys/bus/vdpa/drivers/${want}/bind`, this.name);
    }
    // The virtio driver binds (and the disk appears) as the kernel probes, which may be after
    // `vdpa dev add` returns (a module loaded on demand): looked for a bounded while.
    for (let i = 0; i < 100 && !this.devicePath; i++) {
      this.devicePath = VduseBlockDevice.findDevicePath(sys, bind);
      if (!this.devicePath) await new Promise((r) => setTimeout(r, 100));
    }
    if (!this.devicePath) {
      this.log.warn(
        `VDUSE device ${this.name}: no ${bind === 'virtio' ? 'block device' : 'vhost-vdpa device'} appeared under ${sys}` +
          (bind === 'virtio' ? ' (is virtio_blk loaded? modprobe virtio_blk)' : ''),
      );
    }
  }

  private static driverOf(sys: string): string | null {
    try {
      return basename(readlinkSync(join(sys, 'driver')));
    } catch {
      return null;
    }
  }

  /** /dev/vdX (virtio_vdpa: sys/virtioN/block/vdX) or /dev/vhost-vdpa-N. */
  private static findDevicePath(sys: string, bind: VduseBind): string | null {
    try {
      for (const entry of readdirSync(sys)) {
        if (bind === 'vhost' && /^vhost-vdpa-\d+$/.test(entry)) return `/dev/${entry}`;
        if (bind === 'virtio' && /^virtio\d+$/.test(entry)) {
          const blocks = readdirSync(join(sys, entry, 'block'));
          if (blocks[0]) return `/dev/${blocks[0]}`;
        }
      }
    } catch {
      // not there (yet): the caller reports null
    }
    return null;
  }

  private vdpa(args: string[]): Promise<void> {
    const path = this.opts.vdpaPath ?? (existsSync('/usr/sbin/vdpa') ? '/usr/sbin/vdpa' : 'vdpa');
    return new Promise((resolve, reject) => {
      execFile(path, args, { timeout: 120000 }, (err, _stdout, stderr) => {
        if (err) reject(new Error(`${path} ${args.join(' ')}: ${stderr.trim() || err.message}`));
        else resolve();
      });
    });
  }

  /** The device fd or a kick eventfd is readable. */
  private ready(kind: number, index: number): void {
    if (this.closed) return;
    if (kind === READY_MESSAGE) this.messages();
    else if (kind === READY_KICK) this.serve(this.queues[index]);
  }

  private messages(): void {
    for (let n = 0; n < MESSAGES_PER_WAKE && !this.closed; n++) {
      let got: number;
      try {
        got = this.dev.readRequest(this.request);
      } catch (err) {
        this.log.error(`VDUSE device ${this.name}: ${(err as Error).message}`);
        return;
      }
      if (got === 0) return;
      const type = this.request.readUInt32LE(REQ_TYPE);
      const id = this.request.readUInt32LE(REQ_ID);
      this.response.fill(0);
      this.response.writeUInt32LE(id, 0);
      switch (type) {
        case VDUSE_GET_VQ_STATE: {
          const index = this.request.readUInt32LE(REQ_UNION);
          const q = this.queues[index];
          this.response.writeUInt32LE(index, RESP_UNION);
          this.response.writeUInt16LE(q?.ring?.lastAvailIdx ?? 0, RESP_UNION + 4);
          this.respond(q ? RESULT_OK : RESULT_FAILED);
          break;
        }
        case VDUSE_SET_STATUS: {
          const status = this.request.readUInt8(REQ_UNION);
          if (status === 0) {
            // A reset answers once what was in flight has completed (or the wait ran out).
            const response = Buffer.from(this.response);
            void this.reset().then(() => this.respondWith(response, RESULT_OK));
            break;
          }
          this.respond((status & STATUS_DRIVER_OK) !== 0 && !this.started ? (this.start() ? RESULT_OK : RESULT_FAILED) : RESULT_OK);
          break;
        }
        case VDUSE_UPDATE_IOTLB: {
          const start = clampIova(this.request.readBigUInt64LE(REQ_UNION));
          const last = clampIova(this.request.readBigUInt64LE(REQ_UNION + 8));
          // The regions go; the next view of an address there maps it anew (mapRegion). The
          // mappings themselves are unmapped when no view of them is left (their finalizer):
          // a request still in flight keeps its memory.
          this.unpin(this.memory.remove(start, last));
          this.respond(RESULT_OK);
          break;
        }
        default:
          this.log.warn(`VDUSE device ${this.name}: unknown message type ${type}: answered FAILED`);
          this.respond(RESULT_FAILED);
      }
    }
  }

  private respond(result: number): void {
    this.respondWith(this.response, result);
  }

  private respondWith(buf: Buffer, result: number): void {
    if (this.closed) return;
    buf.writeUInt32LE(result, RESP_RESULT);
    try {
      this.dev.writeResponse(buf);
    } catch (err) {
      this.log.warn(`VDUSE device ${this.name}: ${(err as Error).message}`);
    }
  }

  /** The IOVA region holding `iova`, mapped on first use (as libvduse does). */
  private mapRegion(iova: number): boolean {
    if (this.memory.size >= MAX_REGIONS) return false;
    try {
      const r = this.dev.mapIova(iova, iova);
      if (!r) return false;
      // A region the kernel replaced without an UPDATE_IOTLB first: the new one wins.
      this.unpin(this.memory.remove(r.start, r.last));
      // VDUSE's bounce region is the one IOVA region at 0 (coherent ones start above it).
      const bounce = r.start === 0 && this.keyed ? this.bounceMemory(r.last + 1) : null;
      if (bounce) {
        // The kernel's pages are not used: r.mapping goes with its last reference (never touched).
        this.memory.add(r.start, r.last, bounce);
        return true;
      }
      this.memory.add(r.start, r.last, r.mapping);
      // With vhost_vdpa the other regions are the VM's memory, where its requests' bytes are:
      // registered once for as long as they are mapped (a no-op on stream transports). With
      // virtio_vdpa they are VDUSE's coherent allocations, the rings, which no request carries
      // (the kernel's DMA API bounces every request byte).
      if (this.bind === 'vhost') this.pins.set(r.mapping, this.remote.pinMemory(r.mapping));
      return true;
    } catch (err) {
      this.log.warn(`VDUSE device ${this.name}: IOVA 0x${iova.toString(16)}: ${(err as Error).message}`);
      return false;
    }
  }

  /**
   * The bounce memory (see `bounce`), registered with VDUSE and pinned on first use; null when
   * that is refused (logged once: old kernel, RLIMIT_MEMLOCK, a bounce size that changed). Safe
   * when first called: it runs at the first mapping of the bounce region, before any request
   * has a view of it; the kernel copies the bytes of requests it has bounced already.
   */
  private bounceMemory(size: number): Buffer | null {
    if (this.bounce) return this.bounce.memory.length === size ? this.bounce.memory : null;
    if (this.bounceProblem !== null) return null;
    try {
      const memory = this.dev.registerBounceMemory(size);
      this.bounce = { memory, pin: this.remote.pinMemory(memory) };
      this.log.debug(`VDUSE device ${this.name}: ${size} bytes of bounce memory registered (VDUSE_IOTLB_REG_UMEM) for RDMA in place`);
      return memory;
    } catch (err) {
      const code = (err as Error & { code?: string }).code;
      this.bounceProblem = `${(err as Error).message}${code ? ` (${code})` : ''}`;
      this.log.warn(`VDUSE device ${this.name}: bounce memory not registered (${this.bounceProblem}${code === 'ENOTTY' ? ': Linux >= 6.3 has VDUSE_IOTLB_REG_UMEM' : ''}): requests' bytes are copied`);
      return null;
    }
  }

  /** Release the pins of mappings that left `memory`. */
  private unpin(mappings: Buffer[]): void {
    for (const m of mappings) {
      this.pins.get(m)?.release();
      this.pins.delete(m);
    }
  }

  /** DRIVER_OK: the rings of the ready virtqueues, their kick eventfds. */
  private start(): boolean {
    try {
      this.driverFeatures = this.dev.getFeatures();
      const eventIdx = (this.driverFeatures & (1n << VIRTIO_RING_F_EVENT_IDX)) !== 0n;
      for (const q of this.queues) {
        const info = this.dev.vqInfo(q.index);
        if (!info.ready) continue;
        q.generation++;
        q.broken = false;
        q.ring = new SplitRing(this.memory, {
          size: info.num,
          descAddr: info.descAddr,
          driverAddr: info.driverAddr,
          deviceAddr: info.deviceAddr,
          eventIdx,
          availIdx: info.availIdx,
        });
        this.dev.setupKick(q.index);
      }
      this.started = true;
      // Anything the driver queued before the eventfds existed.
      for (const q of this.queues) this.serve(q);
      return true;
    } catch (err) {
      this.log.error(`VDUSE device ${this.name}: cannot start: ${quotePeerString((err as Error).message)}`);
      for (const q of this.queues) q.ring = null;
      return false;
    }
  }

  /** Reset: no ring is served any more; waits (bounded) for what is in flight. */
  private async reset(): Promise<void> {
    this.started = false;
    for (const q of this.queues) {
      q.ring = null;
      q.generation++;
      q.broken = false;
      try {
        this.dev.clearKick(q.index);
      } catch {
        // closed meanwhile
      }
    }
    await this.drained(RESET_WAIT_MS);
    // Every IOVA region goes, as libvduse does when it stops its data plane. With virtio_vdpa
    // the driver frees its rings at a reset and takes new pages at the next probe, often at the
    // same IOVA, and VDUSE says nothing (UPDATE_IOTLB is vhost-vdpa's): a mapping kept from
    // before would be the old, stale rings, and the driver's new requests would never be served
    // (in the VM, a driver unbind/bind hung in its partition scan). Requests still in flight
    // after the wait keep their own views alive; the bounce memory is re-added at its next use.
    this.unpin(this.memory.remove(0, Number.MAX_SAFE_INTEGER));
  }

  private get inFlight(): number {
    let n = 0;
    for (const q of this.queues) n += q.inFlight;
    return n;
  }

  /** Resolves when nothing is in flight, or after `ms`. */
  private drained(ms: number): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      void this.drainSignal.wait().then(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /** A kick (or start): every available chain goes to the remote. */
  private serve(q: Queue | undefined): void {
    if (!q || q.broken || !this.started) return;
    const ring = q.ring;
    if (!ring) return;
    try {
      // Bounded: each pass pops at most the queue size (a head is in flight at most once).
      for (let pass = 0; pass <= this.queueSize; pass++) {
        ring.disableNotifications();
        for (;;) {
          const slot = q.free.pop() ?? new Slot(q, this);
          if (!ring.pop(slot.chain)) {
            q.free.push(slot);
            break;
          }
          this.submit(slot);
        }
        if (!ring.enableNotifications()) return;
      }
    } catch (err) {
      // A RingError is the driver breaking the ring's rules; anything else thrown here is a
      // fault of this process, and stops the queue the same way rather than the process.
      // VDUSE gives a device no way to set NEEDS_RESET: the queue stays stopped until the
      // driver resets the device (or it is removed).
      q.broken = true;
      const what = err instanceof RingError ? '' : ` (${(err as Error).name})`;
      this.log.error(`VDUSE device ${this.name}: virtqueue ${q.index} stopped${what}: ${quotePeerString((err as Error).message)}`);
    }
  }

  private submit(slot: Slot): void {
    const { chain, queue } = slot;
    slot.generation = queue.generation;
    queue.inFlight++;
    const header = chain.readable[0];
    // A flush must go after every request re-sent on a reconnect (RemoteDevice's rule).
    const flush = header !== undefined && header.length >= REQUEST_HEADER.type.width && getLE32(header, REQUEST_HEADER.type) === BlkRequestType.FLUSH;
    this.remote.submitRequest(queue.index, chain.readable, chain.writable, flush, slot.done);
  }

  /** Called by a slot's completion. */
  completed(slot: Slot, err: Error | null, written: number): void {
    const q = slot.queue;
    q.inFlight--;
    const ring = q.ring;
    const chain = slot.chain;
    if (ring && slot.generation === q.generation && !this.closed) {
      let used = written;
      if (err) {
        // The remote could not do it: the driver sees an I/O error in the status byte (the
        // last writable byte of a virtio-blk request).
        const last = chain.writable[chain.writable.length - 1];
        if (last && last.length > 0) last[last.length - 1] = BlkStatus.IOERR;
        used = chain.writableBytes;
        this.log.warn(`VDUSE device ${this.name}: virtqueue ${q.index} request failed: ${err.message}`);
      }
      ring.push(chain.head, Math.min(used, chain.writableBytes));
      if (ring.shouldNotify()) {
        const e = this.dev.injectIrq(q.index);
        if (e !== 0) this.log.debug(`VDUSE device ${this.name}: interrupt of virtqueue ${q.index}: errno ${e}`);
      }
    }
    chain.readable.length = 0;
    chain.writable.length = 0;
    q.free.push(slot);
    if (this.drainSignal.waiting && this.inFlight === 0) this.drainSignal.wake();
  }

  /** A config change from the target (a resize, a format) reaches the kernel's driver. */
  private readonly onConfigChange = (): void => {
    void VduseBlockDevice.configFor(this.remote).then(
      (cfg) => {
        if (this.closed) return;
        this.dev.setConfig(0, cfg);
        const e = this.dev.injectConfigIrq();
        this.log.info(`VDUSE device ${this.name}: config changed (capacity ${cfg.readBigUInt64LE(BlkConfig.capacity)} sectors)${e ? `; interrupt not injected (errno ${e})` : ''}`);
      },
      (err: Error) => this.log.warn(`VDUSE device ${this.name}: cannot read the changed config: ${err.message}`),
    );
  };

  /**
   * Removes the device: `vdpa dev del` (the driver resets it, and its requests complete first),
   * then waits for what is in flight, closes the device fd and destroys the VDUSE device.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.added) {
      await this.vdpa(['dev', 'del', this.name]).catch((err: Error) => this.log.warn(err.message));
      this.added = false;
    }
    await this.drained(RESET_WAIT_MS);
    this.closed = true;
    this.remote.off('configChange', this.onConfigChange);
    // Registrations before the mappings: pins (deregistered once no request uses them), then
    // the bounce memory (VDUSE gets its own pages back), then the device fd.
    for (const pin of this.pins.values()) pin.release();
    this.pins.clear();
    if (this.bounce) {
      this.bounce.pin.release();
      const e = this.dev.deregisterBounceMemory();
      if (e !== 0) this.log.warn(`VDUSE device ${this.name}: VDUSE_IOTLB_DEREG_UMEM: errno ${e}`);
      this.bounce = null;
    }
    this.remote.pinnedMemory.onRegistrationFailed = null;
    this.dev.close();
    const e = this.control.destroyDevice(this.name);
    if (e !== 0) this.log.warn(`VDUSE device ${this.name}: VDUSE_DESTROY_DEV: errno ${e}`);
    this.control.close();
  }
}

/** A u64 IOVA from the kernel as a number (the regions this process maps are all below 2^53). */
function clampIova(v: bigint): number {
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
}
