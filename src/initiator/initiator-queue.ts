import { COMMAND_SIZE, Opcode, RESERVED_COMMAND_ID_FIRST } from '../protocol/constants.js';
import { VQ_COMMAND, encodeCommand, type Command } from '../protocol/command.js';
import type { DecodedCompletion } from '../protocol/completion.js';
import type { InitiatorConnection } from '../transport/transport.js';
import { VofConnectionError } from './vof-error.js';
import { REDIRECT_COMPLETION, REDIRECT_RECORD_SIZE, VOF_CONNECT_F_REDIRECT, VOF_STATUS_EREDIRECT, connectFlags } from '../protocol/redirect-record.js';
import { InitiatorRequest } from './initiator-request.js';
import { VQ_COMPLETION } from '../protocol/completion.js';
import { getLE16, getLE32, setLE16, setLE32 } from '../protocol/fields.js';
import { COMPLETION_HEADER } from '../protocol/header.js';
import { WaiterQueue } from '../util/waiter-queue.js';
import { SlotTable } from '../util/slot-table.js';

const NO_BUFFERS: readonly Buffer[] = [];

/** A command as the caller gives it: the initiator queue picks the command id. */
export type CommandWithoutId = Command extends infer C ? (C extends Command ? Omit<C, 'commandId'> : never) : never;

/** An answer deadline for one command (see InitiatorQueue.submit). */
export interface AnswerDeadline {
  readonly answerTimeoutMs: number;
  /** The error the queue fails with when the deadline passes. */
  readonly onTimeout: () => Error;
}

/**
 * Initiator end of one queue. Each command in flight is a InitiatorRequest in an array of
 * queue-size slots, and its slot index is its command id: ids are always below the queue
 * size (never in the reserved 0xff00-0xffff range), free ids are handed out oldest-freed
 * first, and commands beyond the queue size wait for a slot. Completions are matched to
 * their request by that index.
 */
export class InitiatorQueue {
  /**
   * The request in flight under each command id. Ids are the table's (below the queue size), and
   * free ids are handed out oldest-freed first: an id just freed is the last to be used again,
   * so a late or duplicated completion for it more likely finds it free (and fails the queue)
   * than passes for a new command's.
   */
  private readonly slots = new SlotTable<InitiatorRequest>(0, 'oldest-freed');
  /**
   * Each command id's encoded command header, made with its slot and rewritten by each command
   * that takes the id: the transport may hold it until the command is sent, which is before
   * its completion can free the id.
   */
  private headers: Buffer[] = [];
  /**
   * Requests for a free command id, in submission order. Bounded by whoever submits (a device's
   * requests, the control and admin calls in flight), not here: a submit never fails for room.
   */
  private readonly waiting = new WaiterQueue<InitiatorRequest>(Number.POSITIVE_INFINITY);
  private closedError: Error | null = null;
  /** Target-initiated completions (command ids 0xff00-0xffff). */
  onEvent: (completion: Buffer) => void = () => {};
  /** Any completion arrived (for keepalive liveness). */
  onActivity: () => void = () => {};
  onClosed: (err: Error) => void = () => {};

  private size = 0;

  constructor(
    readonly connection: InitiatorConnection,
    queueSize: number,
  ) {
    this.queueSize = queueSize;
    connection.start({
      onCompletion: (c) => this.onCompletion(c),
      expectedPayload: (c) => this.expectedPayload(c),
      payloadBuffers: (c) => this.payloadBuffers(c),
      onClose: (reason) => this.onClose(reason),
    });
  }

  get queueSize(): number {
    return this.size;
  }

  /**
   * The negotiated queue size: command ids are 0..n-1. Command ids 0xff00-0xffff are reserved,
   * so at most 0xff00 commands are ever in flight. A command in flight under an id beyond a
   * smaller new size keeps it until it completes.
   */
  set queueSize(n: number) {
    this.size = Math.max(1, Math.min(n, RESERVED_COMMAND_ID_FIRST));
    if (this.headers.length < this.size) {
      // One allocation for the new slots' headers, cut once into per-id views.
      const first = this.headers.length;
      const slab = Buffer.alloc((this.size - first) * COMMAND_SIZE);
      for (let id = first; id < this.size; id++) {
        this.headers.push(slab.subarray((id - first) * COMMAND_SIZE, (id - first + 1) * COMMAND_SIZE));
      }
    }
    // The free ids again lowest first; one in flight beyond a smaller size is retired when it completes.
    this.slots.resize(this.size);
    this.startWaiting();
  }

  get inFlight(): number {
    return this.slots.inUse;
  }

  get closed(): boolean {
    return this.closedError !== null;
  }

  /** Send a non-VQ command (body only for Connect) and resolve with its decoded completion. */
  call(cmd: CommandWithoutId, body?: Buffer, options?: AnswerDeadline): Promise<DecodedCompletion> {
    return this.callWithPayload(cmd, body, options).then((r) => r.completion);
  }

  /** As call(); also gives the redirect record that followed an EREDIRECT Connect completion. */
  async callWithPayload(cmd: CommandWithoutId, body?: Buffer, options?: AnswerDeadline): Promise<{ completion: DecodedCompletion; payload: Buffer | null }> {
    const redirectable = cmd.opcode === Opcode.Connect && body !== undefined && (connectFlags(body) & VOF_CONNECT_F_REDIRECT) !== 0;
    const req = new InitiatorRequest(cmd.opcode, cmd, body, [], null, redirectable);
    const completion = await this.submit(req, options);
    return { completion, payload: req.payload };
  }

  /** Send a VQ command; resolves with its completion (status and bytes written). */
  vq(out: readonly Buffer[], inBuffers: readonly Buffer[]): Promise<DecodedCompletion> {
    return this.submit(new InitiatorRequest(Opcode.Vq, null, undefined, out, inBuffers));
  }

  /**
   * Send `req` as soon as a slot is free (at once when one is); resolves with its completion.
   * With `answerTimeoutMs`, a command still unanswered by then fails the whole queue: its id
   * cannot be given to another command while an answer may still come.
   */
  submit(req: InitiatorRequest, options?: AnswerDeadline): Promise<DecodedCompletion> {
    if (this.closedError) return Promise.reject(this.closedError);
    const done = req.begin();
    this.enqueue(req, options);
    return done;
  }

  /**
   * As submit(), for a request armed by its owner that takes its own completion or failure
   * (an IoSlot): nothing is allocated. On a closed queue it fails on the next tick, never
   * inside this call, so that an owner resubmitting from its failure cannot recurse.
   */
  enqueue(req: InitiatorRequest, options?: AnswerDeadline): void {
    if (this.closedError) {
      const err = this.closedError;
      req.state = 'waiting';
      process.nextTick(() => req.fail(err));
      return;
    }
    if (req.state !== 'waiting') req.arm();
    if (options) {
      req.timer = setTimeout(() => {
        req.timer = null;
        this.failAll(options.onTimeout());
      }, options.answerTimeoutMs);
    }
    if (this.slots.free > 0 && this.waiting.length === 0) this.transmit(req);
    else this.waiting.push(req);
  }

  /** Put `req` in the oldest free slot and send it under that id, with the id's header. */
  private transmit(req: InitiatorRequest): void {
    const id = this.slots.take(req);
    req.commandId = id;
    req.state = 'in-flight';
    const header = this.headers[id]!;
    try {
      if (req.command) {
        encodeCommand({ ...req.command, commandId: id } as Command, header);
        this.connection.sendCommand(header, req.body);
      } else {
        // The VQ command's header written in place (encodeCommand's layout, with no object).
        header.fill(0);
        setLE16(header, VQ_COMMAND.opcode, Opcode.Vq);
        setLE16(header, VQ_COMMAND.commandId, id);
        setLE32(header, VQ_COMMAND.outLength, req.outLength);
        setLE32(header, VQ_COMMAND.inLength, req.inLength);
        this.connection.sendVq(header, req.out, req.inBuffers ?? NO_BUFFERS);
      }
    } catch (err) {
      this.slots.release(id);
      // Failed on the next tick, as on a closed queue: never inside the submitter's call.
      process.nextTick(() => req.fail(err as Error));
      this.startWaiting();
    }
  }

  private startWaiting(): void {
    while (this.waiting.length > 0 && this.slots.free > 0 && !this.closedError) this.transmit(this.waiting.shift()!);
  }

  /** The request in flight under `id`, or null when its slot is free (or no such slot exists). */
  private inSlot(id: number): InitiatorRequest | null {
    return this.slots.get(id);
  }

  /**
   * Why a completion cannot be taken (null when it can): an id no command in flight has, or a
   * VQ completion claiming more bytes than its command's in_length (DECISIONS.md item 3).
   */
  private completionProblem(completion: Buffer): string | null {
    const id = getLE16(completion, COMPLETION_HEADER.commandId);
    if (id >= RESERVED_COMMAND_ID_FIRST) return null;
    const p = this.inSlot(id);
    if (!p) return `completion for command id ${id}, which is not in flight`;
    if (p.redirectable && getLE16(completion, COMPLETION_HEADER.status) === VOF_STATUS_EREDIRECT && getLE16(completion, REDIRECT_COMPLETION.recordLength) !== REDIRECT_RECORD_SIZE) {
      return `EREDIRECT completion announces a ${getLE16(completion, REDIRECT_COMPLETION.recordLength)}-byte redirect record (expected ${REDIRECT_RECORD_SIZE})`;
    }
    if (p.inBuffers) {
      const length = getLE32(completion, VQ_COMPLETION.length);
      if (length > p.inLength) return `VQ completion claims ${length} bytes written into ${p.inLength} device-writable bytes`;
    }
    return null;
  }

  private expectedPayload(completion: Buffer): number | string {
    const problem = this.completionProblem(completion);
    if (problem) return problem;
    const p = this.inSlot(getLE16(completion, COMPLETION_HEADER.commandId));
    if (p?.redirectable && getLE16(completion, COMPLETION_HEADER.status) === VOF_STATUS_EREDIRECT) return REDIRECT_RECORD_SIZE;
    return p?.inBuffers ? getLE32(completion, VQ_COMPLETION.length) : 0;
  }

  /**
   * Where the bytes after a completion go: a VQ command's device-writable buffers, or (vof
   * redirect) a buffer of its own for the redirect record after an EREDIRECT Connect completion.
   */
  private payloadBuffers(completion: Buffer): readonly Buffer[] {
    const p = this.inSlot(getLE16(completion, COMPLETION_HEADER.commandId));
    if (!p) return [];
    if (p.redirectable && getLE16(completion, COMPLETION_HEADER.status) === VOF_STATUS_EREDIRECT) {
      p.payload = Buffer.alloc(REDIRECT_RECORD_SIZE);
      return [p.payload];
    }
    return p.inBuffers ?? [];
  }

  private onCompletion(completion: Buffer): void {
    this.onActivity();
    const id = getLE16(completion, COMPLETION_HEADER.commandId);
    if (id >= RESERVED_COMMAND_ID_FIRST) {
      this.onEvent(completion);
      return;
    }
    const problem = this.completionProblem(completion);
    if (problem) {
      // A target that answers what was not asked, or overflows a buffer, cannot be trusted
      // with the rest of this queue: close it cleanly rather than guess.
      this.failAll(new VofConnectionError(`${this.connection.peer}: ${problem}`));
      void this.connection.close();
      return;
    }
    const p = this.slots.release(id)!;
    p.complete(completion);
    this.startWaiting();
  }

  private onClose(reason?: Error): void {
    const err = new VofConnectionError(
      `connection to ${this.connection.peer} closed${reason ? `: ${reason.message}` : ''}`,
    );
    this.failAll(err);
    this.onClosed(err);
  }

  /** Reject everything in flight or waiting; later calls fail at once. */
  failAll(err: Error): void {
    this.closedError ??= err;
    const failed = this.slots.releaseAll();
    for (const p of this.waiting.drain()) failed.push(p);
    for (const p of failed) p.fail(err);
  }

  close(): Promise<void> {
    this.closedError ??= new VofConnectionError(`connection to ${this.connection.peer} closed`);
    return this.connection.close();
  }
}

