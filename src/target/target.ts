import { CONTROL_QUEUE_INSTANCE_ID, Status } from '../protocol/constants.js';
import type { ConnectBody } from '../protocol/connect-body.js';
import { checkVqn } from '../protocol/connect-body.js';
import { parseListenUrl } from '../url.js';
import { transportFor } from '../transport/registry.js';
import type { Listener } from '../transport/transport.js';
import { defaultLogger, type Logger } from '../util/log.js';
import type { DeviceExport } from './device.js';
import { DeviceInstance, type KeepalivePolicy } from './device-instance.js';
import { QueueSession, type TargetContext } from './queue-session.js';
import { ByteBudget } from './byte-budget.js';

export interface TargetOptions {
  readonly log?: Logger;
  readonly keepalive?: Partial<KeepalivePolicy>;
  /** Largest device-readable payload of one VQ command; bigger ones get EOUTVQBUF. */
  readonly maxVqPayload?: number;
  /** At most this many live instances per target (further Connects get ENODEV). */
  readonly maxInstances?: number;
  /** Close connections that have not completed Connect within this time (ms; 0: never). */
  readonly connectTimeoutMs?: number;
  /** Resource bounds against careless or hostile peers (see DEFAULT_LIMITS). */
  readonly limits?: Partial<PeerLimits>;
}

/**
 * What peers can make the target hold. VQ buffers (a command's device-readable payload and the
 * data of its completion) count from admission until the completion has left the process; a
 * queue or the target at its budget stops reading from the connections that want more.
 */
export interface PeerLimits {
  /** Bytes of VQ buffers all queues together may hold. */
  readonly targetBufferBytes: number;
  /** Bytes of VQ buffers one queue may hold. */
  readonly queueBufferBytes: number;
  /** Stream transports: close a connection whose completions have not moved for this long (ms; 0: never). */
  readonly sendStallTimeoutMs: number;
}

export const DEFAULT_LIMITS: PeerLimits = {
  targetBufferBytes: 128 * 1024 * 1024,
  queueBufferBytes: 16 * 1024 * 1024,
  sendStallTimeoutMs: 10000,
};
export const DEFAULT_CONNECT_TIMEOUT_MS = 10000;

interface ExportEntry {
  readonly device: DeviceExport;
  /** IVQNs allowed to connect; null allows everyone. */
  readonly allow: ReadonlySet<string> | null;
}

export const DEFAULT_KEEPALIVE: KeepalivePolicy = { intervalMs: 5000, timeoutMs: 15000 };
export const DEFAULT_MAX_VQ_PAYLOAD = 4 * 1024 * 1024 + 4096;

/**
 * A Virtio-oF target: devices exported by TVQN, listening on any number of addresses and
 * transports at once.
 */
export class VofTarget {
  private readonly exports = new Map<string, ExportEntry>();
  private readonly instances = new Map<number, DeviceInstance>();
  private readonly listeners: Listener[] = [];
  private nextInstanceId = 0;
  readonly log: Logger;
  private readonly keepalive: KeepalivePolicy;
  private readonly maxVqPayload: number;
  private readonly maxInstances: number;
  private readonly context: TargetContext;
  private readonly limits: PeerLimits;

  constructor(options: TargetOptions = {}) {
    this.log = options.log ?? defaultLogger();
    this.keepalive = { ...DEFAULT_KEEPALIVE, ...options.keepalive };
    this.maxVqPayload = options.maxVqPayload ?? DEFAULT_MAX_VQ_PAYLOAD;
    this.maxInstances = options.maxInstances ?? 1024;
    this.limits = { ...DEFAULT_LIMITS, ...options.limits };
    this.context = {
      log: this.log,
      targetBudget: new ByteBudget(this.limits.targetBufferBytes),
      queueBudgetBytes: this.limits.queueBufferBytes,
      connectTimeoutMs: options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS,
      createInstance: (body, control) => this.createInstance(body, control),
      findInstance: (id) => this.instances.get(id),
    };
  }

  /** Export a device under a TVQN; `allow` lists the IVQNs that may connect (all when absent). */
  addDevice(tvqn: string, device: DeviceExport, allow?: Iterable<string>): void {
    if (checkVqn(tvqn, 'TVQN').length === 0) throw new Error('TVQN is empty');
    if (this.exports.has(tvqn)) throw new Error(`TVQN "${tvqn}" is already exported`);
    const allowSet = allow ? new Set(allow) : null;
    for (const ivqn of allowSet ?? []) checkVqn(ivqn, 'IVQN');
    this.exports.set(tvqn, { device, allow: allowSet && allowSet.size > 0 ? allowSet : null });
  }

  get devices(): ReadonlyMap<string, ExportEntry> {
    return this.exports;
  }

  get instanceCount(): number {
    return this.instances.size;
  }

  /** Start listening, e.g. "tcp://0.0.0.0:15771". Resolves with the bound URL. */
  async listen(url: string): Promise<string> {
    const { scheme, endpoint } = parseListenUrl(url);
    const transport = await transportFor(scheme, this.log);
    const listenOptions = { maxVqPayload: this.maxVqPayload, sendStallTimeoutMs: this.limits.sendStallTimeoutMs };
    const listener = await transport.listen(endpoint, listenOptions, (connection) => {
      new QueueSession(connection, this.context);
    });
    this.listeners.push(listener);
    return listener.url;
  }

  get urls(): string[] {
    return this.listeners.map((l) => l.url);
  }


  private createInstance(body: ConnectBody, control: QueueSession): DeviceInstance | number {
    const entry = this.exports.get(body.tvqn);
    if (!entry) return Status.ENOTGT;
    if (entry.allow && !entry.allow.has(body.ivqn)) return Status.EACLREJECTED;
    const id = this.allocateInstanceId();
    if (id < 0 || this.instances.size >= this.maxInstances) return Status.ENODEV;
    let device;
    try {
      device = entry.device.createInstance();
    } catch (err) {
      this.log.error(`cannot create an instance of "${body.tvqn}": ${(err as Error).message}`);
      return Status.ENODEV;
    }
    const inst = new DeviceInstance(id, body.tvqn, body.ivqn, device, control, this.keepalive, this.log, (gone) => {
      this.instances.delete(gone.id);
      this.log.info(`instance ${gone.id} destroyed`);
    });
    this.instances.set(id, inst);
    return inst;
  }

  private allocateInstanceId(): number {
    for (let tries = 0; tries < CONTROL_QUEUE_INSTANCE_ID; tries++) {
      const id = this.nextInstanceId;
      this.nextInstanceId = (this.nextInstanceId + 1) % CONTROL_QUEUE_INSTANCE_ID;
      if (!this.instances.has(id)) return id;
    }
    return -1;
  }

  /** Let in-flight requests finish (up to drainMs), stop listening, drop every instance, release the devices. */
  async close(drainMs = 5000): Promise<void> {
    // Let requests already running finish (a SIGTERM should not cut a write in half), but do
    // not wait forever on a device that hangs.
    const sessions = [...this.instances.values()].flatMap((i) => [i.control, ...i.virtqueues.values()]);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(sessions.map((s) => s.whenIdle())),
      new Promise<void>((r) => (timer = setTimeout(r, drainMs))),
    ]);
    clearTimeout(timer);
    for (const inst of [...this.instances.values()]) inst.destroy();
    await Promise.all(this.listeners.splice(0).map((l) => l.close()));
    await Promise.all([...this.exports.values()].map((e) => e.device.close()));
    this.exports.clear();
  }
}
