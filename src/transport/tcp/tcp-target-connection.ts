import type { Socket } from 'node:net';
import { COMMAND_SIZE, CONNECT_BODY_SIZE, Opcode } from '../../protocol/constants.js';
import type { Logger } from '../../util/log.js';
import {
  VqTransferError,
  type TargetConnection,
  type TargetConnectionHandler,
  type VqRequestData,
} from '../transport.js';
import { ByteQueue } from './byte-queue.js';

const EMPTY = Buffer.alloc(0);

class StreamVqRequest implements VqRequestData {
  constructor(
    readonly outLength: number,
    readonly inLength: number,
    private readonly payload: Buffer | VqTransferError,
  ) {}
  readOut(): Promise<Buffer> {
    return this.payload instanceof Buffer ? Promise.resolve(this.payload) : Promise.reject(this.payload);
  }
}

type ReadState =
  | { kind: 'header' }
  | { kind: 'payload'; header: Buffer; length: number }
  | { kind: 'discard'; header: Buffer; left: number; announced: number };

/**
 * Target end of one TCP connection: request PDUs in (DECISIONS.md item 3), completions out.
 * Reading pauses while the socket cannot take more completions, so a peer that does not read
 * its completions stops being read from instead of growing our buffers.
 */
export class TcpTargetConnection implements TargetConnection {
  readonly kind = 'stream' as const;
  readonly maxKeyedDescriptors = 0;
  readonly peer: string;
  readonly identity: string | undefined;
  private readonly queue = new ByteQueue();
  private state: ReadState = { kind: 'header' };
  private handler: TargetConnectionHandler | null = null;
  private closed = false;

  constructor(
    private readonly socket: Socket,
    private readonly maxVqPayload: number,
    private readonly log: Logger,
    /** tls:// connections: the scheme for log lines and the identity the handshake proved. */
    origin: { scheme: 'tcp' | 'tls'; identity?: string | undefined } = { scheme: 'tcp' },
  ) {
    this.peer = `${origin.scheme}://${socket.remoteAddress}:${socket.remotePort}`;
    this.identity = origin.identity;
    socket.setNoDelay(true);
    socket.pause();
    socket.on('error', (err) => this.log.debug(`${this.peer}: socket error: ${err.message}`));
  }

  start(handler: TargetConnectionHandler): void {
    this.handler = handler;
    this.socket.on('data', (chunk: Buffer) => this.onData(chunk));
    this.socket.on('drain', () => {
      if (!this.closed) this.socket.resume();
    });
    this.socket.on('close', () => this.finish());
    this.socket.on('end', () => this.socket.end());
    this.socket.resume();
  }

  private onData(chunk: Buffer): void {
    this.queue.push(chunk);
    try {
      this.parse();
    } catch (err) {
      this.log.warn(`${this.peer}: closing: ${(err as Error).message}`);
      this.close();
    }
  }

  private parse(): void {
    for (;;) {
      if (this.closed) return;
      const st = this.state;
      if (st.kind === 'header') {
        if (this.queue.length < COMMAND_SIZE) return;
        // Copy: the handler may keep the command past this read.
        const header = Buffer.from(this.queue.take(COMMAND_SIZE));
        this.state = this.afterHeader(header);
        if (this.state.kind === 'header') this.deliver(header, EMPTY);
      } else if (st.kind === 'payload') {
        if (this.queue.length < st.length) return;
        // Node hands each read a fresh chunk, so a view of it stays valid: no copy.
        const payload = st.length === 0 ? EMPTY : this.queue.take(st.length);
        this.state = { kind: 'header' };
        this.deliverPayload(st.header, payload);
      } else {
        st.left -= this.queue.skip(st.left);
        if (st.left > 0) return;
        this.state = { kind: 'header' };
        const opcode = st.header.readUInt16LE(0);
        if (opcode === Opcode.Vq) {
          const err = new VqTransferError(
            'out',
            `device-readable payload of ${st.announced} bytes exceeds the ${this.maxVqPayload}-byte limit`,
          );
          this.deliver(st.header, new StreamVqRequest(st.announced, st.header.readUInt32LE(12), err));
        }
      }
    }
  }

  private afterHeader(header: Buffer): ReadState {
    const opcode = header.readUInt16LE(0);
    if (opcode === Opcode.Connect) {
      const length = header.readUInt32LE(8);
      if (length === 0) return { kind: 'header' };
      if (length !== CONNECT_BODY_SIZE) {
        // The framing itself is in doubt: nothing after this can be trusted.
        throw new Error(`Connect announces a ${length}-byte body (only 0 or ${CONNECT_BODY_SIZE} are valid)`);
      }
      return { kind: 'payload', header, length };
    }
    if (opcode === Opcode.Vq) {
      const out = header.readUInt32LE(8);
      if (out > this.maxVqPayload) {
        this.log.warn(`${this.peer}: VQ command announces ${out} device-readable bytes; discarding them`);
        return { kind: 'discard', header, left: out, announced: out };
      }
      return { kind: 'payload', header, length: out };
    }
    return { kind: 'header' };
  }

  private deliverPayload(header: Buffer, payload: Buffer): void {
    if (header.readUInt16LE(0) === Opcode.Vq) {
      this.deliver(header, new StreamVqRequest(payload.length, header.readUInt32LE(12), payload));
    } else {
      this.deliver(header, payload);
    }
  }

  private deliver(header: Buffer, payload: Buffer | VqRequestData): void {
    this.handler?.onCommand(header, payload);
  }

  sendCompletion(completion: Buffer, payload?: Buffer): void {
    if (this.closed) return;
    if (!this.socket.write(payload ? Buffer.concat([completion, payload]) : completion)) this.socket.pause();
  }

  completeVq(_request: VqRequestData, completion: Buffer, written: readonly Buffer[]): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.socket.cork();
    let ok = this.socket.write(completion);
    for (const b of written) if (b.length > 0) ok = this.socket.write(b) && ok;
    this.socket.uncork();
    if (!ok) this.socket.pause();
    return Promise.resolve();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.socket.end();
    // A peer that never reads would keep end() pending forever.
    setTimeout(() => this.socket.destroy(), 2000).unref();
  }

  private finish(): void {
    this.closed = true;
    const h = this.handler;
    this.handler = null;
    h?.onClose();
  }
}
