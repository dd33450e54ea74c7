import { COMMAND_SIZE, Opcode, RESERVED_COMMAND_ID_FIRST } from '../protocol/constants.js';
import { encodeCommand, type Command } from '../protocol/command.js';
import { decodeCompletion, type DecodedCompletion } from '../protocol/completion.js';
import type { InitiatorConnection } from '../transport/transport.js';
import { VofConnectionError } from './vof-error.js';
import { REDIRECT_RECORD_SIZE, VOF_CONNECT_F_REDIRECT, VOF_STATUS_EREDIRECT, connectFlags } from '../protocol/redirect-record.js';

/** A command as the caller gives it: the queue client picks the command id. */
export type CommandWithoutId = Command extends infer C ? (C extends Command ? Omit<C, 'commandId'> : never) : never;

interface Pending {
  readonly opcode: number;
  readonly inBuffers: readonly Buffer[] | null;
  /** A Connect whose body announced VOF_CONNECT_F_REDIRECT: EREDIRECT brings a record. */
  readonly redirectable: boolean;
  /** The redirect record that followed an EREDIRECT completion. */
  payload?: Buffer;
  readonly resolve: (c: DecodedCompletion) => void;
  readonly reject: (e: Error) => void;
}

interface Waiting {
  readonly start: () => void;
  readonly reject: (e: Error) => void;
}

/**
 * Initiator end of one queue: allocates command ids (unique among in-flight commands, never in
 * the reserved 0xff00-0xffff range), keeps at most `queueSize` commands in flight and queues
 * the rest, and matches completions to their commands.
 */
export class QueueClient {
  private readonly pending = new Map<number, Pending>();
  private readonly waiting: Waiting[] = [];
  private nextId = 0;
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

  /** Command ids 0xff00-0xffff are reserved: more in flight than 0xff00 could never get an id. */
  set queueSize(n: number) {
    this.size = Math.min(n, RESERVED_COMMAND_ID_FIRST);
  }

  get inFlight(): number {
    return this.pending.size;
  }

  get closed(): boolean {
    return this.closedError !== null;
  }

  /** Send a non-VQ command (body only for Connect) and resolve with its decoded completion. */
  call(cmd: CommandWithoutId, body?: Buffer): Promise<DecodedCompletion> {
    return this.callWithPayload(cmd, body).then((r) => r.completion);
  }

  /** As call(); also gives the redirect record that followed an EREDIRECT Connect completion. */
  callWithPayload(cmd: CommandWithoutId, body?: Buffer): Promise<{ completion: DecodedCompletion; payload: Buffer | null }> {
    const redirectable = cmd.opcode === Opcode.Connect && body !== undefined && (connectFlags(body) & VOF_CONNECT_F_REDIRECT) !== 0;
    return this.submit(cmd.opcode, null, redirectable, (id, header) => {
      encodeCommand({ ...cmd, commandId: id } as Command, header);
      this.connection.sendCommand(header, body);
    });
  }

  /** Send a VQ command; resolves with its completion (status and bytes written). */
  vq(out: readonly Buffer[], inBuffers: readonly Buffer[]): Promise<DecodedCompletion> {
    let outLength = 0;
    for (const b of out) outLength += b.length;
    let inLength = 0;
    for (const b of inBuffers) inLength += b.length;
    return this.submit(Opcode.Vq, inBuffers, false, (id, header) => {
      encodeCommand({ opcode: Opcode.Vq, commandId: id, outLength, inLength }, header);
      this.connection.sendVq(header, out, inBuffers);
    }).then((r) => r.completion);
  }

  private submit(
    opcode: number,
    inBuffers: readonly Buffer[] | null,
    redirectable: boolean,
    send: (id: number, header: Buffer) => void,
  ): Promise<{ completion: DecodedCompletion; payload: Buffer | null }> {
    return new Promise((resolve, reject) => {
      const start = () => {
        if (this.closedError) return reject(this.closedError);
        const id = this.allocateId();
        const p: Pending = { opcode, inBuffers, redirectable, resolve: (c) => resolve({ completion: c, payload: p.payload ?? null }), reject };
        this.pending.set(id, p);
        try {
          send(id, Buffer.alloc(COMMAND_SIZE));
        } catch (err) {
          this.pending.delete(id);
          reject(err as Error);
          this.startWaiting();
        }
      };
      if (this.closedError) reject(this.closedError);
      else if (this.pending.size < this.queueSize) start();
      else this.waiting.push({ start, reject });
    });
  }

  private allocateId(): number {
    if (this.nextId >= this.queueSize) this.nextId = 0;
    for (;;) {
      const id = this.nextId;
      // Ids stay below the queue size: keyed transports index per-command state by id.
      this.nextId = (this.nextId + 1) % this.queueSize;
      if (!this.pending.has(id)) return id;
    }
  }

  private startWaiting(): void {
    while (this.waiting.length > 0 && this.pending.size < this.queueSize) this.waiting.shift()!.start();
  }

  /**
   * Why a completion cannot be taken (null when it can): an id no command in flight has, or a
   * VQ completion claiming more bytes than its command's in_length (DECISIONS.md item 3).
   */
  private completionProblem(completion: Buffer): string | null {
    const id = completion.readUInt16LE(2);
    if (id >= RESERVED_COMMAND_ID_FIRST) return null;
    const p = this.pending.get(id);
    if (!p) return `completion for command id ${id}, which is not in flight`;
    if (p.redirectable && completion.readUInt16LE(0) === VOF_STATUS_EREDIRECT && completion.readUInt16LE(6) !== REDIRECT_RECORD_SIZE) {
      return `EREDIRECT completion announces a ${completion.readUInt16LE(6)}-byte redirect record (expected ${REDIRECT_RECORD_SIZE})`;
    }
    if (p.inBuffers) {
      let inLength = 0;
      for (const b of p.inBuffers) inLength += b.length;
      const length = completion.readUInt32LE(4);
      if (length > inLength) return `VQ completion claims ${length} bytes written into ${inLength} device-writable bytes`;
    }
    return null;
  }

  private expectedPayload(completion: Buffer): number | string {
    const problem = this.completionProblem(completion);
    if (problem) return problem;
    const p = this.pending.get(completion.readUInt16LE(2));
    if (p?.redirectable && completion.readUInt16LE(0) === VOF_STATUS_EREDIRECT) return REDIRECT_RECORD_SIZE;
    return p?.inBuffers ? completion.readUInt32LE(4) : 0;
  }

  /**
   * Where the bytes after a completion go: a VQ command's device-writable buffers, or (vof
   * redirect) a buffer of its own for the redirect record after an EREDIRECT Connect completion.
   */
  private payloadBuffers(completion: Buffer): readonly Buffer[] {
    const p = this.pending.get(completion.readUInt16LE(2));
    if (!p) return [];
    if (p.redirectable && completion.readUInt16LE(0) === VOF_STATUS_EREDIRECT) {
      p.payload = Buffer.alloc(REDIRECT_RECORD_SIZE);
      return [p.payload];
    }
    return p.inBuffers ?? [];
  }

  private onCompletion(completion: Buffer): void {
    this.onActivity();
    const id = completion.readUInt16LE(2);
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
    const p = this.pending.get(id)!;
    this.pending.delete(id);
    p.resolve(decodeCompletion(completion, p.opcode));
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
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) p.reject(err);
    for (const w of this.waiting.splice(0)) w.reject(err);
  }

  close(): Promise<void> {
    this.closedError ??= new VofConnectionError(`connection to ${this.connection.peer} closed`);
    return this.connection.close();
  }
}

