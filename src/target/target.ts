import { CONTROL_QUEUE_INSTANCE_ID, Status } from '../protocol/constants.js';
import type { ConnectBody } from '../protocol/connect-body.js';
import { checkVqn } from '../protocol/connect-body.js';
import { parseListenUrl } from '../url.js';
import { transportFor } from '../transport/registry.js';
import type { Listener } from '../transport/transport.js';
import { defaultLogger, type Logger } from '../util/log.js';
import type { DeviceExport } from './device.js';
import { DeviceInstance, keepalivePolicyProblem, keepalivePolicyWarnings, type KeepalivePolicy } from './device-instance.js';
import { QueueSession, type TargetContext } from './queue-session.js';

export interface TargetOptions {
  readonly log?: Logger;
  readonly keepalive?: Partial<KeepalivePolicy>;
  /** Largest device-readable payload of one VQ command; bigger ones get EOUTVQBUF. */
  readonly maxVqPayload?: number;
  /** At most this many live instances per target (further Connects get ENODEV). */
  readonly maxInstances?: number;
}

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

  constructor(options: TargetOptions = {}) {
    this.log = options.log ?? defaultLogger();
    this.keepalive = { ...DEFAULT_KEEPALIVE, ...options.keepalive };
    const problem = keepalivePolicyProblem(this.keepalive);
    if (problem) throw new RangeError(problem);
    for (const w of keepalivePolicyWarnings(this.keepalive)) this.log.warn(w);
    this.maxVqPayload = options.maxVqPayload ?? DEFAULT_MAX_VQ_PAYLOAD;
    this.maxInstances = options.maxInstances ?? 1024;
    this.context = {
      log: this.log,
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
    const listener = await transport.listen(endpoint, { maxVqPayload: this.maxVqPayload }, (connection) => {
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
      device = entry.device.createInstance({ maxDescriptors: control.connection.maxKeyedDescriptors });
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
