import type { Socket } from 'node:net';
import { STREAM_INITIATOR_CAPABILITIES, type InitiatorConnection, type InitiatorConnectionHandler } from '../transport.js';
import { CompletionReader } from './completion-reader.js';
import { TickBatch } from './tick-batch.js';
import { COMMAND_SIZE } from '../../protocol/constants.js';
import { getLE16 } from '../../protocol/fields.js';
import { COMMAND_HEADER } from '../../protocol/header.js';

/** A VQ command with at most this many bytes, readable ones included, leaves in one write. */
const GATHER_SIZE = 64;

/**
 * Initiator end of one TCP connection: request PDUs out, response PDUs in. A completion is
 * followed by data only when it answers a VQ command; the initiator queue, which owns the
 * commands in flight, says how many bytes follow each completion before any is read, and
 * where they go. Plain TCP sockets are opened with `onread` (tcpReadOptions) so the payload is
 * read by the kernel straight into the command's device-writable buffers; TLS sockets copy each
 * decrypted chunk there.
 */
export class TcpInitiatorConnection implements InitiatorConnection {
  readonly capabilities = STREAM_INITIATOR_CAPABILITIES;
  readonly peer: string;
  maxKeyedDescriptors = 0;
  private handler: InitiatorConnectionHandler | null = null;
  private closed = false;
  private failure: Error | undefined;
  private readonly closedPromise: Promise<void>;
  /** Commands issued in one event-loop turn leave in one write. */
  private readonly batch: TickBatch;
  /** Responses are read through this; fed by net's onread when the socket was opened with it. */
  private readonly reader: CompletionReader;
  /** Whether the reader is fed by onread (plain TCP, tcpReadOptions) or by 'data' events (TLS). */
  private readonly fedByOnread: boolean;
  /** Per command id: where a small VQ command is gathered for one write (see gathered()). */
  private readonly gather: Array<{ memory: Buffer; view: Buffer } | undefined> = [];

  /** `onreadReader`: the reader the socket was opened with through tcpReadOptions, if any. */
  constructor(
    private readonly socket: Socket,
    private readonly maxVqPayload: number,
    scheme: 'tcp' | 'tls' = 'tcp',
    onreadReader?: CompletionReader,
  ) {
    this.peer = `${scheme}://${socket.remoteAddress}:${socket.remotePort}`;
    this.reader = onreadReader ?? new CompletionReader();
    this.fedByOnread = onreadReader !== undefined;
    this.batch = new TickBatch(socket);
    socket.setNoDelay(true);
    socket.pause();
    socket.on('error', (err) => {
      this.failure ??= err;
    });
    this.closedPromise = new Promise((resolve) => socket.once('close', () => resolve()));
  }

  start(handler: InitiatorConnectionHandler): void {
    this.handler = handler;
    this.reader.attach({
      expectedPayload: (completion) => {
        const length = this.handler ? this.handler.expectedPayload(completion) : 0;
        if (typeof length === 'number' && length > this.maxVqPayload) return `target announced a ${length}-byte VQ completion payload, limit ${this.maxVqPayload}`;
        return length;
      },
      payloadBuffers: (completion, length) => {
        const into = this.handler?.payloadBuffers(completion) ?? [];
        let room = 0;
        for (const b of into) room += b.length;
        return room < length ? `target announced a ${length}-byte VQ completion payload for ${room} device-writable bytes` : into;
      },
      completion: (completion) => this.handler?.onCompletion(completion),
      fail: (why) => this.fail(new Error(`${this.peer}: ${why}`)),
    });
    if (!this.fedByOnread) this.socket.on('data', (chunk: Buffer) => this.reader.feed(chunk));
    this.socket.on('end', () => this.socket.end());
    this.socket.on('close', () => this.finish());
    this.socket.resume();
  }

  sendCommand(command: Buffer, body?: Buffer): void {
    if (this.closed) throw new Error(`connection to ${this.peer} is closed`);
    this.batch.hold();
    this.socket.write(command);
    if (body && body.length > 0) this.socket.write(body);
  }

  sendVq(command: Buffer, out: readonly Buffer[], _inBuffers: readonly Buffer[]): void {
    if (this.closed) throw new Error(`connection to ${this.peer} is closed`);
    this.batch.hold();
    let small = COMMAND_SIZE;
    for (let k = 0; k < out.length && small <= GATHER_SIZE; k++) small += out[k]!.length;
    if (small <= GATHER_SIZE) {
      // A command and its few readable bytes (a block request header) in one write.
      this.socket.write(this.gathered(command, out, small));
      return;
    }
    this.socket.write(command);
    for (const b of out) if (b.length > 0) this.socket.write(b);
  }

  /**
   * `command` and `out` copied into its command id's gather buffer. The buffer is the id's
   * until the command completes, which is after the write has left: reused by the id's next
   * command, as is the view of the last length written.
   */
  private gathered(command: Buffer, out: readonly Buffer[], length: number): Buffer {
    const id = getLE16(command, COMMAND_HEADER.commandId);
    let g = this.gather[id];
    if (g === undefined) {
      const memory = Buffer.alloc(GATHER_SIZE);
      g = { memory, view: memory.subarray(0, 0) };
      this.gather[id] = g;
    }
    command.copy(g.memory, 0, 0, COMMAND_SIZE);
    let at = COMMAND_SIZE;
    for (let k = 0; k < out.length; k++) at += out[k]!.copy(g.memory, at);
    if (g.view.length !== length) g.view = g.memory.subarray(0, length);
    return g.view;
  }

  /** A plain Buffer: a stream copies every payload through the socket anyway (no registered memory). */
  allocateBuffer(size: number): Buffer {
    return Buffer.alloc(size);
  }

  /** Nothing to give back: allocateBuffer's Buffers are left to the garbage collector. */
  freeBuffer(): void {}

  private fail(err: Error): void {
    this.failure ??= err;
    this.reader.discard();
    this.socket.destroy();
  }

  close(): Promise<void> {
    if (!this.closed) {
      // Nothing more is delivered, and no caller's buffer is written: the commands in flight
      // have been (or are being) failed, and their buffers may already be in other hands.
      this.closed = true;
      this.reader.discard();
      this.socket.end();
      setTimeout(() => this.socket.destroy(), 2000).unref();
    }
    return this.closedPromise;
  }

  private finish(): void {
    this.closed = true;
    this.reader.discard();
    const h = this.handler;
    this.handler = null;
    h?.onClose(this.failure);
  }
}

/**
 * net.connect options that make a plain TCP socket read through `reader` (net's onread: libuv
 * reads into the buffer the reader picks, no per-read allocation).
 */
export function tcpReadOptions(reader: CompletionReader): { onread: { buffer: () => Buffer; callback: (n: number) => boolean } } {
  return { onread: { buffer: () => reader.nextBuffer(), callback: (n) => reader.received(n) } };
}
