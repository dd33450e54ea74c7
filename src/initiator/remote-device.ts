import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import {
  COMMAND_ID_CONFIG_CHANGE,
  CONNECT_BODY_SIZE,
  CONTROL_QUEUE_INSTANCE_ID,
  DeviceStatus,
  Opcode,
  Status,
  VIRTIO_OF_CONTROL_QUEUE_SIZE,
  VIRTIO_OF_F_KEYED_NUM_DESCS,
} from '../protocol/constants.js';
import { decodeConfigChangeGeneration, type DecodedCompletion } from '../protocol/completion.js';
import { encodeConnectBody } from '../protocol/connect-body.js';
import { parseDeviceUrl } from '../url.js';
import { transportFor } from '../transport/registry.js';
import type { TlsClientSettings } from '../transport/tcp/tls-settings.js';
import type { InitiatorConnection, Transport } from '../transport/transport.js';
import { defaultLogger, type Logger } from '../util/log.js';
import { VIRTIO_F_ADMIN_VQ } from '../protocol/admin-records.js';
import { AdminClient } from './admin-client.js';
import { QueueClient, type CommandWithoutId } from './queue-client.js';
import { VofConnectionError, VofError } from './vof-error.js';

export interface ConnectOptions {
  /** This initiator's VQN (default "vof-initiator"). */
  readonly ivqn?: string;
  /** Which of the offered device features to accept (default: all of them). */
  readonly negotiateFeatures?: (offered: bigint) => bigint;
  /**
   * How many virtqueues to connect, decided after feature negotiation (e.g. from the device's
   * config space). Default 1.
   */
  readonly queueCount?: (device: RemoteDevice) => Promise<number> | number;
  /** Requested virtqueue size; 0 (default) asks for the largest the target supports. */
  readonly queueSize?: number;
  /**
   * Keepalive: send a Keepalive Command every intervalMs (default 5000) and declare the device
   * lost when the target has sent nothing for timeoutMs (default 15000; checked on its own
   * timer, from the first command on). intervalMs 0 turns both off: the target then destroys
   * this instance once it has heard nothing on any queue for its own keepalive timeout.
   */
  readonly keepaliveIntervalMs?: number;
  readonly keepaliveTimeoutMs?: number;
  readonly connectTimeoutMs?: number;
  /** Largest device-writable payload expected in a completion. */
  readonly maxVqPayload?: number;
  readonly log?: Logger;
  /** tls:// URLs: trust, client certificate or PSK (see TlsClientSettings). */
  readonly tls?: TlsClientSettings;
}

export interface ConfigValue {
  readonly value: bigint;
  readonly generation: number;
}

interface DeviceEvents {
  configChange: [generation: number];
  lost: [error: Error];
  close: [];
}

const WANTED_OF_FEATURES = 1n << VIRTIO_OF_F_KEYED_NUM_DESCS;

/**
 * A connected Virtio-oF device instance, initiator side. Created by connect(), which runs the
 * whole initialization sequence; DRIVER_OK is set when it resolves.
 */
export class RemoteDevice extends EventEmitter<DeviceEvents> {
  instanceId = -1;
  vendorId = 0;
  deviceId = 0;
  /** Virtio-oF features offered by the target and the ones negotiated. */
  offeredOfFeatures = 0n;
  ofFeatures = 0n;
  deviceFeatures = 0n;
  driverFeatures = 0n;
  /** Keyed descriptors per VQ command (keyed transports only; 0 otherwise). */
  maxKeyedDescriptors = 0;
  readonly queues: QueueClient[] = [];
  /** The admin virtqueue, connected on the first admin command. */
  private adminQueue: Promise<QueueClient> | null = null;
  private adminClient: AdminClient | null = null;
  private keepaliveTimer: NodeJS.Timeout | null = null;
  private silenceTimer: NodeJS.Timeout | null = null;
  /** Monotonic (performance.now()): a wall-clock step must not look like silence. */
  private lastHeard = performance.now();
  private closing: Promise<void> | null = null;
  private lostError: Error | null = null;
  private aborted = false;

  private constructor(
    readonly url: string,
    readonly tvqn: string,
    readonly ivqn: string,
    readonly control: QueueClient,
    private readonly transport: Transport,
    private readonly options: ConnectOptions,
    private readonly log: Logger,
    /** The Connect Body, sent on the control queue and on every virtqueue (binding rule). */
    private readonly connectBody: Buffer,
  ) {
    super();
    control.onActivity = () => {
      this.lastHeard = performance.now();
    };
    control.onEvent = (c) => {
      if (c.readUInt16LE(2) === COMMAND_ID_CONFIG_CHANGE) this.emit('configChange', decodeConfigChangeGeneration(c));
    };
    control.onClosed = (err) => this.closedByTarget('control queue', err);
    this.checkKeepaliveSettings();
    this.watchForSilence();
  }

  private get keepaliveIntervalMs(): number {
    return this.options.keepaliveIntervalMs ?? 5000;
  }
  private get keepaliveTimeoutMs(): number {
    return this.options.keepaliveTimeoutMs ?? 15000;
  }

  private checkKeepaliveSettings(): void {
    const interval = this.keepaliveIntervalMs;
    const timeout = this.keepaliveTimeoutMs;
    if (interval <= 0) {
      this.log.warn(`${this.url}: keepalive disabled: a target destroys this instance once it hears nothing on any queue for its keepalive timeout (vof: 15 s by default), and a vanished target goes unnoticed until a request fails`);
    } else if (timeout > 0 && timeout < interval) {
      this.log.warn(`${this.url}: keepalive timeout ${timeout} ms is below the interval ${interval} ms: an idle but healthy target may be declared lost; use a timeout of about 3 intervals`);
    }
  }

  /** Dead-target detection on its own timer, re-armed for the remaining time when something was heard. */
  private watchForSilence(delayMs = this.keepaliveTimeoutMs): void {
    if (this.keepaliveIntervalMs <= 0 || this.keepaliveTimeoutMs <= 0) return;
    this.silenceTimer = setTimeout(() => {
      if (this.lostError || this.closing || this.aborted) return;
      const silent = performance.now() - this.lastHeard;
      if (silent >= this.keepaliveTimeoutMs) {
        this.lose(new VofConnectionError(`target silent for ${Math.round(silent)} ms: device lost (keepalive timeout ${this.keepaliveTimeoutMs} ms)`));
        return;
      }
      this.watchForSilence(this.keepaliveTimeoutMs - silent);
    }, Math.max(1, Math.ceil(delayMs)));
    this.silenceTimer.unref();
  }

  /** A queue closed without our asking: the target dropped the instance (or the link broke). */
  private closedByTarget(what: string, err: Error): void {
    if (this.closing || this.aborted) return;
    this.lose(
      new VofConnectionError(
        `${what} closed by the target (a target destroys an instance it has not heard from within its keepalive timeout${this.keepaliveIntervalMs <= 0 ? '; this initiator sends no keepalives' : ''}): ${err.message}`,
      ),
    );
  }

  /** Connect to tcp://HOST[:PORT]/TVQN (or rdma://…) and bring the device to DRIVER_OK. */
  static async connect(url: string, options: ConnectOptions = {}): Promise<RemoteDevice> {
    const addr = parseDeviceUrl(url);
    const log = options.log ?? defaultLogger();
    const transport = await transportFor(addr.scheme, log);
    const ivqn = options.ivqn ?? 'vof-initiator';
    const body = encodeConnectBody({ ivqn, tvqn: addr.tvqn });
    const conn = await transport.connect(addr.endpoint, connectOpts(options));
    const control = new QueueClient(conn, VIRTIO_OF_CONTROL_QUEUE_SIZE);
    const dev = new RemoteDevice(url, addr.tvqn, ivqn, control, transport, options, log, body);
    try {
      await dev.initialize();
    } catch (err) {
      await dev.abort();
      throw err;
    }
    return dev;
  }

  /** Send one control-queue command; a non-SUCCESS status rejects with VofError. */
  async command(cmd: CommandWithoutId, body?: Buffer, detail?: string): Promise<DecodedCompletion> {
    const c = await this.control.call(cmd, body);
    if (c.status !== Status.SUCCESS) throw new VofError(c.status, cmd.opcode, detail);
    return c;
  }

  private async initialize(): Promise<void> {
    const c = await this.command(
      { opcode: Opcode.Connect, deviceInstanceId: CONTROL_QUEUE_INSTANCE_ID, vqIndex: 0, length: CONNECT_BODY_SIZE, queueSize: VIRTIO_OF_CONTROL_QUEUE_SIZE },
      this.connectBody,
      `"${this.ivqn}" → "${this.tvqn}" at ${this.control.connection.peer}`,
    );
    if (c.kind === 'connect') this.instanceId = c.deviceInstanceId;

    this.offeredOfFeatures = featureOf(await this.command({ opcode: Opcode.GetFeature, featureSelect: 0 }));
    this.ofFeatures = this.offeredOfFeatures & WANTED_OF_FEATURES;
    await this.command({ opcode: Opcode.SetFeature, featureSelect: 0, feature: this.ofFeatures });
    if (this.ofFeatures & (1n << VIRTIO_OF_F_KEYED_NUM_DESCS)) {
      const k = await this.command({ opcode: Opcode.GetKeyedNumDescs });
      this.maxKeyedDescriptors = k.kind === 'keyedNumDescs' ? k.descs : 0;
      if (this.maxKeyedDescriptors < 1) throw new VofConnectionError('target allows no keyed descriptors');
    }
    this.vendorId = u32Of(await this.command({ opcode: Opcode.GetVendorId }));
    this.deviceId = u32Of(await this.command({ opcode: Opcode.GetDeviceId }));

    await this.command({ opcode: Opcode.ResetDevice });
    let status: number = DeviceStatus.ACKNOWLEDGE;
    await this.setStatus(status);
    status |= DeviceStatus.DRIVER;
    await this.setStatus(status);

    const lo = featureOf(await this.command({ opcode: Opcode.GetDeviceFeature, featureSelect: 0 }));
    const hi = featureOf(await this.command({ opcode: Opcode.GetDeviceFeature, featureSelect: 1 }));
    this.deviceFeatures = lo | (hi << 64n);
    const negotiate = this.options.negotiateFeatures ?? ((f: bigint) => f);
    this.driverFeatures = negotiate(this.deviceFeatures) & this.deviceFeatures;
    const mask = (1n << 64n) - 1n;
    await this.command({ opcode: Opcode.SetDriverFeature, featureSelect: 0, feature: this.driverFeatures & mask });
    await this.command({ opcode: Opcode.SetDriverFeature, featureSelect: 1, feature: this.driverFeatures >> 64n });
    status |= DeviceStatus.FEATURES_OK;
    await this.setStatus(status);
    if (((await this.getStatus()) & DeviceStatus.FEATURES_OK) === 0) {
      throw new VofConnectionError('device did not accept the negotiated features (FEATURES_OK not set)');
    }

    const count = (await this.options.queueCount?.(this)) ?? 1;
    for (let vq = 0; vq < count; vq++) await this.connectQueue(vq);

    status |= DeviceStatus.DRIVER_OK;
    await this.setStatus(status);
    this.startKeepalive();
  }

  private async connectQueue(vqIndex: number): Promise<void> {
    this.queues.push(await this.openQueue(vqIndex));
  }

  private async openQueue(vqIndex: number): Promise<QueueClient> {
    const sizeC = await this.command({ opcode: Opcode.GetVqSize, vqIndex });
    const max = sizeC.kind === 'vqSize' ? sizeC.size : 0;
    const want = this.options.queueSize ?? 0;
    const size = want > 0 ? Math.min(want, max) : max;
    if (size < 1) throw new VofConnectionError(`virtqueue ${vqIndex} has size 0`);
    const conn: InitiatorConnection = await this.transport.connect(
      parseDeviceUrl(this.url).endpoint,
      connectOpts(this.options),
    );
    conn.maxKeyedDescriptors = this.maxKeyedDescriptors;
    const q = new QueueClient(conn, 1);
    q.onClosed = (err) => this.closedByTarget(`virtqueue ${vqIndex}`, err);
    let c: DecodedCompletion;
    try {
      // Always with the Connect Body: a target with an allow-list requires it on virtqueues.
      c = await q.call(
        { opcode: Opcode.Connect, deviceInstanceId: this.instanceId, vqIndex, length: CONNECT_BODY_SIZE, queueSize: size },
        this.connectBody,
      );
      if (c.status !== Status.SUCCESS) throw new VofError(c.status, Opcode.Connect, `virtqueue ${vqIndex}`);
    } catch (err) {
      q.onClosed = () => {};
      await q.close();
      throw err;
    }
    q.queueSize = size;
    return q;
  }

  /**
   * Admin commands (the Admin Virtqueue, VIRTIO_F_ADMIN_VQ). The admin queue is connected on
   * first use; without the feature every call rejects.
   */
  get admin(): AdminClient {
    this.adminClient ??= new AdminClient(async (readable, writable) => {
      const q = await this.connectAdminQueue();
      const result = Buffer.alloc(writable);
      const c = await q.vq([readable], [result]);
      if (c.status !== Status.SUCCESS) throw new VofError(c.status, Opcode.Vq, 'admin virtqueue');
      return result.subarray(0, c.kind === 'vq' ? c.length : 0);
    });
    return this.adminClient;
  }

  /** Index of the admin virtqueue, or null when VIRTIO_F_ADMIN_VQ was not negotiated. */
  adminQueueIndex: number | null = null;

  private connectAdminQueue(): Promise<QueueClient> {
    if (!this.hasFeature(VIRTIO_F_ADMIN_VQ)) {
      return Promise.reject(new VofConnectionError(`${this.url}: the device has no admin virtqueue (VIRTIO_F_ADMIN_VQ not negotiated)`));
    }
    if (this.lostError || this.closing) return Promise.reject(this.lostError ?? new VofConnectionError('device closed'));
    this.adminQueue ??= (async () => {
      this.adminQueueIndex = await this.findAdminQueueIndex();
      return this.openQueue(this.adminQueueIndex);
    })();
    // A failed attempt may be retried by the next call.
    this.adminQueue.catch(() => (this.adminQueue = null));
    return this.adminQueue;
  }

  /**
   * The admin queue is the last virtqueue (docs/PROTOCOL.md): the largest index Get VQ Size
   * answers. Found by doubling then bisecting, from the virtqueues known to exist.
   */
  private async findAdminQueueIndex(): Promise<number> {
    const exists = async (vqIndex: number) => (await this.control.call({ opcode: Opcode.GetVqSize, vqIndex })).status === Status.SUCCESS;
    let lo = this.queues.length - 1; // known to exist (or -1)
    let hi = Math.max(1, this.queues.length);
    while (hi <= 0xffff && (await exists(hi))) {
      lo = hi;
      hi *= 2;
    }
    hi = Math.min(hi, 0x10000);
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (await exists(mid)) lo = mid;
      else hi = mid;
    }
    if (lo < 0) throw new VofConnectionError('Get VQ Size answers for no virtqueue: no admin queue');
    return lo;
  }

  async setStatus(status: number): Promise<void> {
    await this.command({ opcode: Opcode.SetStatus, status });
  }

  async getStatus(): Promise<number> {
    return u32Of(await this.command({ opcode: Opcode.GetStatus }));
  }

  /** Read 1, 2, 4 or 8 config bytes at offset. Re-arms config change notifications. */
  async getConfig(offset: number, bytes: 1 | 2 | 4 | 8): Promise<ConfigValue> {
    const c = await this.command({ opcode: Opcode.GetConfig, offset, bytes });
    if (c.kind !== 'config') throw new Error('unexpected completion');
    return { value: c.config, generation: c.generation };
  }

  async setConfig(offset: number, bytes: 1 | 2 | 4 | 8, value: bigint | number): Promise<void> {
    await this.command({ opcode: Opcode.SetConfig, offset, bytes, config: BigInt(value) });
  }

  /**
   * Read a consistent run of config bytes: retried while the generation changes underneath,
   * as the virtio spec asks of drivers.
   */
  async readConfig(offset: number, length: number): Promise<Buffer> {
    for (;;) {
      const out = Buffer.alloc(length);
      let generation = -1;
      let consistent = true;
      for (let pos = 0; pos < length; ) {
        const left = length - pos;
        const bytes = left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
        const { value, generation: g } = await this.getConfig(offset + pos, bytes);
        if (generation >= 0 && g !== generation) consistent = false;
        generation = g;
        const tmp = Buffer.alloc(8);
        tmp.writeBigUInt64LE(value);
        tmp.copy(out, pos, 0, bytes);
        pos += bytes;
      }
      if (consistent) return out;
    }
  }

  get negotiatedFeatures(): bigint {
    return this.driverFeatures;
  }

  hasFeature(bit: bigint): boolean {
    return (this.driverFeatures & (1n << bit)) !== 0n;
  }

  /**
   * Submit one request on virtqueue `vqIndex`: `out` is device-readable, `inBuffers` device-
   * writable. Resolves with the number of bytes the device wrote.
   */
  async request(vqIndex: number, out: readonly Buffer[], inBuffers: readonly Buffer[]): Promise<number> {
    if (this.lostError) throw this.lostError;
    const q = this.queues[vqIndex];
    if (!q) throw new RangeError(`no virtqueue ${vqIndex} (connected: ${this.queues.length})`);
    const c = await q.vq(out, inBuffers);
    if (c.status !== Status.SUCCESS) throw new VofError(c.status, Opcode.Vq, `virtqueue ${vqIndex}`);
    return c.kind === 'vq' ? c.length : 0;
  }

  private startKeepalive(): void {
    const interval = this.keepaliveIntervalMs;
    if (interval <= 0) return;
    this.keepaliveTimer = setInterval(() => {
      this.control.call({ opcode: Opcode.Keepalive }).catch(() => {});
    }, interval);
    this.keepaliveTimer.unref();
  }

  /** The device is unusable: fail everything, release the connections, tell listeners once. */
  private lose(err: Error): void {
    if (this.lostError || this.closing || this.aborted) return;
    this.lostError = err;
    this.log.warn(`${this.url}: ${err.message}`);
    void this.abort();
    this.emit('lost', err);
  }

  get lost(): Error | null {
    return this.lostError;
  }

  private abort(): Promise<void> {
    this.aborted = true;
    if (this.keepaliveTimer) clearInterval(this.keepaliveTimer);
    if (this.silenceTimer) clearTimeout(this.silenceTimer);
    const err = this.lostError ?? new VofConnectionError('device closed');
    const admin = this.adminQueue;
    const all = [...this.queues, this.control];
    for (const q of all) q.failAll(err);
    return Promise.all([
      ...all.map((q) => q.close()),
      admin?.then((q) => (q.failAll(err), q.close()), () => {}),
    ]).then(() => {});
  }

  /** Orderly shutdown: disconnect the virtqueues, then the control queue (which ends the instance). */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    if (this.keepaliveTimer) clearInterval(this.keepaliveTimer);
    if (this.silenceTimer) clearTimeout(this.silenceTimer);
    if (!this.lostError) {
      const disconnect = (q: QueueClient) =>
        q.closed ? Promise.resolve() : q.call({ opcode: Opcode.Disconnect }).then(() => {}, () => {});
      const admin = this.adminQueue ? await this.adminQueue.catch(() => null) : null;
      await Promise.all([...this.queues, ...(admin ? [admin] : [])].map(disconnect));
      await disconnect(this.control);
    }
    await this.abort();
    this.emit('close');
  }
}

function connectOpts(o: ConnectOptions) {
  return { timeoutMs: o.connectTimeoutMs ?? 10000, maxVqPayload: o.maxVqPayload ?? 64 * 1024 * 1024, ...(o.tls && { tls: o.tls }) };
}

function featureOf(c: DecodedCompletion): bigint {
  return c.kind === 'feature' ? c.feature : 0n;
}
function u32Of(c: DecodedCompletion): number {
  return c.kind === 'u32' ? c.value : 0;
}

export const connect = RemoteDevice.connect;
