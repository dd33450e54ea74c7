import type { Socket } from 'node:net';
import { COMMAND_SIZE, COMPLETION_SIZE, CONNECT_BODY_SIZE, Opcode } from '../../protocol/constants.js';
import type { Logger } from '../../util/log.js';
import {
  STREAM_TARGET_CAPABILITIES,
  VqTransferError,
  type VqBufferSink,
  type TargetConnection,
  type TargetConnectionHandler,
  type VqRequestData,
} from '../transport.js';
import { FramePool, FrameRetention } from './frame-pool.js';
import { TickBatch } from './tick-batch.js';
import { StreamInput } from './stream-input.js';
import { readIntoUserBuffers } from './user-buffer-read.js';
import { CONNECT_COMMAND, VQ_COMMAND } from '../../protocol/command.js';
import { getLE16, getLE32 } from '../../protocol/fields.js';
import { COMMAND_HEADER } from '../../protocol/header.js';

const EMPTY = Buffer.alloc(0);
/** Completion frames one connection keeps for reuse (see FramePool)... */
const FRAME_POOL_KEPT_BYTES = 4 * 1024 * 1024;
/** ...and all stream connections of this process together. */
const framesKept = new FrameRetention(32 * 1024 * 1024);

/** Payloads up to this size are copied into the request's own buffer, larger ones into a pooled frame. */
const SMALL_PAYLOAD = 64;
/**
 * A frame up to this size stays with its request when the request is released (see
 * StreamVqRequest); a larger one goes back to the connection's pool.
 */
const KEPT_FRAME_MAX = 16 * 1024;
/** Released requests a connection keeps for its next commands. */
const KEPT_REQUESTS = 256;

/**
 * The memory buffering a payload of `outLength` bytes keeps alive until its command is released,
 * which the target queue's budgets count (admitVq): a small payload is copied into its request's own
 * buffer (out_length is what it takes there); a larger one is gathered into a pooled frame, a
 * power-of-two size class with its direct-I/O alignment slack, so up to about twice out_length
 * (a 4 KiB virtio-blk write: 4112 bytes in a 12 KiB allocation). Counting the frame rather than
 * copying the payload into an exact-size Buffer keeps the common 4 KiB path free of a copy and
 * an allocation per command; the budget then bounds what peers make the target hold in truth.
 */
function payloadBytes(outLength: number): number {
  return outLength <= SMALL_PAYLOAD ? outLength : FramePool.heldBytes(outLength);
}

/**
 * One VQ command's buffers on a stream connection: the payload received with it, and a frame
 * from the connection's pool whose bytes after the completion header are the device-writable
 * buffer, so the completion goes out as one piece of that frame.
 *
 * Reused: a released request goes back to its connection for a later command, keeping a small
 * frame and the views of it it handed out, so that in steady state (the same sizes command
 * after command) a command allocates no request, frame or Buffer view. A small payload (a
 * virtio-blk header) is copied into the request's own buffer for the same reason. Holding
 * `KEPT_REQUESTS` requests of at most `KEPT_FRAME_MAX` bytes bounds what an idle connection
 * keeps.
 */
class StreamVqRequest implements VqRequestData {
  outLength = 0;
  inLength = 0;
  /** Completion header + device-writable bytes (kept from an earlier command, or taken on the first writableNow()). */
  private frame: Buffer | null = null;
  /** writableNow() was called for this command: the frame holds its device-writable bytes. */
  private writableTaken = false;
  /** The device-writable bytes of `frame`: valid while `frame` is, for `viewLength` bytes. */
  private view: Buffer | null = null;
  private viewLength = -1;
  /** frame[0, COMPLETION_SIZE + sentLength): the last completion sent from `frame`. */
  private sent: Buffer | null = null;
  private sentLength = -1;
  private payload: Buffer | VqTransferError = EMPTY;
  /** The pooled frame `payload` was gathered into (it spanned reads), given back on release. */
  private payloadFrame: Buffer | null = null;
  /**
   * The last payload view made, of which frame: the pools hand a slot's frame back to it in
   * steady state (both are LIFO), so the same view serves command after command.
   */
  private payloadViewOf: Buffer | null = null;
  private payloadView: Buffer = EMPTY;
  /** Small payloads, copied (see SMALL_PAYLOAD), and the view of them last handed out. */
  private readonly small = Buffer.allocUnsafe(SMALL_PAYLOAD);
  private smallView: Buffer = EMPTY;
  private released = true;
  /** What completeVq runs when the completion has left. */
  private done: ((err: Error | null) => void) | null = null;
  /** The socket write's callback: bound once per request. */
  readonly onWritten: (err?: Error | null) => void;

  constructor(
    readonly owner: TcpTargetConnection,
    private readonly pool: FramePool,
  ) {
    this.onWritten = () => {
      owner.progressed();
      const done = this.done;
      this.done = null;
      done?.(null);
    };
  }

  /** Take the request for a command; `payloadFrame`: the pooled frame `payload` lies in. */
  start(outLength: number, inLength: number, payload: Buffer | VqTransferError, payloadFrame: Buffer | null = null): this {
    this.released = false;
    this.outLength = outLength;
    this.inLength = inLength;
    this.payload = payload;
    this.payloadFrame = payloadFrame;
    this.writableTaken = false;
    return this;
  }

  /** Take the request for a command whose payload was gathered into the pooled `frame`. */
  startFramed(outLength: number, inLength: number, frame: Buffer): this {
    if (this.payloadViewOf !== frame || this.payloadView.length !== outLength) {
      this.payloadView = frame.subarray(0, outLength);
      this.payloadViewOf = frame;
    }
    return this.start(outLength, inLength, this.payloadView, frame);
  }

  /** A small payload's bytes, taken from `input` into this request's own buffer. */
  takeSmall(input: StreamInput, length: number): Buffer {
    input.takeInto(length, this.small, 0);
    if (this.smallView.length !== length) this.smallView = this.small.subarray(0, length);
    return this.smallView;
  }

  readOutNow(): Buffer | undefined {
    return this.payload instanceof Buffer ? this.payload : undefined;
  }

  /** Nothing travels after the command on a stream: only a discarded payload gets here. */
  fetch(sink: VqBufferSink): void {
    const payload = this.payload;
    if (payload instanceof VqTransferError) sink.buffersFailed(payload);
    else sink.buffersReady(payload, this.writableNow());
  }

  /** A frame from the connection's pool is always at hand: never undefined here. */
  writableNow(): Buffer {
    this.writableTaken = true;
    if (this.viewLength !== this.inLength || this.view === null) {
      if (this.frame === null || this.frame.length < COMPLETION_SIZE + this.inLength) {
        if (this.frame) this.pool.give(this.frame);
        this.frame = this.pool.take(COMPLETION_SIZE + this.inLength);
        this.sent = null;
        this.sentLength = -1;
      }
      this.view = this.frame.subarray(COMPLETION_SIZE, COMPLETION_SIZE + this.inLength);
      this.viewLength = this.inLength;
    }
    return this.view;
  }

  /** The completion header (copied into the frame) and the first `written` bytes after it. */
  completionFrame(completion: Buffer, written: number): Buffer {
    const frame = this.frame!;
    completion.copy(frame, 0, 0, COMPLETION_SIZE);
    if (this.sentLength !== written || this.sent === null) {
      this.sent = frame.subarray(0, COMPLETION_SIZE + written);
      this.sentLength = written;
    }
    return this.sent;
  }

  /** Send `out` on the owner's socket; `done` runs when it has left. */
  send(out: Buffer, done: (err: Error | null) => void): void {
    this.done = done;
    this.owner.writeOne(out, this.onWritten);
  }

  /** Whether the device-writable buffer was handed out for this command (else nothing can have been written). */
  get hasWritable(): boolean {
    return this.writableTaken;
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    if (this.payloadFrame) this.pool.give(this.payloadFrame);
    this.payloadFrame = null;
    this.payload = EMPTY;
    this.done = null;
    if (this.frame !== null && this.frame.length > KEPT_FRAME_MAX) {
      this.pool.give(this.frame);
      this.frame = null;
      this.view = null;
      this.viewLength = -1;
      this.sent = null;
      this.sentLength = -1;
    }
    this.owner.requestReleased(this);
  }
}

/**
 * Where the parser is. The header of the command being read is always the connection's
 * `header` buffer; the states that recur with every command (header, admit, payload) are one
 * object each per connection, updated in place (no allocation per command).
 */
type ReadState =
  | { kind: 'header' }
  /** A VQ header waiting for the target queue's leave to buffer its payload. */
  | { kind: 'admit'; waiting: boolean }
  | { kind: 'payload'; length: number }
  | { kind: 'discard'; left: number; announced: number; why: string };

/**
 * Target end of one TCP connection: request PDUs in (DECISIONS.md item 3), completions out.
 *
 * Memory a peer can make this end hold is bounded:
 * - a VQ command's payload is buffered only after the target queue admits it (handler.admitVq),
 *   which it does only on a bound virtqueue, within the queue's limits and the target's send
 *   budget; anything else is skipped as it arrives, never kept;
 * - before Connect no payload is read at all (admitVq answers 'close'), so a peer that has
 *   proved nothing cannot make the process read megabytes;
 * - every byte lands in the connection's scratch (StreamInput) or straight in an admitted
 *   payload's pooled frame: reading allocates nothing (see user-buffer-read.ts), and skipped
 *   bytes are overwritten by the next read;
 * - reading pauses while the socket has more than its high-water mark queued for sending, or
 *   while the target queue defers admission, so the unparsed input is at most one read;
 * - a peer that stops reading its completions altogether is closed after sendStallTimeoutMs
 *   without progress, which releases what its queued completions hold.
 */
export class TcpTargetConnection implements TargetConnection {
  readonly capabilities = STREAM_TARGET_CAPABILITIES;
  readonly maxKeyedDescriptors = 0;
  readonly peer: string;
  readonly identity: string | undefined;
  /**
   * Received bytes not parsed yet. Reads land in its scratch, except while an admitted payload
   * is being gathered and nothing is buffered: then straight in the payload's frame.
   */
  private readonly input = new StreamInput(
    () => (this.gather !== null && this.state === this.payloadState ? this.gather.subarray(this.gathered, this.payloadState.length) : null),
    (n) => (this.gathered += n),
  );
  /** The VQ payload being gathered (an admitted one over SMALL_PAYLOAD), and how much has come. */
  private gather: Buffer | null = null;
  private gathered = 0;
  /** Reads come through onread into the scratch (plain TCP); else 'data' chunks are fed (TLS). */
  private readonly userBuffers: boolean;
  /** The command being read: decoded in place, handed to the target queue for the call only. */
  private readonly header = Buffer.alloc(COMMAND_SIZE);
  private readonly headerState: ReadState = { kind: 'header' };
  private readonly admitState: { kind: 'admit'; waiting: boolean } = { kind: 'admit', waiting: false };
  /**
   * Admission settled: parse on. Made once: a closure inside parse() would capture the loop's
   * block scope, and V8 would then allocate a context for it on every command parsed.
   */
  private readonly admitRetry = (): void => {
    this.admitState.waiting = false;
    if (!this.closed) this.runParser();
  };
  private readonly payloadState: { kind: 'payload'; length: number } = { kind: 'payload', length: 0 };
  private state: ReadState = this.headerState;
  /** Released VQ requests, reused for the next commands (see StreamVqRequest). */
  private readonly freeRequests: StreamVqRequest[] = [];
  private handler: TargetConnectionHandler | null = null;
  private closed = false;
  /** The socket has more queued than its high-water mark: wait for 'drain'. */
  private sendBackpressure = false;
  /** The peer ended its sending side. */
  private peerEnded = false;
  private endReported = false;
  private stallTimer: NodeJS.Timeout | null = null;
  /** Completions wait in the socket: the stall timer counts (else it runs out doing nothing). */
  private stallArmed = false;
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
    // A TLS socket's reads are the TLS layer's: its plaintext comes as 'data' chunks.
    this.userBuffers =
      origin.scheme === 'tcp' && readIntoUserBuffers(socket, () => this.input.nextBuffer(), (n) => this.received(n));
  }

  /** Whether this connection reads without a Buffer per read (see user-buffer-read.ts). */
  get readsIntoScratch(): boolean {
    return this.userBuffers;
  }

  start(handler: TargetConnectionHandler): void {
    this.handler = handler;
    if (!this.userBuffers) this.socket.on('data', (chunk: Buffer) => this.feed(chunk));
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

  /** `n` bytes landed where input.nextBuffer() said (onread's callback). */
  private received(n: number): boolean {
    if (this.closed) return true;
    this.input.received(n);
    this.runParser();
    return true;
  }

  /** A chunk read by someone else (TLS): parsed as reads would be. */
  private feed(chunk: Buffer): void {
    this.input.feed(chunk);
    this.runParser();
  }

  private runParser(): void {
    try {
      this.parse();
      // A fed chunk goes in as far as parsing makes room (all of it unless admission waits).
      while (this.input.hasPending && !this.closed && this.state.kind !== 'admit' && this.input.moreFromChunk()) this.parse();
    } catch (err) {
      this.log.warn(`${this.peer}: closing: ${(err as Error).message}`);
      this.close();
      return;
    }
    this.updateReading();
    if (this.peerEnded && !this.endReported && !this.closed && this.state.kind !== 'admit') {
      this.endReported = true;
      if (this.input.length > 0 || this.input.hasPending || this.state.kind !== 'header') {
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
        if (this.input.length < COMMAND_SIZE) return;
        // Into the connection's header buffer: no allocation; the target queue reads it during onCommand only.
        const header = this.header;
        this.input.takeWords(COMMAND_SIZE, header);
        this.state = this.afterHeader(header);
        if (this.state.kind === 'header') this.deliver(header, EMPTY);
      } else if (st.kind === 'admit') {
        if (st.waiting) return;
        const header = this.header;
        const out = getLE32(header, VQ_COMMAND.outLength);
        const answer = this.handler ? this.handler.admitVq(header, payloadBytes(out)) : 'discard';
        if (answer === 'close' && out > 0) {
          this.refusePayload(header);
          return;
        }
        if (out > this.maxVqPayload) {
          // Skipped whatever else the answer: a reservation the target queue made for it ('accept')
          // travels with the command and comes back when the command ends.
          this.log.warn(`${this.peer}: VQ command announces ${out} device-readable bytes; discarding them`);
          this.state = { kind: 'discard', left: out, announced: out, why: `exceeds the ${this.maxVqPayload}-byte limit` };
        } else if (answer === 'accept') {
          this.payloadState.length = out;
          this.state = this.payloadState;
        } else if (answer === 'discard' || answer === 'close') {
          // ('close' with no payload: nothing to refuse, the framing holds.)
          this.state = { kind: 'discard', left: out, announced: out, why: 'not admitted by the queue' };
        } else {
          st.waiting = true;
          answer.then(this.admitRetry, this.admitRetry);
          return;
        }
      } else if (st.kind === 'payload') {
        const header = this.header;
        const avail = this.input.length;
        if (getLE16(header, COMMAND_HEADER.opcode) !== Opcode.Vq) {
          // Connect's body (at most CONNECT_BODY_SIZE): kept by the target queue past this call, so a copy.
          if (avail < st.length) return;
          const body = st.length === 0 ? EMPTY : this.input.takeCopy(st.length);
          this.state = this.headerState;
          this.deliver(header, body);
          continue;
        }
        if (st.length <= SMALL_PAYLOAD) {
          if (avail < st.length) return;
          this.state = this.headerState;
          const request = this.takeRequest();
          const inLength = getLE32(header, VQ_COMMAND.inLength);
          if (st.length === 0) {
            this.deliver(header, request.start(0, inLength, EMPTY));
          } else {
            // A virtio-blk header and the like: copied into the request, no view to allocate.
            const small = request.takeSmall(this.input, st.length);
            this.deliver(header, request.start(st.length, inLength, small));
          }
          continue;
        }
        // Gathered into a pooled frame, reused once its command ends: what is buffered is
        // copied, the rest read straight into it (nextBuffer). No Buffer per command or read.
        if (this.gather === null) {
          this.gather = this.frames.take(st.length);
          this.gathered = 0;
        }
        const n = Math.min(avail, st.length - this.gathered);
        if (n > 0) {
          this.input.takeInto(n, this.gather, this.gathered);
          this.gathered += n;
        }
        if (this.gathered < st.length) return;
        const frame = this.gather;
        this.gather = null;
        this.state = this.headerState;
        const request = this.takeRequest();
        this.deliver(header, request.startFramed(st.length, getLE32(header, VQ_COMMAND.inLength), frame));
      } else {
        st.left -= this.input.skip(st.left);
        if (st.left > 0) return;
        this.state = this.headerState;
        const err = new VqTransferError('out', `device-readable payload of ${st.announced} bytes ${st.why}`);
        this.deliver(this.header, this.takeRequest().start(st.announced, getLE32(this.header, VQ_COMMAND.inLength), err));
      }
    }
  }

  private afterHeader(header: Buffer): ReadState {
    const opcode = getLE16(header, COMMAND_HEADER.opcode);
    if (opcode === Opcode.Connect) {
      const length = getLE32(header, CONNECT_COMMAND.length);
      if (length === 0) return this.headerState;
      if (length !== CONNECT_BODY_SIZE) {
        // The framing itself is in doubt: nothing after this can be trusted.
        throw new Error(`Connect announces a ${length}-byte body (only 0 or ${CONNECT_BODY_SIZE} are valid)`);
      }
      this.payloadState.length = length;
      return this.payloadState;
    }
    // Every VQ command asks the target queue first, oversized ones too: before Connect even an
    // oversized payload is not skipped but refused (admit state).
    if (opcode === Opcode.Vq) {
      this.admitState.waiting = false;
      return this.admitState;
    }
    return this.headerState;
  }

  /**
   * The target queue takes no payload on this connection (admitVq said 'close'): the command is
   * answered without a byte of its payload read, then the connection closes, since what
   * follows the header cannot be framed without reading the payload.
   */
  private refusePayload(header: Buffer): void {
    const out = getLE32(header, VQ_COMMAND.outLength);
    this.log.info(`${this.peer}: VQ command with ${out} device-readable bytes before Connect; answering without reading them and closing`);
    this.state = this.headerState;
    const err = new VqTransferError('out', `device-readable payload of ${out} bytes not read: no Connect yet`);
    this.deliver(header, this.takeRequest().start(out, getLE32(header, VQ_COMMAND.inLength), err));
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

  /** A released request, or a new one while all are in use. */
  private takeRequest(): StreamVqRequest {
    return this.freeRequests.pop() ?? new StreamVqRequest(this, this.frames);
  }

  /** A request's command has ended: it serves a later one (up to KEPT_REQUESTS of them wait). */
  requestReleased(request: StreamVqRequest): void {
    if (!this.closed && this.freeRequests.length < KEPT_REQUESTS) this.freeRequests.push(request);
  }

  private deliver(header: Buffer, payload: Buffer | VqRequestData): void {
    this.handler?.onCommand(header, payload);
  }

  sendCompletion(completion: Buffer, payload?: Buffer): void {
    if (this.closed) return;
    this.write(payload ? [completion, payload] : [completion]);
  }

  completeVq(request: VqRequestData, completion: Buffer, written: number, done: (err: Error | null) => void): void {
    if (this.closed) return done(null);
    if (!(request instanceof StreamVqRequest) || request.owner !== this) {
      return done(new TypeError(`${this.peer}: completeVq for a request this connection did not deliver`));
    }
    const taken = request.hasWritable;
    if (written > 0 && (!taken || written > request.inLength)) {
      return done(new RangeError(`${this.peer}: ${written} bytes written into ${taken ? request.inLength : 'no'} device-writable bytes`));
    }
    // The header goes in front of the bytes the device wrote: one buffer, one write. It
    // settles when it has left Node's buffers (or the socket is gone: the callback then gets
    // an error), so the caller counts the command, and its frame, until then.
    request.send(taken && written > 0 ? request.completionFrame(completion, written) : completion, done);
  }

  /** Completions and events: `payload` (a redirect record) right after the completion. */
  private write(parts: readonly Buffer[]): void {
    for (const b of parts) this.writeOne(b);
  }

  /** One buffer onto the socket (batched per turn); `written` when it has left Node's buffers. */
  writeOne(b: Buffer, written: (err?: Error | null) => void = this.onWritten): void {
    const s = this.socket;
    this.batch.hold();
    if (!s.write(b, written)) {
      this.sendBackpressure = true;
      this.updateReading();
    }
    if (this.sendStallTimeoutMs > 0 && s.writableLength > 0 && !this.stallArmed) {
      this.stallArmed = true;
      // One timer per connection, re-armed (refresh) rather than made per batch of writes.
      if (this.stallTimer === null) {
        this.stallTimer = setTimeout(this.onStalled, this.sendStallTimeoutMs);
        this.stallTimer.unref();
      } else this.stallTimer.refresh();
    }
  }

  /** A write has left Node's buffers: bound once. */
  private readonly onWritten = (): void => this.progressed();

  /** Progress: the peer is reading. Restart the stall clock, or stop it when all is sent. */
  progressed(): void {
    // All sent: disarmed, the timer left to run out (onStalled then does nothing).
    if (this.stallArmed) {
      if (this.socket.writableLength > 0) this.stallTimer!.refresh();
      else this.stallArmed = false;
    }
  }

  private readonly onStalled = (): void => {
    if (!this.stallArmed) return;
    this.stallArmed = false;
    if (this.socket.destroyed || this.socket.writableLength === 0) return;
    this.log.warn(
      `${this.peer}: ${this.socket.writableLength} bytes of completions unread for ${this.sendStallTimeoutMs} ms; closing the connection`,
    );
    this.closed = true;
    this.socket.destroy();
  };

  /** capabilities.inlineDataBytes is 0: the target never asks (a stream carries every payload inline anyway). */
  enableInlineData(): void {
    throw new TypeError(`${this.peer}: a stream connection has no vof inline data to enable`);
  }

  /** capabilities.remoteInvalidation is false: there are no keys on a stream. */
  enableRemoteInvalidation(): void {
    throw new TypeError(`${this.peer}: a stream connection has no keys to invalidate`);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.updateReading();
    this.socket.end();
    // A peer that never reads would keep end() pending forever. Cleared at 'close': a pending
    // timer would hold this connection, its socket and its target queue for 2 s after they are gone,
    // which under connect/disconnect churn is thousands of dead connections at once.
    this.endTimer = setTimeout(() => this.socket.destroy(), 2000);
    this.endTimer.unref();
  }

  private finish(): void {
    this.closed = true;
    this.gather = null;
    this.input.clear();
    this.frames.close();
    this.freeRequests.length = 0;
    if (this.stallTimer) clearTimeout(this.stallTimer);
    this.stallTimer = null;
    if (this.endTimer) clearTimeout(this.endTimer);
    this.endTimer = null;
    const h = this.handler;
    this.handler = null;
    h?.onClose();
  }
}
