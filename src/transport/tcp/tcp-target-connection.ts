import type { Socket } from 'node:net';
import { COMMAND_SIZE, COMPLETION_SIZE, CONNECT_BODY_SIZE, Opcode } from '../../protocol/constants.js';
import type { Logger } from '../../util/log.js';
import {
  VqTransferError,
  type TargetConnection,
  type TargetConnectionHandler,
  type VqRequestData,
} from '../transport.js';
import { ByteQueue } from './byte-queue.js';
import { FramePool, FrameRetention } from './frame-pool.js';
import { TickBatch } from './tick-batch.js';

const EMPTY = Buffer.alloc(0);
/** Completion frames one connection keeps for reuse (see FramePool)... */
const FRAME_POOL_KEPT_BYTES = 4 * 1024 * 1024;
/** ...and all stream connections of this process together. */
const framesKept = new FrameRetention(32 * 1024 * 1024);

/**
 * One VQ command's buffers on a stream connection: the payload received with it, and a frame
 * from the connection's pool whose bytes after the completion header are the device-writable
 * buffer, so the completion goes out as one piece of that frame.
 */
class StreamVqRequest implements VqRequestData {
  /** Completion header + device-writable bytes, taken on the first writable(). */
  frame: Buffer | null = null;
  private view: Buffer | null = null;
  private released = false;

  constructor(
    readonly outLength: number,
    readonly inLength: number,
    private readonly payload: Buffer | VqTransferError,
    readonly owner: TcpTargetConnection,
    private readonly pool: FramePool,
    /** The pooled frame `payload` was gathered into (it spanned reads), given back on release. */
    private readonly payloadFrame: Buffer | null = null,
  ) {}

  readOut(): Promise<Buffer> {
    return this.payload instanceof Buffer ? Promise.resolve(this.payload) : Promise.reject(this.payload);
  }

  readOutNow(): Buffer | undefined {
    return this.payload instanceof Buffer ? this.payload : undefined;
  }

  writable(): Promise<Buffer> {
    return Promise.resolve(this.writableNow());
  }

  /** A frame from the connection's pool is always at hand: never undefined here. */
  writableNow(): Buffer {
    if (this.view === null) {
      this.frame = this.pool.take(COMPLETION_SIZE + this.inLength);
      this.view = this.frame.subarray(COMPLETION_SIZE, COMPLETION_SIZE + this.inLength);
    }
    return this.view;
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    if (this.frame) this.pool.give(this.frame);
    if (this.payloadFrame) this.pool.give(this.payloadFrame);
    this.frame = null;
    this.view = null;
  }
}

type ReadState =
  | { kind: 'header' }
  /** A VQ header waiting for the session's leave to buffer its payload. */
  | { kind: 'admit'; header: Buffer; waiting: boolean }
  | { kind: 'payload'; header: Buffer; length: number }
  | { kind: 'discard'; header: Buffer; left: number; announced: number; why: string };

/**
 * Target end of one TCP connection: request PDUs in (DECISIONS.md item 3), completions out.
 *
 * Memory a peer can make this end hold is bounded:
 * - a VQ command's payload is buffered only after the session admits it (handler.admitVq),
 *   which it does only on a bound virtqueue, within the queue's limits and the target's send
 *   budget; anything else is skipped as it arrives, never kept;
 * - before Connect no payload is read at all (admitVq answers 'close'): skipped bytes are
 *   still read, one garbage buffer per read until the next GC, so a peer that has proved
 *   nothing could otherwise make the process read megabytes and grow its heap and malloc arenas;
 * - reading pauses while the socket has more than its high-water mark queued for sending, or
 *   while the session defers admission, so the unparsed input is at most one read;
 * - a peer that stops reading its completions altogether is closed after sendStallTimeoutMs
 *   without progress, which releases what its queued completions hold.
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
  /** The socket has more queued than its high-water mark: wait for 'drain'. */
  private sendBackpressure = false;
  /** The peer ended its sending side. */
  private peerEnded = false;
  private endReported = false;
  private stallTimer: NodeJS.Timeout | null = null;
  /** Destroys the socket if the peer does not take the end of the stream (close()). */
  private endTimer: NodeJS.Timeout | null = null;
  /** Completions produced in one event-loop turn leave in one write. */
  private readonly batch: TickBatch;
  private readonly frames = new FramePool(FRAME_POOL_KEPT_BYTES, framesKept);

  constructor(
    private readonly socket: Socket,
    private readonly maxVqPayload: number,
    private readonly log: Logger,
    /** tls:// connections: the scheme for log lines and the identity the handshake proved. */
    origin: { scheme: 'tcp' | 'tls'; identity?: string | undefined } = { scheme: 'tcp' },
    private readonly sendStallTimeoutMs = 0,
  ) {
    this.peer = `${origin.scheme}://${socket.remoteAddress}:${socket.remotePort}`;
    this.identity = origin.identity;
    this.batch = new TickBatch(socket);
    socket.setNoDelay(true);
    socket.pause();
    socket.on('error', (err) => this.log.debug(`${this.peer}: socket error: ${err.message}`));
  }

  start(handler: TargetConnectionHandler): void {
    this.handler = handler;
    this.socket.on('data', (chunk: Buffer) => this.onData(chunk));
    this.socket.on('drain', () => {
      this.sendBackpressure = false;
      this.updateReading();
    });
    this.socket.on('close', () => this.finish());
    // Half-close: the peer sends nothing more, but still reads what is in flight for it.
    this.socket.on('end', () => {
      this.peerEnded = true;
      this.runParser();
    });
    this.socket.resume();
  }

  /** Read while nothing holds reading back. */
  private updateReading(): void {
    const hold = this.closed || this.peerEnded || this.sendBackpressure || this.state.kind === 'admit';
    if (hold) this.socket.pause();
    else this.socket.resume();
  }

  private onData(chunk: Buffer): void {
    this.queue.push(chunk);
    this.runParser();
  }

  private runParser(): void {
    try {
      this.parse();
    } catch (err) {
      this.log.warn(`${this.peer}: closing: ${(err as Error).message}`);
      this.close();
      return;
    }
    this.updateReading();
    if (this.peerEnded && !this.endReported && !this.closed && this.state.kind !== 'admit') {
      this.endReported = true;
      if (this.queue.length > 0 || this.state.kind !== 'header') {
        this.log.info(`${this.peer}: peer ended its side in the middle of a PDU; ignoring the partial PDU`);
      }
      this.handler?.onEnd();
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
      } else if (st.kind === 'admit') {
        if (st.waiting) return;
        const answer = this.handler ? this.handler.admitVq(st.header) : 'discard';
        const out = st.header.readUInt32LE(8);
        if (answer === 'close' && out > 0) {
          this.refusePayload(st.header);
          return;
        }
        if (out > this.maxVqPayload) {
          // Skipped whatever else the answer: a reservation the session made for it ('accept')
          // travels with the command and comes back when the command ends.
          this.log.warn(`${this.peer}: VQ command announces ${out} device-readable bytes; discarding them`);
          this.state = { kind: 'discard', header: st.header, left: out, announced: out, why: `exceeds the ${this.maxVqPayload}-byte limit` };
        } else if (answer === 'accept') {
          this.state = { kind: 'payload', header: st.header, length: out };
        } else if (answer === 'discard' || answer === 'close') {
          // ('close' with no payload: nothing to refuse, the framing holds.)
          this.state = { kind: 'discard', header: st.header, left: out, announced: out, why: 'not admitted by the queue' };
        } else {
          st.waiting = true;
          const retry = () => {
            st.waiting = false;
            if (!this.closed) this.runParser();
          };
          answer.then(retry, retry);
          return;
        }
      } else if (st.kind === 'payload') {
        if (this.queue.length < st.length) return;
        this.state = { kind: 'header' };
        if (st.length > 0 && st.header.readUInt16LE(0) === Opcode.Vq && !this.queue.contiguous(st.length)) {
          // A payload that spans reads (any over 64 KiB) is gathered into a pooled frame, reused
          // once its command ends: no buffer allocated per command, no large short-lived
          // allocations (each a mmap, page faults and a munmap) for the GC.
          const frame = this.frames.take(st.length);
          this.queue.takeInto(st.length, frame, 0);
          this.deliverPayload(st.header, frame.subarray(0, st.length), frame);
          continue;
        }
        // Node hands each read a fresh chunk, so a view of it stays valid: no copy.
        const payload = st.length === 0 ? EMPTY : this.queue.take(st.length);
        this.deliverPayload(st.header, payload);
      } else {
        st.left -= this.queue.skip(st.left);
        if (st.left > 0) return;
        this.state = { kind: 'header' };
        const err = new VqTransferError('out', `device-readable payload of ${st.announced} bytes ${st.why}`);
        this.deliver(st.header, new StreamVqRequest(st.announced, st.header.readUInt32LE(12), err, this, this.frames));
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
    // Every VQ command asks the session first, oversized ones too: before Connect even an
    // oversized payload is not skipped but refused (admit state).
    if (opcode === Opcode.Vq) return { kind: 'admit', header, waiting: false };
    return { kind: 'header' };
  }

  /**
   * The session takes no payload on this connection (admitVq said 'close'): the command is
   * answered without a byte of its payload read, then the connection closes, since what
   * follows the header cannot be framed without reading the payload.
   */
  private refusePayload(header: Buffer): void {
    const out = header.readUInt32LE(8);
    this.log.info(`${this.peer}: VQ command with ${out} device-readable bytes before Connect; answering without reading them and closing`);
    this.state = { kind: 'header' };
    const err = new VqTransferError('out', `device-readable payload of ${out} bytes not read: no Connect yet`);
    this.deliver(header, new StreamVqRequest(out, header.readUInt32LE(12), err, this, this.frames));
    // Closed at once, not ended: end() would leave the socket reading until the peer takes the
    // FIN, and libuv goes on reading in this same turn (a paused stream still buffers one more
    // read), so every such peer would cost two 64 KiB reads instead of one. end() hands the
    // answer written above to the kernel first; unread input makes the close a reset.
    if (!this.closed) {
      this.closed = true;
      this.socket.end();
    }
    this.socket.destroy();
  }

  /** `frame`: the pooled frame `payload` lies in, given back when the VQ command ends. */
  private deliverPayload(header: Buffer, payload: Buffer, frame: Buffer | null = null): void {
    if (header.readUInt16LE(0) === Opcode.Vq) {
      this.deliver(header, new StreamVqRequest(payload.length, header.readUInt32LE(12), payload, this, this.frames, frame));
    } else {
      this.deliver(header, payload);
    }
  }

  private deliver(header: Buffer, payload: Buffer | VqRequestData): void {
    this.handler?.onCommand(header, payload);
  }

  sendCompletion(completion: Buffer, payload?: Buffer): void {
    if (this.closed) return;
    this.write(payload ? [completion, payload] : [completion]);
  }

  completeVq(request: VqRequestData, completion: Buffer, written: number): Promise<void> {
    if (this.closed) return Promise.resolve();
    if (!(request instanceof StreamVqRequest) || request.owner !== this) {
      return Promise.reject(new TypeError(`${this.peer}: completeVq for a request this connection did not deliver`));
    }
    const frame = request.frame;
    if (written > 0 && (frame === null || written > request.inLength)) {
      return Promise.reject(new RangeError(`${this.peer}: ${written} bytes written into ${frame === null ? 'no' : request.inLength} device-writable bytes`));
    }
    // The header goes in front of the bytes the device wrote: one buffer, one write.
    let out = completion;
    if (frame !== null && written > 0) {
      completion.copy(frame, 0, 0, COMPLETION_SIZE);
      out = frame.subarray(0, COMPLETION_SIZE + written);
    }
    // Settles when it has left Node's buffers (or the socket is gone: the callback then gets
    // an error), so the caller counts the command, and its frame, until then.
    return new Promise((resolve) => this.write([out], () => resolve()));
  }

  private write(parts: readonly Buffer[], done?: () => void): void {
    const s = this.socket;
    this.batch.hold();
    let ok = true;
    parts.forEach((b, i) => {
      ok = s.write(b, i === parts.length - 1 ? (err) => this.onWritten(err, done) : undefined) && ok;
    });
    if (!ok) {
      this.sendBackpressure = true;
      this.updateReading();
    }
    if (this.sendStallTimeoutMs > 0 && s.writableLength > 0 && this.stallTimer === null) {
      this.stallTimer = setTimeout(() => this.onStalled(), this.sendStallTimeoutMs);
      this.stallTimer.unref();
    }
  }

  private onWritten(_err: Error | null | undefined, done?: () => void): void {
    // Progress: the peer is reading. Restart the stall clock, or stop it when all is sent.
    if (this.stallTimer) {
      if (this.socket.writableLength > 0) this.stallTimer.refresh();
      else {
        clearTimeout(this.stallTimer);
        this.stallTimer = null;
      }
    }
    done?.();
  }

  private onStalled(): void {
    this.stallTimer = null;
    if (this.socket.destroyed || this.socket.writableLength === 0) return;
    this.log.warn(
      `${this.peer}: ${this.socket.writableLength} bytes of completions unread for ${this.sendStallTimeoutMs} ms; closing the connection`,
    );
    this.closed = true;
    this.socket.destroy();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.updateReading();
    this.socket.end();
    // A peer that never reads would keep end() pending forever. Cleared at 'close': a pending
    // timer would hold this connection, its socket and its session for 2 s after they are gone,
    // which under connect/disconnect churn is thousands of dead connections at once.
    this.endTimer = setTimeout(() => this.socket.destroy(), 2000);
    this.endTimer.unref();
  }

  private finish(): void {
    this.closed = true;
    this.frames.close();
    if (this.stallTimer) clearTimeout(this.stallTimer);
    this.stallTimer = null;
    if (this.endTimer) clearTimeout(this.endTimer);
    this.endTimer = null;
    const h = this.handler;
    this.handler = null;
    h?.onClose();
  }
}
