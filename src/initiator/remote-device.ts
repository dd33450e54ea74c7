import { EventEmitter } from 'node:events';
import {
  COMMAND_ID_CONFIG_CHANGE,
  CONNECT_BODY_SIZE,
  DeviceStatus,
  Opcode,
  Status,
} from '../protocol/constants.js';
import { decodeConfigChangeGeneration, type DecodedCompletion } from '../protocol/completion.js';
import { parseDeviceUrl } from '../transport/url.js';
import type { InitiatorConnection, Transport } from '../transport/transport.js';
import { PinnedMemory, type PinHandle } from '../transport/pinned-memory.js';
import { defaultLogger, type Logger } from '../util/log.js';
import type { AdminClient } from './admin-client.js';
import { AdminQueue } from './admin-queue.js';
import { InitiatorQueue, type CommandWithoutId } from './initiator-queue.js';
import { IoSlot, type RequestCallback, type RequestOwner } from './io-slot.js';
import { connectControlPath, type ControlPath } from './control-path.js';
import { COMMAND_ID_DRAIN } from '../protocol/redirect-record.js';
import { reconnectPolicy, reconnects, type DeviceState, type ReconnectPolicy } from '../util/reconnect-policy.js';
import { checkKeepaliveSettings, connectOpts, DEFAULT_KEEPALIVE_INTERVAL_MS, DEFAULT_KEEPALIVE_TIMEOUT_MS, pathOpts, type ConnectOptions } from './connect-options.js';
import { readConsistentConfig, type ConfigFieldReader, type ConfigValue } from './device-config.js';
import { Liveness } from '../util/liveness.js';
import { VofConnectionError, VofError } from './vof-error.js';
import { authKeyOf } from './auth-handshake.js';
import { negotiate, u32Of, type ResumePoint } from './init-sequence.js';
import { superviseReconnect, type SupervisedPath } from './path-supervisor.js';
import { getLE16 } from '../protocol/fields.js';
import { COMPLETION_HEADER } from '../protocol/header.js';

// Moved to their own modules; still exported from here, where callers found them.
export type { ConnectOptions } from './connect-options.js';
export type { ConfigReader, ConfigValue } from './device-config.js';

/** The IVQN an initiator presents when it is not given one (documented in docs/CLI.md and LIBRARY.md). */
export const DEFAULT_IVQN = 'vof-initiator';

interface DeviceEvents {
  configChange: [generation: number];
  /** A queue or the keepalive failed; I/O is held while the device reconnects. */
  disconnected: [error: Error];
  /** Reconnect attempt `attempt` of `of` ("unlimited" with a loss timeout of -1) starts. */
  reconnecting: [attempt: number, of: string];
  /** Back to DRIVER_OK after `attempts` attempts; held and unfinished requests go out again. */
  reconnected: [attempts: number];
  lost: [error: Error];
  close: [];
}

interface Held {
  readonly resolve: () => void;
  readonly reject: (e: Error) => void;
}

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
  /** vof inline data: readable parts up to this many bytes travel inline (0: not negotiated). */
  inlineDataBytes = 0;
  readonly queues: InitiatorQueue[] = [];
  /** Virtqueues in use (stays the same while reconnecting, when `queues` is empty). */
  virtqueueCount = 0;
  private stateValue: DeviceState = 'connecting';
  private readonly policy: ReconnectPolicy;
  /** Bumped on every path failure: callbacks of an older connection are ignored. */
  private generation = 0;
  /** I/O waiting for the reconnect. */
  private held: Held[] = [];
  /** Set once the fast-io-fail timeout passed while disconnected: I/O fails at once. */
  private ioFailError: Error | null = null;
  /** Requests sent again after a reconnect and not completed yet (flushes wait for them). */
  private readonly resubmitting = new Set<IoSlot>();
  /** Requests sent again after a reconnect, in total (for tests and monitoring). */
  resubmittedRequests = 0;
  /**
   * The device's I/O slots (see IoSlot), every one made, and the free ones: one is made
   * only when all are busy. A slot is `active` while sent on the current connection and not
   * completed (a drain waits for those).
   */
  private readonly ioSlots: IoSlot[] = [];
  private readonly freeIoSlots: IoSlot[] = [];
  /** Where the queues report each I/O slot's outcome (bound once). */
  private readonly ioOwner: RequestOwner = {
    requestCompleted: (req, status, written) => {
      if (status !== Status.SUCCESS) this.endRequest(req, new VofError(status, Opcode.Vq, `virtqueue ${req.vqIndex}`), 0);
      else this.endRequest(req, null, written);
    },
    requestFailed: (req, err) => this.requestFailed(req, err),
  };
  /** The target asked this initiator to move: new I/O is held until the move. */
  private draining = false;
  /** Virtqueues whose Connect is in flight (failed with the rest on a path failure). */
  private readonly opening = new Set<InitiatorQueue>();
  /** The admin virtqueue, connected on the first admin command. */
  private readonly adminQueue = new AdminQueue({
    url: () => this.url,
    control: () => this.control,
    virtqueuesConnected: () => this.queues.length,
    hasFeature: (bit) => this.hasFeature(bit),
    unusable: () => (this.lostError || this.closing ? (this.lostError ?? new VofConnectionError('device closed')) : null),
    whenUsable: () => this.whenUsable(),
    openQueue: (vqIndex) => this.openQueue(vqIndex),
  });
  /** Keepalives and dead-target detection. */
  private readonly liveness: Liveness;
  private closing: Promise<void> | null = null;
  private lostError: Error | null = null;
  private aborted = false;

  /** Where the device is now: the URL asked for, or where redirects and drains led. */
  url: string;
  tvqn: string;
  control: InitiatorQueue;
  private transport: Transport;
  /** The Connect Body, sent on the control queue and on every virtqueue (binding rule). */
  private connectBody: Buffer;

  private constructor(
    /** The URL given to connect(). */
    readonly requestedUrl: string,
    readonly ivqn: string,
    path: ControlPath,
    private readonly options: ConnectOptions,
    private readonly log: Logger,
  ) {
    super();
    this.url = path.url;
    this.tvqn = path.tvqn;
    this.control = path.control;
    this.transport = path.transport;
    this.connectBody = path.connectBody;
    this.instanceId = path.instanceId;
    this.policy = reconnectPolicy(options);
    // Interval 0 turns dead-target detection off as well (ConnectOptions.keepaliveIntervalMs).
    this.liveness = new Liveness(
      this.keepaliveIntervalMs,
      this.keepaliveIntervalMs > 0 ? this.keepaliveTimeoutMs : 0,
      () => void this.control.call({ opcode: Opcode.Keepalive }).catch(() => {}),
      (silent) => this.silent(silent),
    );
    this.attachControl(path.control);
    this.liveness.watch();
  }

  /** connecting, connected, reconnecting (I/O held), lost or closed. */
  get state(): DeviceState {
    return this.stateValue;
  }

  private attachControl(control: InitiatorQueue): void {
    const generation = this.generation;
    control.onActivity = () => this.liveness.heard();
    control.onEvent = (c) => {
      if (generation !== this.generation) return;
      const id = getLE16(c, COMPLETION_HEADER.commandId);
      if (id === COMMAND_ID_CONFIG_CHANGE) this.emit('configChange', decodeConfigChangeGeneration(c));
      else if (id === COMMAND_ID_DRAIN) void this.drainRequested(generation);
    };
    control.onClosed = (err) => {
      if (generation === this.generation) this.closedByTarget('control queue', err);
    };
  }

  private get keepaliveIntervalMs(): number {
    return this.options.keepaliveIntervalMs ?? DEFAULT_KEEPALIVE_INTERVAL_MS;
  }
  private get keepaliveTimeoutMs(): number {
    return this.options.keepaliveTimeoutMs ?? DEFAULT_KEEPALIVE_TIMEOUT_MS;
  }

  /** The target has sent nothing for the keepalive timeout. */
  private silent(silentMs: number): void {
    if (this.lostError || this.closing || this.aborted || this.stateValue === 'reconnecting') return;
    const what = reconnects(this.policy) ? 'path failed' : 'device lost';
    this.pathFailed(new VofConnectionError(`target silent for ${Math.round(silentMs)} ms: ${what} (keepalive timeout ${this.keepaliveTimeoutMs} ms)`));
  }

  /** A queue closed without our asking: the target dropped the instance (or the link broke). */
  private closedByTarget(what: string, err: Error): void {
    if (this.closing || this.aborted) return;
    this.pathFailed(
      new VofConnectionError(
        `${what} closed by the target (a target destroys an instance it has not heard from within its keepalive timeout${this.keepaliveIntervalMs <= 0 ? '; this initiator sends no keepalives' : ''}): ${err.message}`,
      ),
    );
  }

  /** Connect to tcp://HOST[:PORT]/TVQN (or rdma://…) and bring the device to DRIVER_OK. */
  static async connect(url: string, options: ConnectOptions = {}): Promise<RemoteDevice> {
    parseDeviceUrl(url);
    const log = options.log ?? defaultLogger();
    const ivqn = options.ivqn ?? DEFAULT_IVQN;
    checkKeepaliveSettings(url, options.keepaliveIntervalMs ?? DEFAULT_KEEPALIVE_INTERVAL_MS, options.keepaliveTimeoutMs ?? DEFAULT_KEEPALIVE_TIMEOUT_MS, log);
    if (options.authSecret !== undefined) authKeyOf(options.authSecret); // a bad secret fails before any connection
    const path = await connectControlPath(url, { ivqn, log, ...pathOpts(options) });
    const dev = new RemoteDevice(url, ivqn, path, options, log);
    try {
      await dev.initialize();
    } catch (err) {
      await dev.abort();
      throw err;
    }
    return dev;
  }

  /**
   * Send one control-queue command; a non-SUCCESS status rejects with VofError. While the
   * device reconnects the command waits (it is not re-sent if its connection fails).
   */
  async command(cmd: CommandWithoutId, body?: Buffer, detail?: string): Promise<DecodedCompletion> {
    await this.whenUsable();
    return this.controlCommand(cmd, body, detail);
  }

  /** A control command on the current control queue, whatever the state (initialization). */
  private async controlCommand(cmd: CommandWithoutId, body?: Buffer, detail?: string): Promise<DecodedCompletion> {
    const c = await this.control.call(cmd, body);
    if (c.status !== Status.SUCCESS) throw new VofError(c.status, cmd.opcode, detail);
    return c;
  }

  /**
   * The initialization sequence on the current control queue (init-sequence.ts up to
   * FEATURES_OK), then the virtqueues and DRIVER_OK. With `resume` (a reconnect) the device must
   * offer at least what was negotiated before, and the same number of virtqueues is connected.
   */
  private async initialize(resume?: ResumePoint): Promise<void> {
    const agreed = await negotiate(
      { url: this.url, ivqn: this.ivqn, tvqn: this.tvqn, instanceId: this.instanceId, options: this.options, log: this.log, call: (cmd, body) => this.control.call(cmd, body) },
      resume,
    );
    this.offeredOfFeatures = agreed.offeredOfFeatures;
    this.ofFeatures = agreed.ofFeatures;
    this.maxKeyedDescriptors = agreed.maxKeyedDescriptors;
    this.inlineDataBytes = agreed.inlineDataBytes;
    this.vendorId = agreed.vendorId;
    this.deviceId = agreed.deviceId;
    this.deviceFeatures = agreed.deviceFeatures;
    this.driverFeatures = agreed.driverFeatures;

    if (resume) await this.options.verifyResume?.((offset, length) => this.readConfig(offset, length, (o, b) => this.configAt(o, b)));
    const count = resume ? resume.queueCount : ((await this.options.queueCount?.(this)) ?? 1);
    for (let vq = 0; vq < count; vq++) await this.connectQueue(vq);
    this.virtqueueCount = count;

    await this.controlCommand({ opcode: Opcode.SetStatus, status: agreed.status | DeviceStatus.DRIVER_OK });
    this.stateValue = 'connected';
    this.liveness.startKeepalive();
  }

  private async connectQueue(vqIndex: number): Promise<void> {
    this.queues.push(await this.openQueue(vqIndex));
  }

  private async openQueue(vqIndex: number): Promise<InitiatorQueue> {
    const sizeC = await this.controlCommand({ opcode: Opcode.GetVqSize, vqIndex });
    const max = sizeC.kind === 'vqSize' ? sizeC.size : 0;
    const want = this.options.queueSize ?? 0;
    const size = want > 0 ? Math.min(want, max) : max;
    if (size < 1) throw new VofConnectionError(`virtqueue ${vqIndex} has size 0`);
    const inline = this.inlineDataBytes > 0 ? { inlineData: { bytes: this.inlineDataBytes, maxDescriptors: this.maxKeyedDescriptors } } : {};
    const conn: InitiatorConnection = await this.transport.connect(parseDeviceUrl(this.url).endpoint, {
      ...connectOpts(this.options),
      queueSize: size,
      ...(this.options.keyedMemory && { keyedMemory: this.options.keyedMemory }),
      pinnedMemory: this.pinnedMemory,
      ...inline,
    });
    conn.maxKeyedDescriptors = this.maxKeyedDescriptors;
    const q = new InitiatorQueue(conn, 1);
    const generation = this.generation;
    q.onClosed = (err) => {
      if (generation === this.generation) this.closedByTarget(`virtqueue ${vqIndex}`, err);
    };
    let c: DecodedCompletion;
    this.opening.add(q);
    try {
      // Always with the Connect Body: a target with an allow-list requires it on virtqueues.
      c = await q.call(
        { opcode: Opcode.Connect, deviceInstanceId: this.instanceId, vqIndex, length: CONNECT_BODY_SIZE, queueSize: size },
        this.connectBody,
      );
      if (c.status !== Status.SUCCESS) throw new VofError(c.status, Opcode.Connect, `virtqueue ${vqIndex}`);
      if (generation !== this.generation) throw new VofConnectionError(`virtqueue ${vqIndex}: connection dropped while connecting`);
    } catch (err) {
      q.onClosed = () => {};
      await q.close();
      throw err;
    } finally {
      this.opening.delete(q);
    }
    q.queueSize = size;
    return q;
  }

  /**
   * Admin commands (the Admin Virtqueue, VIRTIO_F_ADMIN_VQ). The admin queue is connected on
   * first use; without the feature every call rejects.
   */
  get admin(): AdminClient {
    return this.adminQueue.client;
  }

  /** Index of the admin virtqueue, or null when VIRTIO_F_ADMIN_VQ was not negotiated. */
  get adminQueueIndex(): number | null {
    return this.adminQueue.index;
  }

  async setStatus(status: number): Promise<void> {
    await this.command({ opcode: Opcode.SetStatus, status });
  }

  async getStatus(): Promise<number> {
    return u32Of(await this.command({ opcode: Opcode.GetStatus }));
  }

  /** Read 1, 2, 4 or 8 config bytes at offset. Re-arms config change notifications. */
  async getConfig(offset: number, bytes: 1 | 2 | 4 | 8): Promise<ConfigValue> {
    await this.whenUsable();
    return this.configAt(offset, bytes);
  }

  private async configAt(offset: number, bytes: 1 | 2 | 4 | 8): Promise<ConfigValue> {
    const c = await this.controlCommand({ opcode: Opcode.GetConfig, offset, bytes });
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
  async readConfig(offset: number, length: number, get: ConfigFieldReader = (o, b) => this.getConfig(o, b)): Promise<Buffer> {
    return readConsistentConfig(offset, length, get);
  }

  get negotiatedFeatures(): bigint {
    return this.driverFeatures;
  }

  hasFeature(bit: bigint): boolean {
    return (this.driverFeatures & (1n << bit)) !== 0n;
  }

  /**
   * Buffers pinned with pinMemory, registered by every rdma:// queue (again after a reconnect),
   * and how the queues' VQ bytes moved (`stats`: in place, bounced, inline).
   */
  readonly pinnedMemory = new PinnedMemory();

  /**
   * Keep `buf` (the caller's long-lived memory, valid until release()) registered on every
   * rdma:// queue so that requests whose buffers lie inside it (any slice) move with no copy; the
   * target still reaches it only through each request's own memory windows. A no-op on stream
   * transports. A registration that fails is reported to `pinnedMemory.onRegistrationFailed` and
   * those bytes are copied, as for any Buffer. release() waits for requests in flight over it.
   */
  pinMemory(buf: Buffer): PinHandle {
    return this.pinnedMemory.pin(buf);
  }

  /** Buffers from allocateBuffer, with the call that gives each back to its transport. */
  private readonly allocated = new WeakMap<Buffer, (b: Buffer) => void>();

  /**
   * `size` bytes of memory the transport moves with no copy when given to request() (or to
   * BlockDevice read/write, whole or as a slice): on rdma:// registered memory shared by every
   * queue on that RDMA device (the target reaches it only through per-request memory windows);
   * a plain Buffer on stream transports or while no queue is connected. Give it back with
   * freeBuffer once no request uses it.
   */
  allocateBuffer(size: number): Buffer {
    const conn = this.queues.find((q) => q.connection.capabilities.registeredMemory)?.connection;
    if (!conn) return Buffer.alloc(size);
    const buf = conn.allocateBuffer(size);
    this.allocated.set(buf, conn.freeBuffer.bind(conn));
    return buf;
  }

  /** Give back a buffer from allocateBuffer (a plain Buffer is left to the garbage collector). */
  freeBuffer(buf: Buffer): void {
    const free = this.allocated.get(buf);
    if (!free) return;
    this.allocated.delete(buf);
    free(buf);
  }

  /**
   * Submit one request on virtqueue `vqIndex`: `out` is device-readable, `inBuffers` device-
   * writable. Resolves with the number of bytes the device wrote. With reconnect on, a request
   * whose connection fails before its completion is held and sent again after the reconnect;
   * `flush` marks a request that must go after every re-submitted one (see IoSlot).
   * The buffers and arrays are the caller's until it settles. The returned Promise is the only
   * object made per request (see submitRequest for none).
   */
  request(vqIndex: number, out: readonly Buffer[], inBuffers: readonly Buffer[], options?: { flush?: boolean }): Promise<number> {
    const req = this.takeIoSlot();
    req.start(vqIndex, out, inBuffers, options?.flush ?? false, req.settle);
    const done = new Promise<number>(req.executor);
    this.dispatch(req);
    return done;
  }

  /**
   * As request(), with no Promise: `callback` gets the error or the bytes the device wrote,
   * never inside this call. For callers that keep many requests in flight and want nothing
   * allocated per request (the NBD bridge, vof bench).
   */
  submitRequest(vqIndex: number, out: readonly Buffer[], inBuffers: readonly Buffer[], flush: boolean, callback: RequestCallback): void {
    const req = this.takeIoSlot();
    req.start(vqIndex, out, inBuffers, flush, callback);
    this.dispatch(req);
  }

  /** I/O slots made (at most the most requests ever in flight at once) and free now. */
  get requestSlots(): { made: number; free: number } {
    return { made: this.ioSlots.length, free: this.freeIoSlots.length };
  }

  /** A free I/O slot; a new one only when every slot is busy. */
  private takeIoSlot(): IoSlot {
    let req = this.freeIoSlots.pop();
    if (!req) {
      req = new IoSlot(this.ioOwner);
      this.ioSlots.push(req);
    }
    return req;
  }

  /** Connected and nothing to order after: sent synchronously, as callers may rely on. */
  private dispatch(req: IoSlot): void {
    const q = this.queues[req.vqIndex];
    if (this.stateValue !== 'connected' || this.draining || this.lostError || this.closing || this.aborted || (req.isFlush && this.resubmitting.size > 0) || !q) {
      void this.dispatchLater(req);
      return;
    }
    this.sendRequest(req, q);
  }

  private sendRequest(req: IoSlot, q: InitiatorQueue): void {
    req.generation = this.generation;
    req.active = true;
    req.arm();
    q.enqueue(req);
  }

  /** The slow path: held while reconnecting or draining, flushes after resubmissions. */
  private async dispatchLater(req: IoSlot): Promise<void> {
    for (;;) {
      try {
        await this.whenUsable();
        if (req.isFlush && this.resubmitting.size > 0) await this.resubmittedRequestsDone(req);
      } catch (err) {
        this.endRequest(req, err as Error, 0);
        return;
      }
      const q = this.queues[req.vqIndex];
      if (!q) {
        if (this.stateValue !== 'connected') continue; // the path failed while the flush waited
        this.endRequest(req, new RangeError(`no virtqueue ${req.vqIndex} (connected: ${this.queues.length})`), 0);
        return;
      }
      this.sendRequest(req, q);
      return;
    }
  }

  /** A queue failed the request: with reconnect on it goes out again once reconnected. */
  private requestFailed(req: IoSlot, err: Error): void {
    if (!(err instanceof VofConnectionError) || !reconnects(this.policy) || this.lostError || this.closing || this.stateValue === 'connecting') {
      this.endRequest(req, err, 0);
      return;
    }
    if (req.generation === this.generation) this.pathFailed(err);
    // No completion: the request goes out again once reconnected.
    req.resubmissions++;
    this.resubmittedRequests++;
    if (!req.isFlush) this.resubmitting.add(req);
    void this.dispatchLater(req);
  }

  /** The request is over: its slot is free again before its caller hears (who may reuse it). */
  private endRequest(req: IoSlot, err: Error | null, written: number): void {
    this.resubmitting.delete(req);
    const callback = req.release();
    this.freeIoSlots.push(req);
    callback?.(err, written);
  }

  /**
   * The target sent the drain event (docs/PROTOCOL.md "Live drain"): hold new I/O, let what is
   * in flight complete there (for at most the keepalive timeout), then drop the connection and
   * reconnect to the same URL, whose Connect the target now answers with a redirect. Requests
   * the target did not complete are re-submitted at the new place.
   */
  private async drainRequested(generation: number): Promise<void> {
    if (this.stateValue !== 'connected' || this.draining || generation !== this.generation) return;
    this.draining = true;
    const active = this.ioSlots.filter((r) => r.active);
    this.log.info(`${this.url}: the target asks to move this device: finishing ${active.length} request(s) in flight, holding new I/O`);
    const graceMs = Math.max(1000, this.keepaliveTimeoutMs);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(active.map((r) => r.done)),
      new Promise<void>((r) => (timer = setTimeout(r, graceMs))),
    ]);
    clearTimeout(timer);
    if (generation !== this.generation || this.stateValue !== 'connected') return;
    // Fail the path on purpose: the reconnect finds the device where the target sends it.
    this.pathFailed(new VofConnectionError(`target asked to move the device (drain)`));
    if (this.state !== 'reconnecting') {
      this.draining = false;
      this.releaseHeld(this.lostError ?? undefined);
    }
  }

  /** A flush goes only once every re-submitted request has completed (or failed for good). */
  private async resubmittedRequestsDone(flush: IoSlot): Promise<void> {
    while (this.resubmitting.size > 0) {
      await Promise.all([...this.resubmitting].filter((r) => r !== flush).map((r) => r.done));
      await this.whenUsable();
    }
  }

  /** Resolves at once when connected; holds the caller while reconnecting; rejects when I/O must fail. */
  private whenUsable(): Promise<void> {
    if (this.lostError) return Promise.reject(this.lostError);
    if (this.closing || this.aborted) return Promise.reject(new VofConnectionError(`${this.url}: device closed`));
    if (this.stateValue !== 'reconnecting' && !this.draining) return Promise.resolve();
    if (this.ioFailError) return Promise.reject(this.ioFailError);
    return new Promise((resolve, reject) => this.held.push({ resolve, reject }));
  }

  private releaseHeld(err?: Error): void {
    const held = this.held;
    this.held = [];
    for (const h of held) {
      if (err) h.reject(err);
      else h.resolve();
    }
  }

  /**
   * A queue's connection or the keepalive failed. Without reconnect (or before the device was
   * ever up) the device is lost; otherwise every queue of this connection is failed and closed,
   * I/O is held, and the reconnect loop starts.
   */
  private pathFailed(err: Error): void {
    if (this.lostError || this.closing || this.aborted || this.stateValue === 'reconnecting') return;
    if (!reconnects(this.policy) || this.stateValue !== 'connected') {
      this.lose(err);
      return;
    }
    this.stateValue = 'reconnecting';
    this.draining = false;
    this.generation++;
    this.stopTimers();
    const resume: ResumePoint = {
      ofFeatures: this.ofFeatures,
      driverFeatures: this.driverFeatures,
      vendorId: this.vendorId,
      deviceId: this.deviceId,
      queueCount: this.virtqueueCount,
    };
    this.dropConnections(err);
    this.log.warn(`${this.url}: ${err.message}; reconnecting (delay ${this.policy.delayMs} ms, loss timeout ${this.policy.lossTimeoutMs < 0 ? 'none' : `${this.policy.lossTimeoutMs} ms`})`);
    this.emit('disconnected', err);
    void superviseReconnect(this.supervised, this.policy, resume, err);
  }

  /** Fail and close every queue of the current connection (their requests see VofConnectionError). */
  private dropConnections(err: Error): void {
    const admin = this.adminQueue.drop();
    const all = [...this.queues.splice(0), ...this.opening, this.control];
    for (const q of all) q.failAll(err);
    for (const q of all) void q.close().catch(() => {});
    void admin?.then((q) => (q.failAll(err), q.close()), () => {});
  }

  private stopTimers(): void {
    this.liveness.stop();
  }

  /** What the reconnect loop (path-supervisor.ts) drives, made once. */
  private readonly supervised: SupervisedPath = {
    url: () => this.url,
    state: () => this.stateValue,
    log: () => this.log,
    attemptStarts: (attempt, of) => this.emit('reconnecting', attempt, of),
    resumeOnce: (resume) => this.resumeOnce(resume),
    attemptFailed: (err) => {
      this.generation++; // callbacks of the failed attempt's queues are stale
      this.dropConnections(err);
    },
    failIo: (err) => {
      this.ioFailError = err;
      this.log.warn(err.message);
      this.releaseHeld(err);
    },
    reconnected: (attempt) => {
      this.ioFailError = null;
      this.log.info(`${this.url}: reconnected (attempt ${attempt}); instance ${this.instanceId}`);
      this.emit('reconnected', attempt);
      this.releaseHeld();
    },
    lose: (err) => this.lose(err),
  };

  /** One attempt: a new control queue, the initialization sequence (checked against `resume`), the virtqueues. */
  private async resumeOnce(resume: ResumePoint): Promise<void> {
    const origin = parseDeviceUrl(this.requestedUrl).scheme;
    const path = await connectControlPath(this.url, { ivqn: this.ivqn, log: this.log, origin, ...pathOpts(this.options) });
    if (this.stateValue !== 'reconnecting') {
      await path.control.close();
      return;
    }
    if (path.url !== this.url) this.log.info(`${this.url}: the device moved to ${path.url}`);
    this.url = path.url;
    this.tvqn = path.tvqn;
    this.transport = path.transport;
    this.connectBody = path.connectBody;
    this.instanceId = path.instanceId;
    this.control = path.control;
    this.attachControl(path.control);
    this.liveness.heard();
    const timeoutMs = this.options.connectTimeoutMs ?? 10000;
    // A target that accepts but never answers: failing the attempt's queues ends initialize().
    const timer = setTimeout(() => this.dropConnections(new VofConnectionError(`initialization did not finish within ${timeoutMs} ms`)), timeoutMs);
    try {
      // initialize() sets the state to connected just before it starts the keepalive.
      await this.initialize(resume);
    } catch (err) {
      if (this.state === 'connected') {
        this.stateValue = 'reconnecting';
        this.stopTimers();
      }
      throw err;
    } finally {
      clearTimeout(timer);
    }
    this.liveness.watch();
  }

  /** The device is unusable: fail everything, release the connections, tell listeners once. */
  private lose(err: Error): void {
    if (this.lostError || this.closing || this.aborted) return;
    this.lostError = err;
    this.stateValue = 'lost';
    this.log.warn(`${this.url}: ${err.message}`);
    void this.abort();
    this.releaseHeld(err);
    this.emit('lost', err);
  }

  get lost(): Error | null {
    return this.lostError;
  }

  private abort(): Promise<void> {
    this.aborted = true;
    this.stopTimers();
    const err = this.lostError ?? new VofConnectionError('device closed');
    this.releaseHeld(err);
    const admin = this.adminQueue.current;
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
    this.stopTimers();
    const wasConnected = this.stateValue === 'connected';
    if (this.stateValue !== 'lost') this.stateValue = 'closed';
    this.releaseHeld(new VofConnectionError(`${this.url}: device closed`));
    if (!this.lostError && wasConnected) {
      const disconnect = (q: InitiatorQueue) =>
        q.closed ? Promise.resolve() : q.call({ opcode: Opcode.Disconnect }).then(() => {}, () => {});
      const current = this.adminQueue.current;
      const admin = current ? await current.catch(() => null) : null;
      await Promise.all([...this.queues, ...(admin ? [admin] : [])].map(disconnect));
      await disconnect(this.control);
    }
    await this.abort();
    this.emit('close');
  }
}

export const connect = RemoteDevice.connect;
