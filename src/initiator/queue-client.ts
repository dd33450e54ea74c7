import { COMMAND_SIZE, Opcode, RESERVED_COMMAND_ID_FIRST } from '../protocol/constants.js';
import { encodeCommand, type Command } from '../protocol/command.js';
import { decodeCompletion, type DecodedCompletion } from '../protocol/completion.js';
import type { InitiatorConnection } from '../transport/transport.js';
import { VofConnectionError } from './vof-error.js';

/** A command as the caller gives it: the queue client picks the command id. */
export type CommandWithoutId = Command extends infer C ? (C extends Command ? Omit<C, 'commandId'> : never) : never;

interface Pending {
  readonly opcode: number;
  readonly inBuffers: readonly Buffer[] | null;
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
      payloadBuffers: (c) => this.pending.get(c.readUInt16LE(2))?.inBuffers ?? [],
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
    return this.submit(cmd.opcode, null, (id, header) => {
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
    return this.submit(Opcode.Vq, inBuffers, (id, header) => {
      encodeCommand({ opcode: Opcode.Vq, commandId: id, outLength, inLength }, header);
      this.connection.sendVq(header, out, inBuffers);
    });
  }

  private submit(
    opcode: number,
    inBuffers: readonly Buffer[] | null,
    send: (id: number, header: Buffer) => void,
  ): Promise<DecodedCompletion> {
    return new Promise((resolve, reject) => {
      const start = () => {
        if (this.closedError) return reject(this.closedError);
        const id = this.allocateId();
        this.pending.set(id, { opcode, inBuffers, resolve, reject });
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
    for (;;) {
      const id = this.nextId;
      this.nextId = (this.nextId + 1) % RESERVED_COMMAND_ID_FIRST;
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
    return p?.inBuffers ? completion.readUInt32LE(4) : 0;
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

