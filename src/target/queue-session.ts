import {
  CONTROL_QUEUE_INSTANCE_ID,
  CONNECT_BODY_SIZE,
  Opcode,
  Status,
  VIRTIO_OF_CONTROL_QUEUE_SIZE,
  formatStatus,
  opcodeName,
} from '../protocol/constants.js';
import { decodeCommand, isUnknownCommand, type ConnectCommand, type DecodedCommand, type VqCommand } from '../protocol/command.js';
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
import type { Logger } from '../util/log.js';
import { VqTransferError, type PayloadAdmission, type TargetConnection, type VqRequestData } from '../transport/transport.js';
import { ByteBudget } from './byte-budget.js';
import type { DeviceInstance, OpResult } from './device-instance.js';

/** What a queue session needs from the target it belongs to. */
export interface TargetContext {
  readonly log: Logger;
  /** Create an instance for a control-queue Connect, or say which status refuses it. */
  createInstance(body: ConnectBody, control: QueueSession): DeviceInstance | number;
  findInstance(id: number): DeviceInstance | undefined;
  /** Bytes of VQ buffers (payload in, data out) all queues of the target may hold at once. */
  readonly targetBudget: ByteBudget;
  /** Bytes of VQ buffers one queue may hold at once. */
  readonly queueBudgetBytes: number;
  /** Close a connection that has not completed Connect within this time (0: never). */
  readonly connectTimeoutMs: number;
}

type SessionRole =
  | { kind: 'unbound' }
  | { kind: 'control'; instance: DeviceInstance }
  | { kind: 'virtqueue'; instance: DeviceInstance; vqIndex: number };

const EMPTY = Buffer.alloc(0);

/**
 * One Virtio-oF queue on one transport connection, target side. The first command must be
 * Connect, which makes the session a control queue or binds it to a virtqueue of an existing
 * instance. Counts commands in flight against the queue size (ECMDQUOT beyond it).
 */
export class QueueSession {
  private role: SessionRole = { kind: 'unbound' };
  private queueSize = VIRTIO_OF_CONTROL_QUEUE_SIZE;
  private inFlight = 0;
  private idleWaiters: Array<() => void> = [];
  private disconnecting = false;
  private closed = false;
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
    if (this.closed || this.disconnecting || role.kind !== 'virtqueue') return 'discard';
    if (this.inFlight >= this.queueSize || !role.instance.acceptsRequests) return 'discard';
    const cmd = decodeCommand(raw);
    if (cmd.opcode !== Opcode.Vq || isUnknownCommand(cmd)) return 'discard';
    const max = role.instance.device.maxRequestBytes;
    if (cmd.outLength > max || cmd.inLength > max) return 'discard';
    const need = cmd.outLength + cmd.inLength;
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
    this.log.debug(`${this.connection.peer}: peer ended its side; closing once ${this.inFlight} command(s) are answered`);
    this.closeWhenIdle();
  }

  private get log(): Logger {
    return this.ctx.log;
  }

  private onCommand(raw: Buffer, payload: Buffer | VqRequestData): void {
    const reserved = this.admitted;
    this.admitted = 0;
    if (this.closed) return this.giveBack(reserved);
    const cmd = decodeCommand(raw);
    if (this.disconnecting) {
      this.giveBack(reserved);
      this.reply(encodeBareCompletion(Status.ENOCMD, cmd.commandId));
      return;
    }
    if (this.inFlight >= this.queueSize) {
      this.giveBack(reserved);
      this.log.warn(`${this.connection.peer}: ${opcodeName(cmd.opcode)} beyond queue size ${this.queueSize}: ECMDQUOT`);
      this.reply(encodeBareCompletion(Status.ECMDQUOT, cmd.commandId));
      return;
    }
    this.inFlight++;
    let done: Promise<void>;
    try {
      done = this.dispatch(cmd, payload);
    } catch (err) {
      done = Promise.reject(err);
    }
    done
      .catch((err: unknown) => {
        this.log.error(`${this.connection.peer}: ${opcodeName(cmd.opcode)} failed: ${(err as Error).stack ?? String(err)}`);
      })
      .finally(() => {
        this.giveBack(reserved);
        this.settle();
      });
    if (this.role.kind !== 'unbound') this.clearConnectTimer();
  }

  private settle(): void {
    this.inFlight--;
    if (this.inFlight === 0) {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
  }

  /** Resolves when no command of this queue is in flight. */
  whenIdle(): Promise<void> {
    return this.inFlight === 0 ? Promise.resolve() : new Promise((r) => this.idleWaiters.push(r));
  }

  private reply(completion: Buffer): void {
    if (!this.closed) this.connection.sendCompletion(completion);
  }

  /** Target-initiated control-queue completions (keepalive, config change). */
  sendEvent(completion: Buffer): void {
    this.reply(completion);
  }

  private refuse(cmd: DecodedCommand, status: number, why: string): Promise<void> {
    this.log.info(`${this.connection.peer}: ${opcodeName(cmd.opcode)} → ${formatStatus(status)}: ${why}`);
    this.reply(encodeBareCompletion(status, cmd.commandId));
    return Promise.resolve();
  }

  private dispatch(cmd: DecodedCommand, payload: Buffer | VqRequestData): Promise<void> {
    const role = this.role;
    if (isUnknownCommand(cmd)) return this.refuse(cmd, Status.ENOCMD, 'unknown opcode');
    if (cmd.opcode === Opcode.Connect) {
      if (role.kind !== 'unbound') return this.refuse(cmd, Status.ENOCMD, 'queue is already connected');
      this.connect(cmd, payload instanceof Buffer ? payload : EMPTY);
      return Promise.resolve();
    }
    if (role.kind === 'unbound') return this.refuse(cmd, Status.ENOCMD, 'the first command on a queue must be Connect');
    if (cmd.opcode === Opcode.Disconnect) return this.disconnect(cmd.commandId);
    if (role.kind === 'virtqueue') {
      if (cmd.opcode !== Opcode.Vq) return this.refuse(cmd, Status.ENOCMD, 'only VQ and Disconnect are valid on a virtqueue');
      return this.runVq(role.instance, role.vqIndex, cmd, payload as VqRequestData);
    }
    const inst = role.instance;
    inst.heard();
    const id = cmd.commandId;
    switch (cmd.opcode) {
      case Opcode.Keepalive:
        this.reply(encodeBareCompletion(Status.SUCCESS, id));
        break;
      case Opcode.GetFeature:
        this.replyFeature(id, inst.getFeature(cmd.featureSelect));
        break;
      case Opcode.SetFeature:
        this.reply(encodeBareCompletion(inst.setFeature(cmd.featureSelect, cmd.feature).status, id));
        break;
      case Opcode.GetKeyedNumDescs:
        if (!inst.keyedNumDescsNegotiated) return this.refuse(cmd, Status.ENOCMD, 'VIRTIO_OF_F_KEYED_NUM_DESCS not negotiated');
        this.reply(encodeKeyedNumDescsCompletion(Status.SUCCESS, id, Math.min(255, this.connection.maxKeyedDescriptors)));
        break;
      case Opcode.GetVendorId:
        this.reply(encodeU32Completion(Status.SUCCESS, id, inst.device.vendorId));
        break;
      case Opcode.GetDeviceId:
        this.reply(encodeU32Completion(Status.SUCCESS, id, inst.device.deviceId));
        break;
      case Opcode.ResetDevice:
        inst.reset();
        this.reply(encodeBareCompletion(Status.SUCCESS, id));
        break;
      case Opcode.GetStatus:
        this.reply(encodeU32Completion(Status.SUCCESS, id, inst.deviceStatus));
        break;
      case Opcode.SetStatus:
        this.reply(encodeBareCompletion(inst.setStatus(cmd.status).status, id));
        break;
      case Opcode.GetDeviceFeature:
        this.replyFeature(id, inst.getDeviceFeature(cmd.featureSelect));
        break;
      case Opcode.SetDriverFeature:
        this.reply(encodeBareCompletion(inst.setDriverFeature(cmd.featureSelect, cmd.feature).status, id));
        break;
      case Opcode.GetVqSize: {
        const r = inst.getVqSize(cmd.vqIndex);
        this.reply(encodeVqSizeCompletion(r.status, id, Number(r.value ?? 0)));
        break;
      }
      case Opcode.GetConfig: {
        const r = inst.getConfig(cmd.offset, cmd.bytes);
        this.reply(encodeGetConfigCompletion(r.status, id, r.generation ?? 0, BigInt(r.value ?? 0)));
        break;
      }
      case Opcode.SetConfig:
        this.reply(encodeBareCompletion(inst.setConfig(cmd.offset, cmd.bytes, cmd.config).status, id));
        break;
      case Opcode.Vq:
        return this.refuse(cmd, Status.ENOCMD, 'VQ command on the control queue');
    }
    return Promise.resolve();
  }

  private replyFeature(id: number, r: OpResult): void {
    this.reply(encodeFeatureCompletion(r.status, id, BigInt(r.value ?? 0)));
  }

  private connect(cmd: ConnectCommand, body: Buffer): void {
    const id = cmd.commandId;
    const refuse = (status: number, why: string) => {
      this.log.info(`${this.connection.peer}: Connect → ${formatStatus(status)}: ${why}`);
      this.reply(encodeConnectCompletion(status, id, cmd.deviceInstanceId));
    };
    const parsed = body.length === CONNECT_BODY_SIZE ? decodeConnectBody(body) : null;
    if (body.length === CONNECT_BODY_SIZE && parsed === null) return refuse(Status.EBADVQN, 'malformed VQN in Connect Body');

    if (cmd.deviceInstanceId === CONTROL_QUEUE_INSTANCE_ID) {
      if (!parsed) return refuse(Status.ENOTGT, 'control queue Connect without a Connect Body');
      if (cmd.queueSize > VIRTIO_OF_CONTROL_QUEUE_SIZE) {
        return refuse(Status.EQSIZEQUOT, `control queue size ${cmd.queueSize} > ${VIRTIO_OF_CONTROL_QUEUE_SIZE}`);
      }
      const created = this.ctx.createInstance(parsed, this);
      if (typeof created === 'number') return refuse(created, `cannot create an instance of "${parsed.tvqn}" for "${parsed.ivqn}"`);
      this.queueSize = cmd.queueSize || VIRTIO_OF_CONTROL_QUEUE_SIZE;
      this.role = { kind: 'control', instance: created };
      this.log.info(`${this.connection.peer}: instance ${created.id} created: "${parsed.ivqn}" → "${parsed.tvqn}"`);
      this.reply(encodeConnectCompletion(Status.SUCCESS, id, created.id));
      return;
    }

    const inst = this.ctx.findInstance(cmd.deviceInstanceId);
    if (!inst || inst.destroyed) return refuse(Status.EBADDEV, `no instance ${cmd.deviceInstanceId}`);
    if (parsed && (parsed.tvqn !== inst.tvqn || parsed.ivqn !== inst.ivqn)) {
      return refuse(Status.EBADVQN, `VQNs differ from instance ${inst.id}'s`);
    }
    // Without a body the queue borrows the control queue's VQNs, so it must come from the same
    // host over the same transport: instance ids are guessable, the allow-list must not be.
    if (!parsed && hostOf(this.connection.peer) !== hostOf(inst.control.connection.peer)) {
      return refuse(Status.EBADVQN, `a virtqueue Connect without a Connect Body from ${this.connection.peer}, not the control queue's host`);
    }
    if (cmd.vqIndex >= inst.device.numQueues) {
      return refuse(Status.EQUEUEQUOT, `vq_index ${cmd.vqIndex} ≥ ${inst.device.numQueues} queues`);
    }
    if (inst.virtqueues.has(cmd.vqIndex)) return refuse(Status.EQUEUEQUOT, `virtqueue ${cmd.vqIndex} is already connected`);
    const max = inst.device.maxQueueSize(cmd.vqIndex);
    if (cmd.queueSize > max) return refuse(Status.EQSIZEQUOT, `queue size ${cmd.queueSize} > ${max}`);
    this.queueSize = cmd.queueSize || max;
    this.role = { kind: 'virtqueue', instance: inst, vqIndex: cmd.vqIndex };
    inst.virtqueues.set(cmd.vqIndex, this);
    this.reply(encodeConnectCompletion(Status.SUCCESS, id, inst.id));
  }

  private async runVq(inst: DeviceInstance, vqIndex: number, cmd: VqCommand, data: VqRequestData): Promise<void> {
    const id = cmd.commandId;
    // Virtqueue traffic proves the initiator alive as much as a keepalive does.
    inst.heard();
    if (!inst.acceptsRequests) {
      this.reply(encodeVqCompletion(Status.ESTATUS, id, 0));
      return;
    }
    const max = inst.device.maxRequestBytes;
    if (cmd.outLength > max || cmd.inLength > max) {
      this.log.info(`${this.connection.peer}: VQ command of ${cmd.outLength}+${cmd.inLength} bytes over the ${max}-byte limit`);
      this.reply(encodeVqCompletion(cmd.outLength > max ? Status.EOUTVQBUF : Status.EINVQBUF, id, 0));
      return;
    }
    let readable: Buffer;
    try {
      readable = await data.readOut();
    } catch (err) {
      if (!(err instanceof VqTransferError)) throw err;
      this.log.info(`${this.connection.peer}: VQ command ${id}: ${err.message}: EOUTVQBUF`);
      this.reply(encodeVqCompletion(Status.EOUTVQBUF, id, 0));
      return;
    }
    let written: readonly Buffer[];
    try {
      written = await inst.device.handleRequest(vqIndex, readable, cmd.inLength);
    } catch (err) {
      // Errors the device can express (IOERR, UNSUPP) come back as its own status; a throw is
      // a device fault that only a reset can clear.
      inst.needsReset(`vq ${vqIndex}: ${(err as Error).message}`);
      this.reply(encodeVqCompletion(Status.EINVQBUF, id, 0));
      return;
    }
    let length = 0;
    for (const b of written) length += b.length;
    if (length > cmd.inLength) throw new Error(`device wrote ${length} bytes into ${cmd.inLength} writable bytes`);
    if (this.closed) return;
    try {
      await this.connection.completeVq(data, encodeVqCompletion(Status.SUCCESS, id, length), written);
    } catch (err) {
      if (!(err instanceof VqTransferError)) throw err;
      this.log.info(`${this.connection.peer}: VQ command ${id}: ${err.message}: EINVQBUF`);
      this.reply(encodeVqCompletion(Status.EINVQBUF, id, 0));
    }
  }

  private async disconnect(commandId: number): Promise<void> {
    this.disconnecting = true;
    // This Disconnect counts as in flight itself; wait for everything else.
    this.inFlight--;
    await this.whenIdle();
    this.inFlight++;
    const role = this.role;
    if (role.kind === 'control') {
      // The initiator should have disconnected its virtqueues first; if not, let theirs drain.
      await Promise.all([...role.instance.virtqueues.values()].map((vq) => vq.whenIdle()));
    }
    this.reply(encodeBareCompletion(Status.SUCCESS, commandId));
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

  /** Close once the commands in flight have completed (instance teardown). */
  closeWhenIdle(): void {
    this.disconnecting = true;
    void this.whenIdle().then(() => this.close());
  }

  private close(): void {
    if (this.closed) return;
    this.closed = true;
    this.connection.close();
  }

  private onTransportClosed(reason?: Error): void {
    this.closed = true;
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

/** "tcp://10.0.0.1:5000" → "tcp://10.0.0.1": transport and host of a peer, without the port. */
function hostOf(peer: string): string {
  return peer.replace(/:\d+$/, '');
}
