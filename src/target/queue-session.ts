import {
  CONTROL_QUEUE_INSTANCE_ID,
  CONNECT_BODY_SIZE,
  Opcode,
  RESERVED_COMMAND_ID_FIRST,
  Status,
  VIRTIO_OF_CONTROL_QUEUE_SIZE,
  formatStatus,
  opcodeName,
  statusName,
} from '../protocol/constants.js';
import { decodeCommand, isUnknownCommand, type ConnectCommand, type DecodedCommand } from '../protocol/command.js';
import {
  encodeBareCompletion,
  encodeConnectCompletion,
  encodeFeatureCompletion,
  encodeGetConfigCompletion,
  encodeKeyedNumDescsCompletion,
  encodeU32Completion,
  encodeVqCompletion,
  encodeVqSizeCompletion,
} from '../protocol/completion.js';
import { decodeConnectBody, type ConnectBody } from '../protocol/connect-body.js';
import { quotePeerString } from '../util/escape.js';
import type { Logger } from '../util/log.js';
import type { Refusal } from './access-policy.js';
import { VqTransferError, type PayloadAdmission, type TargetConnection, type VqRequestData } from '../transport/transport.js';
import { QueueStats } from '../admin/queue-stats.js';
import { ByteBudget } from './byte-budget.js';
import type { DeviceInstance, OpResult } from './device-instance.js';
import { TargetRequest, type CompletionSink, type RequestSteps } from './target-request.js';
import { WakeSignal } from '../util/wake-signal.js';
import type { Redirect } from './redirect.js';
import { VOF_CONNECT_F_REDIRECT, connectFlags, encodeRedirectCompletion } from '../protocol/redirect-record.js';
import { VOF_OP_GET_INLINE_DATA_SIZE } from '../protocol/inline-data.js';
import { VOF_OP_AUTH_NEGOTIATE, VOF_OP_AUTH_REPLY, encodeAuthCompletion } from '../protocol/auth.js';

/** What a queue session needs from the target it belongs to. */
export interface TargetContext {
  readonly log: Logger;
  /** Create an instance for a control-queue Connect, or say which status refuses it and why. */
  createInstance(body: ConnectBody, control: QueueSession): DeviceInstance | Refusal;
  findInstance(id: number): DeviceInstance | undefined;
  /** Why this connection may not become a virtqueue of `inst` (the binding rule), or null. */
  bindingRefusal(inst: DeviceInstance, session: QueueSession, body: ConnectBody | null): Refusal | null;
  /** The session completed Connect (it stops counting as unbound). */
  sessionBound(session: QueueSession): void;
  /** The session's connection is gone. */
  sessionClosed(session: QueueSession): void;
  /** Bytes of VQ buffers (payload in, data out) all queues of the target may hold at once. */
  readonly targetBudget: ByteBudget;
  /** Bytes of VQ buffers one queue may hold at once. */
  readonly queueBudgetBytes: number;
  /** Close a connection that has not completed Connect within this time (0: never). */
  readonly connectTimeoutMs: number;
  /**
   * Where the Connect's TVQN has moved (vof redirect extension), a refusal when the peer may
   * not learn that (the access check comes first), or undefined when it has not moved.
   */
  redirectFor?(body: ConnectBody, control: QueueSession): Redirect | Refusal | undefined;
}

type SessionRole =
  | { kind: 'unbound' }
  | { kind: 'control'; instance: DeviceInstance }
  | { kind: 'virtqueue'; instance: DeviceInstance; vqIndex: number };

const EMPTY = Buffer.alloc(0);

/**
 * What a dispatch returns for a VQ command whose slot ends itself (TargetRequest's bound
 * callbacks call finish()): the caller neither finishes it nor waits on a promise.
 */
const FINISHES_ITSELF = 'finishes itself' as const;
type Dispatched = Promise<void> | void | typeof FINISHES_ITSELF;

/**
 * Connects refused for access (PROBE_ANSWERS) one connection may send before it is closed
 * (docs/PROTOCOL.md, "Virtqueue binding").
 */
export const MAX_REFUSED_CONNECTS = 4;
const PROBE_ANSWERS: ReadonlySet<number> = new Set([Status.EBADDEV, Status.EBADVQN, Status.EACLREJECTED, Status.ENOTGT]);

/**
 * Control-queue commands an instance that must authenticate may send before it has: what the
 * exchange itself needs (features, the auth commands), keepalives, and the transport's own
 * questions; every device command gets EACLREJECTED until then (docs/PROTOCOL.md "In-band
 * authentication"). Disconnect is always valid.
 */
const BEFORE_AUTH: ReadonlySet<number> = new Set([
  Opcode.Keepalive,
  Opcode.GetFeature,
  Opcode.SetFeature,
  Opcode.GetKeyedNumDescs,
  VOF_OP_GET_INLINE_DATA_SIZE,
  VOF_OP_AUTH_NEGOTIATE,
  VOF_OP_AUTH_REPLY,
]);

/**
 * A queue's commands in flight by id, with no Map entry made and dropped per command (a Map
 * whose size goes up and down by a few entries rehashes as it grows and shrinks): an id keeps
 * its entry after its command has left, and the entry counts only while its slot is listed
 * under that id. Stale entries are dropped once there are more than STALE_IDS of them, so a
 * peer that cycles through ids costs memory in proportion to its queue, not to the id space.
 */
class InFlight {
  private readonly byId = new Map<number, TargetRequest>();
  private count = 0;

  constructor(private readonly limit: () => number) {}

  get size(): number {
    return this.count;
  }

  has(id: number): boolean {
    const r = this.byId.get(id);
    return r !== undefined && r.listed && r.commandId === id;
  }

  add(req: TargetRequest): void {
    req.listed = true;
    this.count++;
    this.byId.set(req.commandId, req);
    if (this.byId.size > this.limit() + STALE_IDS) {
      for (const [id, r] of this.byId) if (!(r.listed && r.commandId === id)) this.byId.delete(id);
    }
  }

  remove(req: TargetRequest): void {
    if (!req.listed) return;
    req.listed = false;
    this.count--;
  }

  /** The commands in flight, copied (cancelling one may remove it). */
  list(): TargetRequest[] {
    const out: TargetRequest[] = [];
    for (const [id, r] of this.byId) if (r.listed && r.commandId === id) out.push(r);
    return out;
  }
}

/** Ids of ended commands an InFlight keeps entries for beyond its queue size. */
const STALE_IDS = 256;

/**
 * One Virtio-oF queue on one transport connection, target side. The first command must be
 * Connect, which makes the session a control queue or binds it to a virtqueue of an existing
 * instance. Holds one TargetRequest per command in flight, keyed by command id: at most the
 * queue size of them (ECMDQUOT beyond), and never two with the same id (the queue closes).
 * A request leaves the map when its completion is sent (the peer may then reuse the id at
 * once) and keeps its buffers, and its share of the budgets, until its data has left.
 */
export class QueueSession {
  private role: SessionRole = { kind: 'unbound' };
  private queueSize = VIRTIO_OF_CONTROL_QUEUE_SIZE;
  /** Commands in flight by id (running: their completion has not been sent). */
  private readonly requests = new InFlight(() => this.queueSize);
  /** Request slots of this queue that serve no command (see TargetRequest). */
  private readonly freeSlots: TargetRequest[] = [];
  /** Slots serving a command, completed or not: whenIdle waits for these to end. */
  private busySlots = 0;
  /** Woken whenever a command leaves the queue (whenIdle, cancelAll). */
  private readonly left = new WakeSignal();
  private readonly sink: CompletionSink = {
    vacate: (req) => this.vacate(req),
    send: (completion, refusal, payload) => this.reply(completion, refusal, payload),
    sendVq: (req, completion, written) => this.sendVq(req, completion, written),
    finished: (req) => this.slotFinished(req),
  };
  /** What a slot's callbacks lead to (see TargetRequest): made once per queue. */
  private readonly steps: RequestSteps = {
    // A dispatch that threw: a bug, logged; the command's slot is then released.
    dispatchFailed: (req, err) => this.log.error(`${this.connection.peer}: ${opcodeName(req.opcode)} failed: ${(err as Error)?.stack ?? String(err)}`),
    fetched: (req, readable, writable) => this.execute(req, readable, writable) === FINISHES_ITSELF,
    fetchFailed: (req, err) => this.fetchFailed(req, err),
    executed: (req, written) => this.executed(req, written),
    executeFailed: (req, err) => this.executeFailed(req, err),
    completed: (req) => this.completed(req),
    completeFailed: (req, err) => this.completeFailed(req, err),
  };
  private disconnecting = false;
  private closed = false;
  /** Connects refused on this connection (see MAX_REFUSED_CONNECTS). */
  private refusedConnects = 0;
  /** The Connect Body announced VOF_CONNECT_F_REDIRECT: redirects and the drain event may be sent. */
  followsRedirects = false;
  /** Counters for the admin transport class (LIST_QUEUES). */
  readonly stats = new QueueStats();
  /** VQ buffers of this queue's commands in flight, until their completions have left. */
  private readonly budget: ByteBudget;
  /** Bytes reserved by the last admitVq, taken over by the command delivered next. */
  private admitted = 0;
  private connectTimer: NodeJS.Timeout | null = null;

  constructor(
    readonly connection: TargetConnection,
    private readonly ctx: TargetContext,
  ) {
    this.budget = new ByteBudget(ctx.queueBudgetBytes);
    if (ctx.connectTimeoutMs > 0) {
      this.connectTimer = setTimeout(() => this.onConnectTimeout(), ctx.connectTimeoutMs);
      this.connectTimer.unref();
    }
    connection.start({
      admitVq: (cmd) => this.admitVq(cmd),
      onCommand: (cmd, payload) => this.onCommand(cmd, payload),
      onEnd: () => this.onPeerEnded(),
      onClose: (reason) => this.onTransportClosed(reason),
    });
  }

  private onConnectTimeout(): void {
    this.connectTimer = null;
    if (this.closed || this.role.kind !== 'unbound') return;
    this.log.warn(`${this.connection.peer}: no Connect within ${this.ctx.connectTimeoutMs} ms; closing`);
    this.close();
  }

  private clearConnectTimer(): void {
    if (this.connectTimer) clearTimeout(this.connectTimer);
    this.connectTimer = null;
  }

  /**
   * May the transport buffer this VQ command's payload now? Only on a bound virtqueue that will
   * run it, and only within this queue's and the target's budgets: a command that will be
   * refused anyway is skipped unbuffered, one that does not fit waits (reading stops).
   */
  private admitVq(raw: Buffer): PayloadAdmission {
    const role = this.role;
    // Before Connect not even a skipped payload is read (docs/PROTOCOL.md, "Payload
    // admission"): the command is answered ENOCMD and the connection closed.
    if (!this.closed && role.kind === 'unbound') return 'close';
    if (this.closed || this.disconnecting || role.kind !== 'virtqueue') return 'discard';
    if (this.requests.size >= this.queueSize || !role.instance.acceptsRequests) return 'discard';
    // Read in place (no decoded object per command): the VQ command's le32 out and in lengths.
    if (raw.readUInt16LE(0) !== Opcode.Vq) return 'discard';
    const outLength = raw.readUInt32LE(8);
    const inLength = raw.readUInt32LE(12);
    const max = role.instance.maxRequestBytes(role.vqIndex);
    if (outLength > max || inLength > max) return 'discard';
    const need = outLength + inLength;
    if (!this.budget.fits(need)) return this.budget.whenGiven();
    if (!this.ctx.targetBudget.fits(need)) return this.ctx.targetBudget.whenGiven();
    this.budget.take(need);
    this.ctx.targetBudget.take(need);
    this.admitted = need;
    return 'accept';
  }

  private giveBack(bytes: number): void {
    this.budget.give(bytes);
    this.ctx.targetBudget.give(bytes);
  }

  /** The peer sends nothing more: answer what it sent, then close. */
  private onPeerEnded(): void {
    if (this.closed) return;
    this.log.debug(`${this.connection.peer}: peer ended its side; closing once ${this.requests.size} command(s) are answered`);
    // Unlike an instance teardown, nothing is cancelled: the peer still reads what it asked for.
    this.disconnecting = true;
    void this.whenIdle().then(() => this.close());
  }

  private get log(): Logger {
    return this.ctx.log;
  }

  private onCommand(raw: Buffer, payload: Buffer | VqRequestData): void {
    const reserved = this.admitted;
    this.admitted = 0;
    const data: VqRequestData | null = Buffer.isBuffer(payload) ? null : payload;
    if (this.closed) return this.drop(reserved, data);
    const opcode = raw.readUInt16LE(0);
    const id = raw.readUInt16LE(2);
    // A VQ command on a virtqueue, the steady state, is read in place (runVq): no decoded object.
    const cmd = opcode === Opcode.Vq && this.role.kind === 'virtqueue' ? null : decodeCommand(raw);
    this.stats.commands++;
    // Ids 0xff00-0xffff name target events on a control queue: a completion with one would be
    // indistinguishable from an event, so no status can answer it.
    const controlQueue =
      this.role.kind === 'control' ||
      (this.role.kind === 'unbound' && cmd !== null && !isUnknownCommand(cmd) && cmd.opcode === Opcode.Connect && cmd.deviceInstanceId === CONTROL_QUEUE_INSTANCE_ID);
    if (controlQueue && id >= RESERVED_COMMAND_ID_FIRST) {
      this.drop(reserved, data);
      return this.violation(`${opcodeName(opcode)}: command id 0x${id.toString(16)} is reserved for target events`);
    }
    // A second command under an id still in flight makes every later completion with that id
    // ambiguous (and on keyed transports would alias the first one's buffers).
    if (this.requests.has(id)) {
      this.drop(reserved, data);
      return this.violation(`${opcodeName(opcode)}: command id ${id} is already in flight`);
    }
    if (this.disconnecting) {
      this.drop(reserved, data);
      this.reply(encodeBareCompletion(Status.ENOCMD, id));
      return;
    }
    if (this.requests.size >= this.queueSize) {
      this.drop(reserved, data);
      this.log.warn(`${this.connection.peer}: ${opcodeName(opcode)} beyond queue size ${this.queueSize}: ECMDQUOT`);
      this.reply(encodeBareCompletion(Status.ECMDQUOT, id));
      return;
    }
    const req = this.freeSlots.pop() ?? new TargetRequest(this.sink, this.steps);
    req.start(id, opcode, data, reserved);
    this.busySlots++;
    this.requests.add(req);
    let done: Dispatched;
    try {
      done = cmd === null ? this.dispatchVq(req, raw) : this.dispatch(req, cmd, payload);
    } catch (err) {
      done = Promise.reject(err);
    }
    // The slot's own callbacks (bound once per slot) end the command: no closure per command.
    if (done === FINISHES_ITSELF) return this.clearConnectTimerOnce();
    if (done) done.then(req.onDispatched, req.onDispatchFailed);
    else req.finish();
    this.clearConnectTimerOnce();
  }

  private clearConnectTimerOnce(): void {
    if (this.connectTimer !== null && this.role.kind !== 'unbound') this.clearConnectTimer();
  }

  /** The slot's VQ completion goes to the transport; the slot hears back through onSent. */
  private sendVq(req: TargetRequest, completion: Buffer, written: number): void {
    const c = this.connection;
    if (this.closed) return req.onSent(null);
    c.completeVq(req.data!, completion, written, req.onSent);
  }

  /** A command refused before a slot owns it: what it was given goes back. */
  private drop(reserved: number, data: VqRequestData | null): void {
    this.giveBack(reserved);
    data?.release();
  }

  /** The peer broke the protocol in a way no status can answer: close the queue. */
  private violation(why: string): void {
    this.log.warn(`${this.connection.peer}: closing the queue: ${why}`);
    this.close();
  }

  /** The command's id is free again (its completion is leaving, or it ended without one). */
  private vacate(req: TargetRequest): void {
    this.requests.remove(req);
  }

  /** A command has left: its budget goes back and its slot to the pool. */
  private slotFinished(req: TargetRequest): void {
    this.giveBack(req.reserved);
    req.reserved = 0;
    this.vacate(req);
    this.busySlots--;
    this.freeSlots.push(req);
    this.left.wake();
  }

  /**
   * Resolves when no command of this queue is running (besides `except`) and the ones that
   * have completed have finished too.
   */
  async whenIdle(except?: TargetRequest): Promise<void> {
    while (this.busySlots - (except !== undefined && except.state !== 'free' ? 1 : 0) > 0) await this.left.wait();
  }

  /** Cancel every command in flight; resolves when all of them have left the queue. */
  async cancelAll(reason: string): Promise<void> {
    for (const r of this.requests.list()) r.cancel(reason);
    await this.whenIdle();
  }

  /** `refusal`: whether a non-SUCCESS status counts as a refused command (errors, error log). */
  private reply(completion: Buffer, refusal = true, payload?: Buffer): void {
    if (this.closed) return;
    const status = completion.readUInt16LE(0);
    if (status !== Status.SUCCESS && refusal) this.countFailure(status, completion.readUInt16LE(2));
    this.connection.sendCompletion(completion, payload);
  }

  /** A refused command: counted, and logged in the device's error log once the queue is bound. */
  private countFailure(status: number, commandId: number): void {
    this.stats.errors++;
    const role = this.role;
    if (role.kind !== 'unbound') role.instance.admin?.recordRefused(role.kind === 'virtqueue' ? role.vqIndex : 0xffff, status, commandId);
  }

  get size(): number {
    return this.queueSize;
  }

  /** Request slots this queue has made so far: at most the queue size plus completions still leaving. */
  get slotsMade(): number {
    return this.freeSlots.length + this.busySlots;
  }

  get inFlightCount(): number {
    return this.requests.size;
  }

  /** Target-initiated control-queue completions (keepalive, config change). */
  sendEvent(completion: Buffer): void {
    this.reply(completion);
  }

  private refuse(req: TargetRequest, status: number, why: string): void {
    this.log.info(`${this.connection.peer}: ${opcodeName(req.opcode)} → ${formatStatus(status)}: ${why}`);
    req.complete(encodeBareCompletion(status, req.commandId));
  }

  /** A VQ command on a virtqueue (onCommand checked both), read from its header in place. */
  private dispatchVq(req: TargetRequest, raw: Buffer): Dispatched {
    const role = this.role as Extract<SessionRole, { kind: 'virtqueue' }>;
    if (!req.data) return this.refuse(req, Status.ENOCMD, 'VQ command without its buffers');
    return this.runVq(req, role.instance, role.vqIndex, raw.readUInt32LE(8), raw.readUInt32LE(12), req.data);
  }

  /** Runs a command; a promise when it goes on after this turn (Disconnect, Reset), FINISHES_ITSELF for a VQ command. */
  private dispatch(req: TargetRequest, cmd: DecodedCommand, payload: Buffer | VqRequestData): Dispatched {
    const role = this.role;
    if (isUnknownCommand(cmd)) return this.refuse(req, Status.ENOCMD, 'unknown opcode');
    if (cmd.opcode === Opcode.Connect) {
      if (role.kind !== 'unbound') return this.refuse(req, Status.ENOCMD, 'queue is already connected');
      return this.connect(req, cmd, payload instanceof Buffer ? payload : EMPTY);
    }
    if (role.kind === 'unbound') return this.refuse(req, Status.ENOCMD, 'the first command on a queue must be Connect');
    if (cmd.opcode === Opcode.Disconnect) return this.disconnect(req);
    if (role.kind === 'virtqueue') {
      if (cmd.opcode !== Opcode.Vq) return this.refuse(req, Status.ENOCMD, 'only VQ and Disconnect are valid on a virtqueue');
      if (!req.data) return this.refuse(req, Status.ENOCMD, 'VQ command without its buffers');
      return this.runVq(req, role.instance, role.vqIndex, cmd.outLength, cmd.inLength, req.data);
    }
    const inst = role.instance;
    inst.heard();
    const id = cmd.commandId;
    if (inst.authPending && !BEFORE_AUTH.has(cmd.opcode)) return this.refuse(req, Status.EACLREJECTED, `${inst.label} has not authenticated`);
    switch (cmd.opcode) {
      case Opcode.Keepalive:
        req.complete(encodeBareCompletion(Status.SUCCESS, id));
        break;
      case Opcode.GetFeature:
        this.replyFeature(req, inst.getFeature(cmd.featureSelect));
        break;
      case Opcode.SetFeature:
        req.complete(encodeBareCompletion(inst.setFeature(cmd.featureSelect, cmd.feature).status, id));
        break;
      case Opcode.GetKeyedNumDescs:
        if (!inst.keyedNumDescsNegotiated) return this.refuse(req, Status.ENOCMD, 'VIRTIO_OF_F_KEYED_NUM_DESCS not negotiated');
        req.complete(encodeKeyedNumDescsCompletion(Status.SUCCESS, id, Math.min(255, this.connection.maxKeyedDescriptors)));
        break;
      case VOF_OP_GET_INLINE_DATA_SIZE:
        if (inst.inlineDataSize === 0) return this.refuse(req, Status.ENOCMD, 'VOF_F_INLINE_DATA not negotiated');
        req.complete(encodeU32Completion(Status.SUCCESS, id, inst.inlineDataSize));
        break;
      case VOF_OP_AUTH_NEGOTIATE:
      case VOF_OP_AUTH_REPLY:
        return this.authStep(req, inst, cmd.opcode, cmd.data);
      case Opcode.GetVendorId:
        req.complete(encodeU32Completion(Status.SUCCESS, id, inst.device.vendorId));
        break;
      case Opcode.GetDeviceId:
        req.complete(encodeU32Completion(Status.SUCCESS, id, inst.device.deviceId));
        break;
      case Opcode.ResetDevice:
        // Answered only once every VQ command in flight has ended (virtio 1.x 2.4.1).
        return inst.reset().then(() => req.complete(encodeBareCompletion(Status.SUCCESS, id)));
      case Opcode.GetStatus:
        req.complete(encodeU32Completion(Status.SUCCESS, id, inst.deviceStatus));
        break;
      case Opcode.SetStatus:
        if (cmd.status === 0) return inst.reset().then(() => req.complete(encodeBareCompletion(Status.SUCCESS, id)));
        req.complete(encodeBareCompletion(inst.setStatus(cmd.status).status, id));
        break;
      case Opcode.GetDeviceFeature:
        this.replyFeature(req, inst.getDeviceFeature(cmd.featureSelect));
        break;
      case Opcode.SetDriverFeature:
        req.complete(encodeBareCompletion(inst.setDriverFeature(cmd.featureSelect, cmd.feature).status, id));
        break;
      case Opcode.GetVqSize: {
        const r = inst.getVqSize(cmd.vqIndex);
        // EQUEUEQUOT is how an initiator finds the last (admin) virtqueue: an answer, not a refusal.
        req.complete(encodeVqSizeCompletion(r.status, id, Number(r.value ?? 0)), r.status !== Status.EQUEUEQUOT);
        break;
      }
      case Opcode.GetConfig: {
        const r = inst.getConfig(cmd.offset, cmd.bytes);
        req.complete(encodeGetConfigCompletion(r.status, id, r.generation ?? 0, BigInt(r.value ?? 0)));
        inst.configRead();
        break;
      }
      case Opcode.SetConfig:
        req.complete(encodeBareCompletion(inst.setConfig(cmd.offset, cmd.bytes, cmd.config).status, id));
        break;
      case Opcode.Vq:
        return this.refuse(req, Status.ENOCMD, 'VQ command on the control queue');
    }
  }

  /**
   * One step of the authentication exchange. A failure (wrong response, a step out of order, an
   * IVQN without a secret here) is answered EACLREJECTED with a zero field and then the control
   * queue is closed, which destroys the instance: each attempt costs a new Connect.
   */
  private authStep(req: TargetRequest, inst: DeviceInstance, opcode: number, data: Buffer): void {
    const id = req.commandId;
    if (!inst.authNegotiated) return this.refuse(req, Status.ENOCMD, 'VOF_F_AUTH not negotiated');
    const negotiate = opcode === VOF_OP_AUTH_NEGOTIATE;
    const step = inst.auth === null ? { ok: false as const, why: 'this target holds no secret for the IVQN' } : negotiate ? inst.auth.negotiate(data) : inst.auth.reply(data);
    if (step.ok) {
      if (!negotiate) this.log.info(`${this.connection.peer}: ${inst.label} authenticated${this.identityNote()}`);
      req.complete(encodeAuthCompletion(Status.SUCCESS, id, step.data));
      return;
    }
    this.log.warn(`${this.connection.peer}: ${inst.label}: authentication failed: ${step.why}${this.identityNote()}`);
    req.complete(encodeAuthCompletion(Status.EACLREJECTED, id));
    this.violation(`${inst.label}: authentication failed`);
  }

  private replyFeature(req: TargetRequest, r: OpResult): void {
    req.complete(encodeFeatureCompletion(r.status, req.commandId, BigInt(r.value ?? 0)));
  }

  private connect(req: TargetRequest, cmd: ConnectCommand, body: Buffer): void {
    const id = cmd.commandId;
    const refuse = (status: number, why: string) => {
      this.log.info(`${this.connection.peer}: Connect → ${formatStatus(status)}: ${why}`);
      req.complete(encodeConnectCompletion(status, id, cmd.deviceInstanceId));
      // An initiator that is refused access once corrects itself or gives up; one that keeps
      // trying on the same connection is probing (instance ids, IVQNs, TVQNs): close it after
      // the answer. Quota and size refusals are no probe and do not count.
      if (PROBE_ANSWERS.has(status) && ++this.refusedConnects >= MAX_REFUSED_CONNECTS) {
        this.violation(`${this.refusedConnects} refused Connects on one connection`);
      }
    };
    const parsed = body.length === CONNECT_BODY_SIZE ? decodeConnectBody(body) : null;
    if (body.length === CONNECT_BODY_SIZE && parsed === null) return refuse(Status.EBADVQN, 'malformed VQN in Connect Body');

    if (cmd.deviceInstanceId === CONTROL_QUEUE_INSTANCE_ID) {
      if (!parsed) return refuse(Status.ENOTGT, 'control queue Connect without a Connect Body');
      if (cmd.queueSize > VIRTIO_OF_CONTROL_QUEUE_SIZE) {
        return refuse(Status.EQSIZEQUOT, `control queue size ${cmd.queueSize} > ${VIRTIO_OF_CONTROL_QUEUE_SIZE}`);
      }
      this.followsRedirects = (connectFlags(body) & VOF_CONNECT_F_REDIRECT) !== 0;
      const moved = this.ctx.redirectFor?.(parsed, this);
      if (moved && 'status' in moved) return refuse(moved.status, `no redirect of ${quotePeerString(parsed.ivqn)} → ${quotePeerString(parsed.tvqn)}${this.identityNote()}: ${moved.why}`);
      if (moved) {
        // After the access check: a peer the export does not admit learns nothing of where it went.
        if (!this.followsRedirects) return refuse(Status.EACLREJECTED, `${quotePeerString(parsed.tvqn)} moved to ${moved.url}; this initiator does not follow redirects`);
        this.log.info(`${this.connection.peer}: Connect for ${quotePeerString(parsed.tvqn)} → EREDIRECT to ${moved.url}`);
        req.complete(encodeRedirectCompletion(id), false, moved.record);
        return;
      }
      const created = this.ctx.createInstance(parsed, this);
      const pair = `${quotePeerString(parsed.ivqn)} → ${quotePeerString(parsed.tvqn)}${this.identityNote()}`;
      if (!('id' in created)) return refuse(created.status, `no instance of ${pair}: ${created.why}`);
      this.queueSize = cmd.queueSize || VIRTIO_OF_CONTROL_QUEUE_SIZE;
      this.role = { kind: 'control', instance: created };
      this.ctx.sessionBound(this);
      this.log.info(`${this.connection.peer}: instance ${created.id} created: ${pair}`);
      req.complete(encodeConnectCompletion(Status.SUCCESS, id, created.id));
      return;
    }

    const inst = this.ctx.findInstance(cmd.deviceInstanceId);
    if (!inst || inst.destroyed) return refuse(Status.EBADDEV, `no instance ${cmd.deviceInstanceId}`);
    // The binding rule (docs/PROTOCOL.md): a virtqueue joins an instance only when its
    // connection proves what the control queue proved.
    const refusal = this.ctx.bindingRefusal(inst, this, parsed);
    if (refusal) return refuse(refusal.status, `virtqueue ${cmd.vqIndex} of instance ${inst.id} refused: ${refusal.why}`);
    // After the binding checks, so only the instance's own initiator learns that it is waiting
    // for authentication; a stranger still gets EBADDEV.
    if (inst.authPending) return refuse(Status.EACLREJECTED, `virtqueue ${cmd.vqIndex} of ${inst.label} refused: the instance has not authenticated`);
    if (cmd.vqIndex >= inst.queueCount) {
      return refuse(Status.EQUEUEQUOT, `vq_index ${cmd.vqIndex} ≥ ${inst.queueCount} queues`);
    }
    if (inst.virtqueues.has(cmd.vqIndex)) return refuse(Status.EQUEUEQUOT, `virtqueue ${cmd.vqIndex} is already connected`);
    const max = inst.maxQueueSize(cmd.vqIndex);
    if (cmd.queueSize > max) return refuse(Status.EQSIZEQUOT, `queue size ${cmd.queueSize} > ${max}`);
    this.queueSize = cmd.queueSize || max;
    this.role = { kind: 'virtqueue', instance: inst, vqIndex: cmd.vqIndex };
    inst.virtqueues.set(cmd.vqIndex, this);
    // vof inline data: this virtqueue keeps the layout negotiated now, before the initiator can send a VQ command.
    if (inst.inlineDataSize > 0) this.connection.enableInlineData?.(inst.inlineDataSize);
    if (inst.remoteInvalidation) this.connection.enableRemoteInvalidation?.();
    this.ctx.sessionBound(this);
    this.log.info(
      `${this.connection.peer}: virtqueue ${cmd.vqIndex} of instance ${inst.id} attached: ` +
        `${quotePeerString(inst.ivqn)} → ${quotePeerString(inst.tvqn)}${parsed ? '' : ' (no Connect Body)'}${this.identityNote()}`,
    );
    req.complete(encodeConnectCompletion(Status.SUCCESS, id, inst.id));
  }

  /** ", identity "X"" when the connection authenticated (TLS), for log lines. */
  private identityNote(): string {
    const identity = this.connection.identity;
    return identity === undefined ? '' : `, identity ${quotePeerString(identity)}`;
  }

  /**
   * A VQ command's life on its slot, each state left when its event arrives:
   *   buffers (readable, then writable) → executing (the device) → completing (the transport
   *   sends the completion and written bytes) → the slot is free (onSent: the slot ends itself).
   * A step whose input is at hand goes on at once: on stream transports a command reaches the
   * device in the turn it arrived, with no promise of the core's. Keyed transports fetch
   * (RDMA READ) or wait for pool memory first (VqRequestData.fetch). Cancellation is checked before
   * the device is called and makes the completion ESTATUS.
   */
  private runVq(req: TargetRequest, inst: DeviceInstance, vqIndex: number, outLength: number, inLength: number, data: VqRequestData): Dispatched {
    const id = req.commandId;
    // Virtqueue traffic proves the initiator alive as much as a keepalive does.
    inst.heard();
    if (!inst.acceptsRequests) return req.complete(encodeVqCompletion(Status.ESTATUS, id, 0));
    const max = inst.maxRequestBytes(vqIndex);
    if (outLength > max || inLength > max) {
      this.log.info(`${this.connection.peer}: VQ command of ${outLength}+${inLength} bytes over the ${max}-byte limit`);
      return req.complete(encodeVqCompletion(outLength > max ? Status.EOUTVQBUF : Status.EINVQBUF, id, 0));
    }
    req.instance = inst;
    req.vqIndex = vqIndex;
    const readable = data.readOutNow();
    const writable = inLength === 0 ? EMPTY : data.writableNow();
    if (readable === undefined || writable === undefined) {
      // Keyed transports: the RDMA READ or pool memory first; the slot hears back (buffersReady
      // or buffersFailed, see RequestSteps.fetched) and from there ends itself.
      data.fetch(req);
      return FINISHES_ITSELF;
    }
    return this.execute(req, readable, writable);
  }

  /** The transport could not supply a VQ buffer (VqTransferError): EOUTVQBUF or EINVQBUF. */
  private fetchFailed(req: TargetRequest, err: VqTransferError): void {
    const status = err.direction === 'out' ? Status.EOUTVQBUF : Status.EINVQBUF;
    this.log.info(`${this.connection.peer}: VQ command ${req.commandId}: ${err.message}: ${statusName(status)}`);
    req.complete(encodeVqCompletion(status, req.commandId, 0));
  }

  /**
   * Hand the buffers to the device; its report moves the slot on (deviceDone / deviceFailed,
   * which end it), possibly before submitRequest returns. Answered at once (void) when the
   * device is not called or throws.
   */
  private execute(req: TargetRequest, readable: Buffer, writable: Buffer): Dispatched {
    // Reset or teardown while the buffers were on their way: the device never sees them.
    if (req.cancelled) return req.complete(encodeVqCompletion(Status.ESTATUS, req.commandId, 0));
    req.readable = readable;
    req.writable = writable;
    req.executing = true;
    try {
      req.instance!.submitRequest(req.vqIndex, readable, writable, req);
    } catch (err) {
      // A device that threw after reporting the end has already moved the slot on (it may be
      // free again): a bug of the device's, logged, and nothing more done to the slot.
      if (!req.executing) {
        this.steps.dispatchFailed(req, err);
        return FINISHES_ITSELF;
      }
      req.executing = false;
      return this.executeFailed(req, err);
    }
    return FINISHES_ITSELF;
  }

  /** True when the completion is on its way (the slot's onSent ends the command). */
  private executed(req: TargetRequest, written: number): boolean {
    const writable = req.writable!;
    if (!Number.isSafeInteger(written) || written < 0 || written > writable.length) {
      this.deviceFault(req, `vq ${req.vqIndex}: device reports ${written} bytes written into ${writable.length} device-writable bytes`);
      return false;
    }
    req.written = written;
    // Into the slot's own completion buffer: it is not reused before the slot is free again.
    return req.completeVq(encodeVqCompletion(Status.SUCCESS, req.commandId, written, req.completion), written);
  }

  /** Errors the device can express (IOERR, UNSUPP) come in its own status; a throw is a fault. */
  private executeFailed(req: TargetRequest, err: unknown): void {
    // A device that stops a cancelled command by throwing (throwIfAborted) did as asked.
    if (req.cancelled) return req.complete(encodeVqCompletion(Status.ESTATUS, req.commandId, 0));
    // Only a reset clears it: the instance is now DEVICE_NEEDS_RESET, the command ESTATUS.
    this.deviceFault(req, `vq ${req.vqIndex}: ${(err as Error)?.message ?? String(err)}`);
  }

  private completed(req: TargetRequest): void {
    this.stats.bytesOut += req.readable!.length;
    this.stats.bytesIn += req.written;
  }

  private completeFailed(req: TargetRequest, err: unknown): void {
    if (!(err instanceof VqTransferError)) throw err;
    this.log.info(`${this.connection.peer}: VQ command ${req.commandId}: ${err.message}: EINVQBUF`);
    req.failVq(Status.EINVQBUF);
  }

  /** A VQ command's device faulted: the instance needs a reset, the command is ESTATUS. */
  private deviceFault(req: TargetRequest, why: string): void {
    req.instance!.needsReset(why);
    req.complete(encodeVqCompletion(Status.ESTATUS, req.commandId, 0));
  }

  private async disconnect(req: TargetRequest): Promise<void> {
    this.disconnecting = true;
    // Every other command of this queue completes before the Disconnect Completion (seed).
    await this.whenIdle(req);
    const role = this.role;
    if (role.kind === 'control') {
      // The initiator should have disconnected its virtqueues first; if not, let theirs drain.
      await Promise.all([...role.instance.virtqueues.values()].map((vq) => vq.whenIdle()));
    }
    req.complete(encodeBareCompletion(Status.SUCCESS, req.commandId));
    this.unbind();
    this.close();
  }

  private unbind(): void {
    const role = this.role;
    this.role = { kind: 'unbound' };
    if (role.kind === 'control') role.instance.destroy();
    else if (role.kind === 'virtqueue' && role.instance.virtqueues.get(role.vqIndex) === this) {
      role.instance.virtqueues.delete(role.vqIndex);
    }
  }

  /**
   * Stop waiting for this queue (live drain, at the end of the grace time): every command in
   * flight is cancelled and answered at once with ESTATUS, then the queue closes. Device work
   * that ignores the cancellation runs on; its result is discarded. Returns how many commands
   * were cut short.
   */
  abort(reason: string): number {
    if (this.closed) return 0;
    this.disconnecting = true;
    const cut = this.requests.list();
    for (const req of cut) {
      req.cancel(reason);
      req.complete(encodeBareCompletion(Status.ESTATUS, req.commandId));
    }
    this.close();
    return cut.length;
  }

  /** Instance teardown: cancel what is in flight, close once it has ended. */
  closeWhenIdle(): void {
    this.disconnecting = true;
    void this.cancelAll('instance destroyed').then(() => this.close());
  }

  private close(): void {
    if (this.closed) return;
    this.closed = true;
    this.connection.close();
    // Nothing more can be answered on this queue: stop the work still running for it.
    void this.cancelAll('queue closed');
  }

  private onTransportClosed(reason?: Error): void {
    this.closed = true;
    this.ctx.sessionClosed(this);
    void this.cancelAll('connection closed');
    this.clearConnectTimer();
    // A command admitted but never delivered (the peer left in the middle of its payload).
    this.giveBack(this.admitted);
    this.admitted = 0;
    const role = this.role;
    if (role.kind !== 'unbound') {
      const what = role.kind === 'control' ? 'control queue' : `virtqueue ${role.vqIndex}`;
      this.log.info(`${this.connection.peer}: ${what} of instance ${role.instance.id} closed${reason ? `: ${reason.message}` : ''}`);
    }
    this.unbind();
  }
}
