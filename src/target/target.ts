import { randomInt } from 'node:crypto';
import { CONTROL_QUEUE_INSTANCE_ID, Status } from '../protocol/constants.js';
import type { ConnectBody } from '../protocol/connect-body.js';
import { checkVqn } from '../protocol/connect-body.js';
import { parseListenUrl } from '../transport/url.js';
import { transportFor } from '../transport/registry.js';
import type { TlsServerSettings } from '../transport/tcp/tls-settings.js';
import type { Listener } from '../transport/transport.js';
import { quotePeerString } from '../util/escape.js';
import { defaultLogger, type Logger } from '../util/log.js';
import { AccessPolicy, bindingRefusal, hostOf, type AllowSpec, type Refusal } from './access-policy.js';
import type { DeviceExport } from './device.js';
import { DeviceInstance, keepalivePolicyProblem, keepalivePolicyWarnings, type KeepalivePolicy } from './device-instance.js';
import { OldestFirstAdmission, type AdmissionLimits } from '../util/oldest-first-admission.js';
import { InstanceQuota, resolveQuotas, unboundLimits, type QuotaLimits } from './quotas.js';
import { TargetQueue, type TargetContext } from './target-queue.js';
import { DeviceErrorLog } from './admin/error-log.js';
import { InstanceAdmin } from './admin/instance-admin.js';
import { DEFAULT_HEALTH_TEST_BURST, DEFAULT_HEALTH_TEST_INTERVAL_MS, HealthTestBudget } from './admin/health-test-budget.js';
import { ByteBudget } from '../util/byte-budget.js';
import { makeRedirect, type Redirect } from './redirect.js';
import { encodeDrainEvent } from '../protocol/redirect-record.js';
import { DEFAULT_INLINE_DATA_SIZE, MAX_INLINE_DATA_SIZE } from '../protocol/inline-data.js';
import { formatSecret, parseSecret } from '../protocol/auth.js';
import { TargetAuth } from './target-auth.js';

export interface TargetOptions {
  readonly log?: Logger;
  readonly keepalive?: Partial<KeepalivePolicy>;
  /** Largest device-readable payload of one VQ command; bigger ones get EOUTVQBUF. */
  readonly maxVqPayload?: number;
  /**
   * A ceiling on live instances of the whole target (ENODEV beyond). Off by default: a shared
   * ceiling lets one export's users lock every other export out; use `quotas` instead.
   */
  readonly maxInstances?: number;
  /** Per-export, per-IVQN and unbound-connection limits (docs/PROTOCOL.md, "Quotas"). */
  readonly quotas?: Partial<QuotaLimits>;
  /** Certificates and/or PSKs for tls:// listeners (docs/PROTOCOL.md, "TLS"). */
  readonly tls?: TlsServerSettings;
  /** Close connections that have not completed Connect within this time (ms; 0: never). */
  readonly connectTimeoutMs?: number;
  /** Resource bounds against careless or hostile peers (see DEFAULT_LIMITS). */
  readonly limits?: Partial<PeerLimits>;
  /** TVQN → URL[/TVQN2]: Connects for these TVQNs are redirected (docs/PROTOCOL.md, "Redirect"). */
  readonly redirects?: Readonly<Record<string, string>>;
  /**
   * RDMA: device-readable bytes a VQ request may carry inline in its SEND (vof extension
   * VOF_F_INLINE_DATA, docs/PROTOCOL.md "Inline data on keyed queues"); default 4112, at most
   * 65536; 0 does not offer the extension.
   */
  readonly inlineDataBytes?: number;
  /**
   * IVQN → its secret ("DHHC-1:00:…:", see `vof gen-secret`, or the key's bytes): an initiator
   * claiming one of these IVQNs must prove the secret with vof in-band authentication before
   * any device command or virtqueue (docs/PROTOCOL.md "In-band authentication"). Other IVQNs
   * work as before (seed-only peers included).
   */
  readonly auth?: Readonly<Record<string, string | Buffer>>;
}

export interface DrainResult {
  /** Instances of the TVQN told to move (drain event sent). */
  readonly told: number;
  /** Instances closed by the target at the end of the grace time (did not move by themselves). */
  readonly closed: number;
}

export interface ExportOptions {
  /** Live instances of this export at most (default: quotas.instancesPerExport). */
  readonly maxInstances?: number;
  /**
   * Who holds the export's admin grant: entries like `allow`'s ("IVQN" or { ivqn, identity }),
   * proved the same way. Export-wide admin commands (FORMAT, CLEAR_ERROR_LOG, RESET_COUNTERS)
   * run only for them, and only they read the whole error log. Absent or empty: nobody.
   */
  readonly admin?: Iterable<AllowSpec>;
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
  /** Close a connection whose completions have not moved for this long (ms; 0: never). */
  readonly sendStallTimeoutMs: number;
  /** RDMA: registered bytes of one device's request pools (VQ data buffers) at most (requests beyond wait); connections' rings and slots are not counted here. */
  readonly rdmaDeviceMemoryBytes: number;
  /** Admin HEALTH_TESTs an export's instances may run back to back (then ERR until refilled). */
  readonly healthTestBurst: number;
  /** One more HEALTH_TEST per export per this many ms (0: no rate limit). */
  readonly healthTestIntervalMs: number;
}

export const DEFAULT_LIMITS: PeerLimits = {
  targetBufferBytes: 128 * 1024 * 1024,
  queueBufferBytes: 16 * 1024 * 1024,
  sendStallTimeoutMs: 10000,
  rdmaDeviceMemoryBytes: 256 * 1024 * 1024,
  healthTestBurst: DEFAULT_HEALTH_TEST_BURST,
  healthTestIntervalMs: DEFAULT_HEALTH_TEST_INTERVAL_MS,
};
export const DEFAULT_CONNECT_TIMEOUT_MS = 10000;

interface ExportEntry {
  readonly device: DeviceExport;
  /** Who may connect: open, or an allow-list of IVQNs (optionally bound to TLS identities). */
  readonly access: AccessPolicy;
  readonly maxInstances: number | undefined;
  /** The export's error log (admin common class), shared by its instances. */
  readonly errorLog: DeviceErrorLog;
  /** The export's HEALTH_TEST rate limit, shared by its instances. */
  readonly healthTests: HealthTestBudget;
  /** Who holds the export's admin grant (nobody by default). */
  readonly admin: AccessPolicy;
}

export const DEFAULT_KEEPALIVE: KeepalivePolicy = { intervalMs: 5000, timeoutMs: 15000 };
/**
 * Live drain: after the grace time, how long the instances still here may take to finish the
 * requests they have in flight before those are cancelled (ESTATUS) and the queues closed.
 */
export const DRAIN_SETTLE_MS = 1000;
export const DEFAULT_MAX_VQ_PAYLOAD = 4 * 1024 * 1024 + 4096;

/**
 * A Virtio-oF target: devices exported by TVQN, listening on any number of addresses and
 * transports at once.
 */
export class VofTarget {
  private readonly exports = new Map<string, ExportEntry>();
  private readonly instances = new Map<number, DeviceInstance>();
  /** TVQN → where it moved, and who may learn that when the TVQN is not exported here. */
  private readonly redirects = new Map<string, { readonly to: Redirect; readonly access: AccessPolicy }>();
  private readonly listeners: Listener[] = [];
  readonly log: Logger;
  private readonly keepalive: KeepalivePolicy;
  private readonly maxVqPayload: number;
  private readonly maxInstances: number;
  private readonly quota: InstanceQuota;
  /** Connections without a completed Connect: oldest first out at the unbound limits. */
  private readonly unbound: OldestFirstAdmission<TargetQueue>;
  /** The same limits for TLS handshakes in progress (counted by the transport, before a target queue exists). */
  private readonly unboundLimits: AdmissionLimits;
  private readonly tls: TlsServerSettings | undefined;
  private readonly context: TargetContext;
  private readonly limits: PeerLimits;
  private readonly inlineDataBytes: number;
  /** IVQN → secret key (vof in-band authentication); never logged. */
  private readonly authSecrets = new Map<string, Buffer>();

  constructor(options: TargetOptions = {}) {
    this.log = options.log ?? defaultLogger();
    this.keepalive = { ...DEFAULT_KEEPALIVE, ...options.keepalive };
    const problem = keepalivePolicyProblem(this.keepalive);
    if (problem) throw new RangeError(problem);
    for (const w of keepalivePolicyWarnings(this.keepalive)) this.log.warn(w);
    this.maxVqPayload = options.maxVqPayload ?? DEFAULT_MAX_VQ_PAYLOAD;
    this.maxInstances = options.maxInstances ?? CONTROL_QUEUE_INSTANCE_ID;
    const limits = resolveQuotas(options.quotas);
    this.quota = new InstanceQuota(limits);
    this.unboundLimits = unboundLimits(limits);
    this.unbound = new OldestFirstAdmission(this.unboundLimits);
    this.tls = options.tls;
    this.limits = { ...DEFAULT_LIMITS, ...options.limits };
    new HealthTestBudget(this.limits.healthTestBurst, this.limits.healthTestIntervalMs); // fail here, not at addExport
    this.inlineDataBytes = options.inlineDataBytes ?? DEFAULT_INLINE_DATA_SIZE;
    if (!Number.isInteger(this.inlineDataBytes) || this.inlineDataBytes < 0 || this.inlineDataBytes > MAX_INLINE_DATA_SIZE) {
      throw new RangeError(`inlineDataBytes must be an integer from 0 (off) to ${MAX_INLINE_DATA_SIZE}, not ${options.inlineDataBytes}`);
    }
    for (const [ivqn, secret] of Object.entries(options.auth ?? {})) {
      checkVqn(ivqn, 'IVQN');
      this.authSecrets.set(ivqn, parseSecret(Buffer.isBuffer(secret) ? formatSecret(secret) : secret, `the secret of IVQN ${quotePeerString(ivqn)}`));
    }
    this.context = {
      log: this.log,
      targetBudget: new ByteBudget(this.limits.targetBufferBytes),
      queueBudgetBytes: this.limits.queueBufferBytes,
      connectTimeoutMs: options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS,
      createInstance: (body, control) => this.createInstance(body, control),
      findInstance: (id) => this.instances.get(id),
      bindingRefusal: (inst, queue, body) => this.bindingRefusal(inst, queue, body),
      queueBound: (queue) => this.unbound.settle(queue),
      queueClosed: (queue) => this.unbound.settle(queue),
      redirectFor: (body, control) => this.redirectFor(body, control),
    };
    for (const [tvqn, url] of Object.entries(options.redirects ?? {})) this.redirect(tvqn, url);
  }

  /**
   * Answer control-queue Connects for `tvqn` with EREDIRECT to `url` (tcp|tls|rdma://HOST[:PORT],
   * optionally /TVQN2; default the same TVQN), whether or not it is exported here. Only peers
   * the access policy admits learn the destination: the export's while `tvqn` is exported here,
   * else `allow` (absent: every peer). Returns the URL the record names.
   */
  redirect(tvqn: string, url: string, allow?: Iterable<AllowSpec>): string {
    if (checkVqn(tvqn, 'TVQN').length === 0) throw new Error('TVQN is empty');
    const r = makeRedirect(tvqn, url);
    this.redirects.set(tvqn, { to: r, access: new AccessPolicy(allow) });
    this.log.info(`${quotePeerString(tvqn)} redirected to ${r.url}`);
    return r.url;
  }

  removeRedirect(tvqn: string): boolean {
    return this.redirects.delete(tvqn);
  }

  /**
   * The operator changed the size of `tvqn`'s storage: re-read it (nvmet's revalidate_size);
   * if the capacity changed, every live instance gets a config change. Throws for a TVQN not
   * exported here, or whose device has no size to re-read.
   */
  async revalidateSize(tvqn: string): Promise<{ capacityBytes: number; changed: boolean }> {
    const device = this.exports.get(tvqn)?.device;
    if (!device) throw new Error(`${quotePeerString(tvqn)} is not exported by this target`);
    if (!device.revalidateSize) throw new Error(`${quotePeerString(tvqn)} (${device.description}) has no size to re-read`);
    const r = await device.revalidateSize().catch((err: Error) => {
      throw new Error(`${quotePeerString(tvqn)}: ${err.message}`);
    });
    this.log.info(`revalidate ${quotePeerString(tvqn)}: ${r.capacityBytes} bytes${r.changed ? ', changed: config change sent to its instances' : ', unchanged'}`);
    return r;
  }

  /**
   * Live drain (docs/PROTOCOL.md "Live drain"): new Connects for `tvqn` are redirected to
   * `url`; every live instance of it whose initiator follows redirects gets the drain event and
   * moves by itself (finishing its requests here first). After `graceMs` the instances still
   * here are closed once their requests in flight have completed, or after DRAIN_SETTLE_MS more
   * at most: requests still running then (a device that hangs) are cancelled and answered
   * ESTATUS, so a drain always ends. Their initiators reconnect and are redirected like new ones.
   * Throws for a TVQN that is neither exported nor redirected here.
   */
  async drain(tvqn: string, url: string, graceMs = 10_000): Promise<DrainResult> {
    // A typo must not look like success (and leave a redirect for a name nobody serves here).
    if (!this.exports.has(tvqn) && !this.redirects.has(tvqn)) throw new Error(`${quotePeerString(tvqn)} is neither exported nor redirected by this target`);
    const dest = this.redirect(tvqn, url);
    const live = () => [...this.instances.values()].filter((i) => i.tvqn === tvqn && !i.destroyed);
    let told = 0;
    for (const inst of live()) {
      if (!inst.control.followsRedirects) continue;
      inst.control.sendEvent(encodeDrainEvent());
      told++;
    }
    this.log.info(`drain of ${quotePeerString(tvqn)} to ${dest}: ${told} instance(s) told to move, ${live().length - told} will be closed after ${graceMs} ms`);
    const deadline = Date.now() + graceMs;
    while (live().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    const left = live();
    const queuesOf = (inst: DeviceInstance) => [inst.control, ...inst.virtqueues.values()];
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(left.flatMap(queuesOf).map((s) => s.whenIdle())),
      new Promise<void>((r) => (timer = setTimeout(r, DRAIN_SETTLE_MS))),
    ]);
    clearTimeout(timer);
    for (const inst of left) {
      let cut = 0;
      for (const s of queuesOf(inst)) cut += s.abort('drained: the grace time is over');
      if (cut > 0) this.log.warn(`drain of ${quotePeerString(tvqn)}: ${inst.label}: cancelled ${cut} request(s) still in flight ${DRAIN_SETTLE_MS} ms after the grace time (ESTATUS)`);
      inst.destroy();
    }
    return { told, closed: left.length };
  }

  /**
   * Export a device under a TVQN. `allow` lists the IVQNs that may connect, as "IVQN" or
   * { ivqn, identity } (identity: the TLS identity the peer must have proved); absent, the
   * export is open to everyone. An empty list is an error, not "everyone". `options.admin`
   * grants export-wide admin commands, in the same form; absent, nobody has them.
   */
  addExport(tvqn: string, device: DeviceExport, allow?: Iterable<AllowSpec>, options: ExportOptions = {}): void {
    if (checkVqn(tvqn, 'TVQN').length === 0) throw new Error('TVQN is empty');
    if (this.exports.has(tvqn)) throw new Error(`TVQN ${quotePeerString(tvqn)} is already exported`);
    if (options.maxInstances !== undefined && (!Number.isInteger(options.maxInstances) || options.maxInstances < 1)) {
      throw new Error(`maxInstances of ${quotePeerString(tvqn)} must be a positive integer`);
    }
    this.exports.set(tvqn, {
      device,
      access: new AccessPolicy(allow),
      maxInstances: options.maxInstances,
      errorLog: new DeviceErrorLog(),
      healthTests: new HealthTestBudget(this.limits.healthTestBurst, this.limits.healthTestIntervalMs),
      admin: AccessPolicy.grants(options.admin),
    });
  }

  get devices(): ReadonlyMap<string, ExportEntry> {
    return this.exports;
  }

  /** Whether an instance with this id is live (tests, tools). */
  hasInstance(id: number): boolean {
    return this.instances.has(id);
  }

  get instanceCount(): number {
    return this.instances.size;
  }

  /** Start listening, e.g. "tcp://0.0.0.0:15771". Resolves with the bound URL. */
  async listen(url: string): Promise<string> {
    const { scheme, endpoint } = parseListenUrl(url);
    const transport = await transportFor(scheme, this.log);
    const listenOptions = {
      maxVqPayload: this.maxVqPayload,
      sendStallTimeoutMs: this.limits.sendStallTimeoutMs,
      deviceMemoryBytes: this.limits.rdmaDeviceMemoryBytes,
      inlineDataBytes: this.inlineDataBytes,
      handshakeLimits: this.unboundLimits,
      handshakeTimeoutMs: this.context.connectTimeoutMs,
      ...(this.tls && { tls: this.tls }),
    };
    const listener = await transport.listen(endpoint, listenOptions, (connection) => {
      const queue = new TargetQueue(connection, this.context);
      for (const old of this.unbound.admit(queue, hostOf(connection.peer))) {
        this.log.warn(`${old.connection.peer}: closed before Connect to make room for ${connection.peer} (limit of unbound connections reached)`);
        old.connection.close();
      }
    });
    this.listeners.push(listener);
    return listener.url;
  }

  get urls(): string[] {
    return this.listeners.map((l) => l.url);
  }


  /**
   * The redirect for a control-queue Connect, checked against the same access policy as a
   * Connect that would create an instance: the export's when the TVQN is still exported here
   * (a drain), else the redirect's own allow-list (`redirect(…, allow)`; none: open). A refused
   * peer gets EACLREJECTED, exactly what an unknown TVQN gets, and no destination.
   */
  private redirectFor(body: ConnectBody, control: TargetQueue): Redirect | Refusal | undefined {
    const moved = this.redirects.get(body.tvqn);
    if (!moved) return undefined;
    const access = this.exports.get(body.tvqn)?.access ?? moved.access;
    const identity = control.connection.identity;
    if (!access.admits(body.ivqn, identity)) {
      const who = identity === undefined ? 'an unauthenticated peer' : `identity ${quotePeerString(identity)}`;
      return { status: Status.EACLREJECTED, why: `IVQN not allowed for ${who}` };
    }
    return moved.to;
  }

  /**
   * A control-queue Connect: the export, its access policy (with the connection's TLS
   * identity), then the quotas. An unknown TVQN is answered like a refused one (EACLREJECTED),
   * so that a peer cannot list the exports (docs/PROTOCOL.md, "What a refusal reveals").
   */
  private createInstance(body: ConnectBody, control: TargetQueue): DeviceInstance | Refusal {
    const entry = this.exports.get(body.tvqn);
    if (!entry) return { status: Status.EACLREJECTED, why: 'no such export (answered as an access refusal)' };
    const identity = control.connection.identity;
    if (!entry.access.admits(body.ivqn, identity)) {
      const who = identity === undefined ? 'an unauthenticated peer' : `identity ${quotePeerString(identity)}`;
      return { status: Status.EACLREJECTED, why: `IVQN not allowed for ${who}` };
    }
    const claimant = InstanceQuota.claimant(body.ivqn, identity, hostOf(control.connection.peer));
    const over = this.quota.refusal(body.tvqn, claimant, entry.maxInstances);
    if (over) return { status: Status.ENODEV, why: over };
    const id = this.allocateInstanceId();
    if (id < 0 || this.instances.size >= this.maxInstances) return { status: Status.ENODEV, why: `the target has ${this.instances.size} instances, its limit` };
    let device;
    try {
      device = entry.device.createInstance({ maxDescriptors: control.connection.maxKeyedDescriptors });
    } catch (err) {
      this.log.error(`cannot create an instance of ${quotePeerString(body.tvqn)}: ${(err as Error).message}`);
      return { status: Status.ENODEV, why: 'the device refused' };
    }
    this.quota.add(body.tvqn, claimant);
    const inst = new DeviceInstance(id, body.tvqn, body.ivqn, device, control, this.keepalive, this.log, (gone) => {
      this.instances.delete(gone.id);
      this.quota.remove(gone.tvqn, claimant);
      this.log.info(`instance ${gone.id} destroyed`);
    });
    // The grant is decided once, on what the control queue's Connect proved; the binding rule
    // makes every queue of the instance (the admin queue too) prove the same.
    if (device.admin) inst.admin = new InstanceAdmin(inst, entry.errorLog, this.log, entry.healthTests, entry.admin.admits(body.ivqn, identity));
    inst.authOffered = this.authSecrets.size > 0;
    const secret = this.authSecrets.get(body.ivqn);
    if (secret) {
      inst.auth = new TargetAuth(secret, body.ivqn, body.tvqn, id);
      // An instance that never authenticates holds its quota slot only as long as a connection
      // may go without Connect: keepalives alone do not keep it.
      const limit = this.context.connectTimeoutMs;
      if (limit > 0) {
        inst.auth.expireAfter(limit, () => {
          if (inst.destroyed) return;
          this.log.warn(`${control.connection.peer}: ${inst.label}: not authenticated within ${limit} ms; destroying it`);
          inst.destroy();
        });
      }
    }
    this.instances.set(id, inst);
    return inst;
  }

  /**
   * A random id not in use: a peer cannot predict which id the next initiator gets, so guessing
   * one is no shortcut (the binding rule refuses a borrower anyway).
   */
  private allocateInstanceId(): number {
    if (this.instances.size >= CONTROL_QUEUE_INSTANCE_ID) return -1;
    for (let tries = 0; tries < 64; tries++) {
      const id = randomInt(CONTROL_QUEUE_INSTANCE_ID);
      if (!this.instances.has(id)) return id;
    }
    // Nearly full: scan from a random start.
    const start = randomInt(CONTROL_QUEUE_INSTANCE_ID);
    for (let i = 0; i < CONTROL_QUEUE_INSTANCE_ID; i++) {
      const id = (start + i) % CONTROL_QUEUE_INSTANCE_ID;
      if (!this.instances.has(id)) return id;
    }
    return -1;
  }

  private bindingRefusal(inst: DeviceInstance, queue: TargetQueue, body: ConnectBody | null): Refusal | null {
    const entry = this.exports.get(inst.tvqn);
    if (!entry) return { status: Status.EBADDEV, why: 'the export is gone' };
    const control = inst.control.connection;
    return bindingRefusal(
      { tvqn: inst.tvqn, ivqn: inst.ivqn, controlHost: hostOf(control.peer), controlIdentity: control.identity },
      { host: hostOf(queue.connection.peer), identity: queue.connection.identity, body },
      entry.access,
    );
  }

  /** Let in-flight requests finish (up to drainMs), stop listening, drop every instance, release the devices. */
  async close(drainMs = 5000): Promise<void> {
    // Let requests already running finish (a SIGTERM should not cut a write in half), but do
    // not wait forever on a device that hangs.
    const queues = [...this.instances.values()].flatMap((i) => [i.control, ...i.virtqueues.values()]);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(queues.map((s) => s.whenIdle())),
      new Promise<void>((r) => (timer = setTimeout(r, drainMs))),
    ]);
    clearTimeout(timer);
    for (const inst of [...this.instances.values()]) inst.destroy();
    await Promise.all(this.listeners.splice(0).map((l) => l.close()));
    await Promise.all([...this.exports.values()].map((e) => e.device.close()));
    this.exports.clear();
  }
}
