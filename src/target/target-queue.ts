import {
  CONTROL_QUEUE_INSTANCE_ID,
  Opcode,
  RESERVED_COMMAND_ID_FIRST,
  Status,
  VIRTIO_OF_CONTROL_QUEUE_SIZE,
  formatStatus,
  opcodeName,
} from '../protocol/constants.js';
import { VQ_COMMAND, decodeCommand, isUnknownCommand } from '../protocol/command.js';
import { encodeBareCompletion } from '../protocol/completion.js';
import type { ConnectBody } from '../protocol/connect-body.js';
import type { Logger } from '../util/log.js';
import type { Refusal } from './access-policy.js';
import type { PayloadAdmission, TargetConnection, VqRequestData } from '../transport/transport.js';
import { QueueStats } from './admin/queue-stats.js';
import { ByteBudget } from '../util/byte-budget.js';
import type { DeviceInstance } from './device-instance.js';
import { TargetRequest, type CompletionSink } from './target-request.js';
import { WakeSignal } from '../util/wake-signal.js';
import type { Redirect } from './redirect.js';
import { dispatchCommand } from './control-opcodes.js';
import { unbind } from './queue-connect.js';
import { FINISHES_ITSELF, VqExecution, type Dispatched } from './vq-execution.js';
import { getLE16, getLE32 } from '../protocol/fields.js';
import { COMMAND_HEADER, COMPLETION_HEADER } from '../protocol/header.js';

/*
 * A target queue is split along nvmet's lines (drivers/nvme/target): this file is the core
 * (core.c: command intake, the slot table, replies, close, abort and teardown); Connect,
 * Disconnect, binding and the authentication steps are in queue-connect.ts (fabrics-cmd.c);
 * the opcodes a queue answers, with their rules, are a table in control-opcodes.ts
 * (admin-cmd.c); a VQ command's state machine over its TargetRequest is vq-execution.ts
 * (io-cmd-*.c). Those parts get the target queue as an argument: the members they share are marked
 * "(parts)" below and are not for users of a target queue.
 */

/** What a target queue needs from the target it belongs to. */
export interface TargetContext {
  readonly log: Logger;
  /** Create an instance for a control-queue Connect, or say which status refuses it and why. */
  createInstance(body: ConnectBody, control: TargetQueue): DeviceInstance | Refusal;
  findInstance(id: number): DeviceInstance | undefined;
  /** Why this connection may not become a virtqueue of `inst` (the binding rule), or null. */
  bindingRefusal(inst: DeviceInstance, queue: TargetQueue, body: ConnectBody | null): Refusal | null;
  /** The target queue completed Connect (it stops counting as unbound). */
  queueBound(queue: TargetQueue): void;
  /** The target queue's connection is gone. */
  queueClosed(queue: TargetQueue): void;
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
  redirectFor?(body: ConnectBody, control: TargetQueue): Redirect | Refusal | undefined;
}

/** What Connect made of the queue (queue-connect.ts sets it; Disconnect and close unbind). */
export type QueueRole =
  | { kind: 'unbound' }
  | { kind: 'control'; instance: DeviceInstance }
  | { kind: 'virtqueue'; instance: DeviceInstance; vqIndex: number };


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
 * Connect, which makes the target queue a control queue or binds it to a virtqueue of an existing
 * instance. Holds one TargetRequest per command in flight, keyed by command id: at most the
 * queue size of them (ECMDQUOT beyond), and never two with the same id (the queue closes).
 * A request leaves the map when its completion is sent (the peer may then reuse the id at
 * once) and keeps its buffers, and its share of the budgets, until its data has left.
 */
export class TargetQueue {
  /** (parts) What Connect made of this queue. */
  role: QueueRole = { kind: 'unbound' };
  /** (parts) Commands this queue may hold in flight: the control queue's until Connect sets it. */
  queueSize = VIRTIO_OF_CONTROL_QUEUE_SIZE;
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
  /** VQ execution, what a slot's callbacks lead to (RequestSteps, see TargetRequest): made once per queue. */
  private readonly vq = new VqExecution(this);
  /** (parts) No new command runs: Disconnect, the peer's end, abort or teardown. */
  disconnecting = false;
  private closed = false;
  /** (parts) Connects refused on this connection (see MAX_REFUSED_CONNECTS in queue-connect.ts). */
  refusedConnects = 0;
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
    /** (parts) The target this queue belongs to. */
    readonly ctx: TargetContext,
  ) {
    this.budget = new ByteBudget(ctx.queueBudgetBytes);
    if (ctx.connectTimeoutMs > 0) {
      this.connectTimer = setTimeout(() => this.onConnectTimeout(), ctx.connectTimeoutMs);
      this.connectTimer.unref();
    }
    connection.start({
      admitVq: (cmd, payloadBytes) => this.admitVq(cmd, payloadBytes),
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
   * refused anyway is skipped unbuffered, one that does not fit waits (reading stops). The
   * payload counts as what holding it costs (`payloadBytes`, from the transport), not just
   * out_length: a budget bounds memory only if it counts the memory.
   */
  private admitVq(raw: Buffer, payloadBytes: number): PayloadAdmission {
    const role = this.role;
    // Before Connect not even a skipped payload is read (docs/PROTOCOL.md, "Payload
    // admission"): the command is answered ENOCMD and the connection closed.
    if (!this.closed && role.kind === 'unbound') return 'close';
    if (this.closed || this.disconnecting || role.kind !== 'virtqueue') return 'discard';
    if (this.requests.size >= this.queueSize || !role.instance.acceptsRequests) return 'discard';
    // Read in place (no decoded object per command): the VQ command's le32 out and in lengths.
    if (getLE16(raw, COMMAND_HEADER.opcode) !== Opcode.Vq) return 'discard';
    const outLength = getLE32(raw, VQ_COMMAND.outLength);
    const inLength = getLE32(raw, VQ_COMMAND.inLength);
    const max = role.instance.maxRequestBytes(role.vqIndex);
    if (outLength > max || inLength > max) return 'discard';
    const need = Math.max(outLength, payloadBytes) + inLength;
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

  /** (parts) The target's logger. */
  get log(): Logger {
    return this.ctx.log;
  }

  private onCommand(raw: Buffer, payload: Buffer | VqRequestData): void {
    const reserved = this.admitted;
    this.admitted = 0;
    const data: VqRequestData | null = Buffer.isBuffer(payload) ? null : payload;
    if (this.closed) return this.drop(reserved, data);
    const opcode = getLE16(raw, COMMAND_HEADER.opcode);
    const id = getLE16(raw, COMMAND_HEADER.commandId);
    // A VQ command on a virtqueue, the steady state, is read in place (vq-execution.ts): no decoded object.
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
    const req = this.freeSlots.pop() ?? new TargetRequest(this.sink, this.vq);
    req.start(id, opcode, data, reserved);
    this.busySlots++;
    this.requests.add(req);
    let done: Dispatched;
    try {
      done = cmd === null ? this.dispatchVq(req, raw) : dispatchCommand(this, req, cmd, payload);
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

  /** (parts) The peer broke the protocol in a way no status can answer: close the queue. */
  violation(why: string): void {
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
    const status = getLE16(completion, COMPLETION_HEADER.status);
    if (status !== Status.SUCCESS && refusal) this.countFailure(status, getLE16(completion, COMPLETION_HEADER.commandId));
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

  /** (parts) Answer a command with a refusal `status`, logged with why. */
  refuse(req: TargetRequest, status: number, why: string): void {
    this.log.info(`${this.connection.peer}: ${opcodeName(req.opcode)} → ${formatStatus(status)}: ${why}`);
    req.complete(encodeBareCompletion(status, req.commandId));
  }

  /** A VQ command on a virtqueue (onCommand checked both): to its state machine. */
  private dispatchVq(req: TargetRequest, raw: Buffer): Dispatched {
    const role = this.role as Extract<QueueRole, { kind: 'virtqueue' }>;
    return this.vq.run(req, raw, role.instance, role.vqIndex);
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

  /** (parts) Close the connection; what is still in flight is cancelled. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.connection.close();
    // Nothing more can be answered on this queue: stop the work still running for it.
    void this.cancelAll('queue closed');
  }

  private onTransportClosed(reason?: Error): void {
    this.closed = true;
    this.ctx.queueClosed(this);
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
    unbind(this);
  }
}
