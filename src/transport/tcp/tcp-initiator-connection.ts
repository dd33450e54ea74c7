import type { Socket } from 'node:net';
import { COMPLETION_SIZE } from '../../protocol/constants.js';
import type { InitiatorConnection, InitiatorConnectionHandler } from '../transport.js';
import { ByteQueue } from './byte-queue.js';
import { PayloadScatter } from './payload-scatter.js';
import { TickBatch } from './tick-batch.js';

/**
 * Initiator end of one TCP connection: request PDUs out, response PDUs in. A completion is
 * followed by data only when it answers a VQ command; the queue client, which owns the
 * commands in flight, says how many bytes follow each completion before any is read, and
 * where they go: they are copied from each received chunk straight into the command's
 * device-writable buffers.
 */
export class TcpInitiatorConnection implements InitiatorConnection {
  readonly kind = 'stream' as const;
  readonly peer: string;
  maxKeyedDescriptors = 0;
  private readonly queue = new ByteQueue();
  /** A VQ completion whose payload is still arriving, and where that payload goes. */
  private pendingCompletion: Buffer | null = null;
  private pendingPayload: PayloadScatter | null = null;
  private handler: InitiatorConnectionHandler | null = null;
  private closed = false;
  private failure: Error | undefined;
  private readonly closedPromise: Promise<void>;
  /** Commands issued in one event-loop turn leave in one write. */
  private readonly batch: TickBatch;

  constructor(
    private readonly socket: Socket,
    private readonly maxVqPayload: number,
    scheme: 'tcp' | 'tls' = 'tcp',
  ) {
    this.peer = `${scheme}://${socket.remoteAddress}:${socket.remotePort}`;
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
    this.socket.on('data', (chunk: Buffer) => this.onData(chunk));
    this.socket.on('end', () => this.socket.end());
    this.socket.on('close', () => this.finish());
    this.socket.resume();
  }

  private onData(chunk: Buffer): void {
    this.queue.push(chunk);
    for (;;) {
      if (this.closed) return;
      if (this.pendingCompletion === null) {
        if (this.queue.length < COMPLETION_SIZE) return;
        const completion = Buffer.from(this.queue.take(COMPLETION_SIZE));
        const length = this.handler?.expectedPayload(completion) ?? 0;
        if (typeof length === 'string') {
          this.fail(new Error(`${this.peer}: ${length}`));
          return;
        }
        if (length === 0) {
          this.handler?.onCompletion(completion);
          continue;
        }
        if (length > this.maxVqPayload) {
          this.fail(new Error(`target announced a ${length}-byte VQ completion payload, limit ${this.maxVqPayload}`));
          return;
        }
        const into = this.handler?.payloadBuffers(completion) ?? [];
        let room = 0;
        for (const b of into) room += b.length;
        if (room < length) {
          this.fail(new Error(`target announced a ${length}-byte VQ completion payload for ${room} device-writable bytes`));
          return;
        }
        this.pendingCompletion = completion;
        this.pendingPayload = new PayloadScatter(into, length);
      }
      if (!this.pendingPayload!.fill(this.queue)) return;
      const completion = this.pendingCompletion;
      this.pendingCompletion = null;
      this.pendingPayload = null;
      this.handler?.onCompletion(completion);
    }
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
    this.socket.write(command);
    for (const b of out) if (b.length > 0) this.socket.write(b);
  }

  private fail(err: Error): void {
    this.failure ??= err;
    this.socket.destroy();
  }

  close(): Promise<void> {
    if (!this.closed) {
      // Nothing more is delivered, and no caller's buffer is written: the commands in flight
      // have been (or are being) failed, and their buffers may already be in other hands.
      this.closed = true;
      this.socket.end();
      setTimeout(() => this.socket.destroy(), 2000).unref();
    }
    return this.closedPromise;
  }

  private finish(): void {
    this.closed = true;
    const h = this.handler;
    this.handler = null;
    h?.onClose(this.failure);
  }
}
