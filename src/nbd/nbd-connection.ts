import type { Socket } from 'node:net';
import { getBE16, getBE32, getBE64Number, setBE32 } from '../protocol/fields.js';
import { quotePeerString } from '../util/escape.js';
import type { Logger } from '../util/log.js';
import { StreamInput } from '../transport/tcp/stream-input.js';
import { readIntoUserBuffers } from '../transport/tcp/user-buffer-read.js';
import { TickBatch } from '../transport/tcp/tick-batch.js';
import type { BridgeBudget, BudgetWaiter } from './bridge-budget.js';
import { NbdCommandError, nbdErrorOf, type NbdExport, type NbdFastRequest } from './nbd-export.js';
import {
  CLIENT_FLAGS,
  CLIENT_FLAGS_SIZE,
  NBD_ERROR_NAMES,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_IHAVEOPT,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NbdCommand,
  NbdError,
  NbdInfo,
  NbdOption,
  NbdReply,
  OPTION_HEADER_SIZE,
  REQUEST_HEADER,
  REQUEST_HEADER_SIZE,
  SIMPLE_REPLY,
  SIMPLE_REPLY_SIZE,
  decodeInfoRequest,
  decodeOptionHeader,
  encodeExportNameReply,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeOptionReply,
  encodeServerGreeting,
  encodeServerReplyData,
} from './nbd-protocol.js';
import type { NbdTls } from './nbd-tls.js';
import { WakeSignal } from '../util/wake-signal.js';

export interface NbdConnectionLimits {
  /** Requests admitted at once (replies not yet handed to the kernel count too). */
  readonly maxRequests: number;
  /** Read and write payload bytes admitted at once; at least the export's maximum block size. */
  readonly maxBytes: number;
  /** Close the connection when its replies have not moved for this long (0: never). */
  readonly sendTimeoutMs: number;
}

/** What every connection of one bridge shares. */
export interface NbdShared {
  /** The bridge-wide memory budget: each request's payload bytes are taken from it too. */
  readonly budget: BridgeBudget;
  /** NBD_OPT_STARTTLS, when the bridge has TLS settings (null: NOTLS mode). */
  readonly tls: NbdTls | null;
}

/** Option data larger than this is skipped unread and refused with NBD_REP_ERR_TOO_BIG. */
const MAX_OPTION_DATA = 64 * 1024;

/** 'tls': NBD_OPT_STARTTLS acknowledged, the TLS handshake runs; nothing is parsed meanwhile. */
type Phase = 'client-flags' | 'option' | 'tls' | 'request' | 'payload' | 'skip' | 'done';

/**
 * A request's data buffer up to this size stays with it for the next request (see NbdRequest).
 * 1 MiB: the sizes clients use for bulk I/O (fio and qemu-img at 128 KiB to 1 MiB, the kernel's
 * nbd at its max_sectors). Before, 64 KiB: every 128 KiB request allocated 128 KiB outside the
 * JS heap, thousands a second, which V8 answered with a full mark-compact every ~100 ms (p99
 * 14 ms, `node --trace-gc` on the bridge; bench/nbd-bridge-cost.mjs).
 */
const KEPT_DATA_MAX = 1024 * 1024;
/**
 * What a connection's requests keep between requests, all together: 8 × 128 KiB or 4 × 1 MiB
 * of requests in flight, so that one busy connection does not take all of the bridge's share
 * (BridgeBudget.keep, which bounds what all connections keep while idle).
 */
const KEPT_PER_CONNECTION = 4 * 1024 * 1024 + 64 * SIMPLE_REPLY_SIZE;
const EMPTY = Buffer.alloc(0);

/**
 * One NBD request, from its header until its reply has been handed to the kernel: the decoded
 * header, its payload or read data, its share of the connection's budget, its reply header.
 *
 * Reused: a finished request goes back to its connection for a later one, keeping its reply
 * header, its callbacks (bound once), its lock entry and a data buffer of up to KEPT_DATA_MAX
 * bytes with the view of it last handed out. So in steady state (the same sizes request after
 * request) a READ or WRITE allocates nothing here, and with a disk that has submitRead/
 * submitWrite no Promise or closure either. The connection makes at most maxRequests of them;
 * their kept buffers together stay within KEPT_PER_CONNECTION and the bridge's kept share
 * (BridgeBudget.keep); past either, a buffer is the request's own and dropped when it ends.
 */
class NbdRequest implements NbdFastRequest {
  type = 0;
  flags = 0;
  /** The 64-bit offset as a number (see NbdExport.validate). */
  offset = 0;
  length = 0;
  /** Bytes of the budget held: read data or write payload. */
  charge = 0;
  /** Set when the request was refused before execution. */
  refusal: { code: number; why: string } | null = null;
  /** Admitted and its reply not yet handed to the kernel. */
  live = false;
  /** The READ's data or the WRITE's payload: exactly `length` bytes, `frame` after its first 16. */
  data: Buffer = EMPTY;
  /** Room for the reply header, then `data`: a READ's reply leaves as this one buffer. */
  private frame: Buffer = EMPTY;
  /** Payload bytes received so far (WRITE). */
  filled = 0;
  /** Went through NbdExport.submit (a WRITE then holds `lock` until it ends). */
  submitted = false;
  /** The simple reply: magic, error, the request's cookie. */
  readonly reply = Buffer.alloc(SIMPLE_REPLY_SIZE);
  /** Kept for the next requests (at most SIMPLE_REPLY_SIZE + KEPT_DATA_MAX bytes). */
  private memory: Buffer | null = null;
  /** What `frame` and `data` are views of: `memory`, or a buffer of this request's own. */
  private viewsOf: Buffer | null = null;
  readonly lock: NbdFastRequest['lock'];
  /** The disk call's callback (NbdExport.submit). */
  readonly onDisk: (err: Error | null) => void;
  /** The reply's write callback: it reached the kernel (or the socket is gone). */
  readonly onWritten: () => void;

  constructor(
    private readonly conn: NbdConnection,
    exp: NbdExport,
  ) {
    setBE32(this.reply, SIMPLE_REPLY.magic, NBD_SIMPLE_REPLY_MAGIC);
    this.lock = { start: 0, end: 0, exclusive: false, granted: false, grant: () => exp.writeGranted(this) };
    this.onDisk = (err) => conn.diskDone(this, err);
    this.onWritten = () => conn.replySent(this);
  }

  /** Take the request for a header (in `h`, REQUEST_HEADER_SIZE bytes): fields decoded, cookie copied into the reply. */
  start(h: Buffer): this {
    this.flags = getBE16(h, REQUEST_HEADER.flags);
    this.type = getBE16(h, REQUEST_HEADER.type);
    // Read as two words: readBigUInt64BE would allocate a BigInt per request.
    this.offset = getBE64Number(h, REQUEST_HEADER.offset);
    this.length = getBE32(h, REQUEST_HEADER.length);
    // The cookie as two words: Buffer#copy from part of a buffer would make a view.
    const from = REQUEST_HEADER.cookie.offset;
    const to = SIMPLE_REPLY.cookie.offset;
    this.reply.writeUInt32BE(h.readUInt32BE(from), to);
    this.reply.writeUInt32BE(h.readUInt32BE(from + 4), to + 4);
    this.charge = 0;
    this.refusal = null;
    this.filled = 0;
    this.submitted = false;
    return this;
  }

  /** `data` made `length` bytes long, in the kept memory when it fits (its views reused while the length repeats). */
  takeData(): Buffer {
    const n = this.length;
    let into = this.memory;
    if (into === null || into.length < SIMPLE_REPLY_SIZE + n) {
      into = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE + n);
      if (n <= KEPT_DATA_MAX && this.conn.keep(into.length - (this.memory?.length ?? 0))) this.memory = into;
    }
    if (this.viewsOf !== into || this.data.length !== n) {
      this.viewsOf = into;
      this.frame = into.subarray(0, SIMPLE_REPLY_SIZE + n);
      this.data = into.subarray(SIMPLE_REPLY_SIZE, SIMPLE_REPLY_SIZE + n);
    }
    return this.data;
  }

  /** The reply header followed by `data`, in one buffer. */
  replyFrame(): Buffer {
    const r = this.reply;
    const f = this.frame;
    for (let k = 0; k < SIMPLE_REPLY_SIZE; k += 4) f.writeUInt32BE(r.readUInt32BE(k), k);
    return f;
  }

  /**
   * Its memory is not reused: the disk call failed (a request the disk split may have failed
   * while other parts of it still write into the buffer), or the connection is gone.
   */
  forgetData(): void {
    if (this.memory) this.conn.keep(-this.memory.length);
    this.memory = null;
  }

  /** Finished: drop what is not kept (a large buffer of its own). */
  recycle(): void {
    if (this.viewsOf !== null && this.viewsOf !== this.memory) {
      this.viewsOf = null;
      this.frame = this.data = EMPTY;
    }
  }
}

/**
 * One client connection: the fixed newstyle handshake (with NBD_OPT_STARTTLS when the bridge
 * has TLS), then the transmission phase with pipelined requests executed concurrently against
 * the shared export. Memory is bounded by the connection's limits and by the bridge-wide
 * budget: when either is reached, the socket is not read until replies go out.
 */
export class NbdConnection implements BudgetWaiter {
  private phase: Phase = 'client-flags';
  /** The socket NBD is spoken on: the accepted one, then the TLS socket over it after STARTTLS. */
  private socket: Socket;
  private tlsActive = false;
  private fixedNewstyle = false;
  private stallTimer: NodeJS.Timeout | null = null;
  /** Replies wait in the socket: the stall timer counts (else it runs out doing nothing). */
  private stallArmed = false;
  /**
   * Received bytes not parsed yet. A WRITE's payload lands straight in its request's buffer
   * while nothing else is buffered (with onread, see attach()).
   */
  private readonly input = new StreamInput(
    () => {
      const req = this.receiving;
      return req !== null && this.phase === 'payload' ? req.data.subarray(req.filled, req.length) : null;
    },
    (n) => (this.receiving!.filled += n),
  );
  /** The request header being decoded (copied here: a view per header would be an allocation). */
  private readonly headerBytes = Buffer.alloc(REQUEST_HEADER_SIZE);
  private noZeroes = false;
  private strictAlignment = false;
  private option: { option: number; length: number } | null = null;
  private skipRemaining = 0;
  private afterSkip: (() => void) | null = null;
  private receiving: NbdRequest | null = null;
  /** A parsed request waiting for room in the budget. */
  private waiting: NbdRequest | null = null;
  /** Requests admitted and not finished (NbdRequest.live). */
  private inFlight = 0;
  private inFlightBytes = 0;
  /** Finished requests, reused (at most maxRequests are ever made: one per admitted request). */
  private readonly freeRequests: NbdRequest[] = [];
  /** Bytes its requests keep between requests (NbdRequest.memory), at most KEPT_PER_CONNECTION. */
  private keptBytes = 0;
  /** Replies of one event-loop turn leave in one write; made when transmission starts (after TLS). */
  private batch: TickBatch | null = null;
  private shuttingDown = false;
  private closed = false;
  /** Woken when no request is in flight (or the socket closed). */
  private readonly idleSignal = new WakeSignal();
  readonly closedPromise: Promise<void>;

  private readonly onData = (d: Buffer): void => {
    if (this.phase === 'done' || this.phase === 'tls') return; // after DISC or ABORT nothing more is read
    this.input.feed(d);
    this.pump();
  };
  /** onread's callback (a plain socket of a bridge without TLS): `n` bytes landed where input.nextBuffer() said. */
  private readonly onRead = (n: number): boolean => {
    this.input.received(n);
    if (this.phase === 'done' || this.phase === 'tls') this.input.clear();
    else this.pump();
    return true;
  };

  constructor(
    raw: Socket,
    private readonly exp: NbdExport,
    private readonly limits: NbdConnectionLimits,
    private readonly shared: NbdShared,
    private readonly log: Logger,
    readonly peer: string,
  ) {
    this.socket = raw;
    // The accepted socket closes with the TLS socket over it, so this covers both.
    this.closedPromise = new Promise((resolve) => raw.once('close', () => resolve()));
    raw.setNoDelay?.(true);
    // No Buffer per read (user-buffer-read.ts) where no STARTTLS can hand the socket to TLS later.
    this.attach(raw, shared.tls === null && readIntoUserBuffers(raw, () => this.input.nextBuffer(), this.onRead));
    // (Accepted paused: pauseOnConnect.)
    raw.resume();
    raw.on('close', () => {
      this.closed = true;
      this.phase = 'done';
      this.input.clear();
      this.stopStallTimer();
      this.shared.budget.leave(this);
      // What the idle requests kept goes back to the bridge's share (those in flight give theirs in finish()).
      for (const req of this.freeRequests) req.forgetData();
      this.freeRequests.length = 0;
      // A WRITE whose payload never arrived in full will not run: its bytes go back now (else a
      // client could leak the bridge's budget away, a header at a time).
      const partial = this.receiving;
      if (partial) {
        this.receiving = null;
        this.finish(partial);
      }
      this.wakeIdle();
    });
    raw.write(encodeServerGreeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES));
  }

  private attach(s: Socket, userBuffers = false): void {
    if (!userBuffers) s.on('data', this.onData);
    s.on('error', (err) => this.log.debug(`nbd ${this.peer}: socket error: ${err.message}`));
  }

  /** Whether the client still has to upgrade before anything but STARTTLS and ABORT (FORCEDTLS). */
  private get tlsRequired(): boolean {
    return this.shared.tls !== null && this.shared.tls.required && !this.tlsActive;
  }

  /** The budget has room for this connection's waiting request: look again. */
  budgetWake(): void {
    if (this.waiting) this.pump();
    else this.shared.budget.leave(this); // nothing waits here any more: never hold up the queue
  }

  get inTransmission(): boolean {
    return this.phase === 'request' || this.phase === 'payload' || (this.phase === 'skip' && this.afterSkip === null);
  }

  get requestsInFlight(): number {
    return this.inFlight;
  }

  /** Hard disconnect (of the TLS socket too, if any), with a reason in the log. */
  drop(why: string): void {
    if (this.closed) return;
    this.log.warn(`nbd ${this.peer}: ${why}; disconnecting`);
    this.phase = 'done';
    this.socket.destroy();
  }

  /** The next n input bytes, a copy (handshake records only); null if fewer have arrived. */
  private take(n: number): Buffer | null {
    return this.input.length < n ? null : this.input.takeCopy(n);
  }

  /**
   * Parse and act on everything that has arrived, as far as the limits allow. Output waiting in
   * the socket does not stop it: a reply's bytes count in the limits and the budget until the
   * kernel has them, which bounds what waits, and the send timeout ends a client that does not
   * read. (A fixed mark did before: over 1 MiB waiting, nothing more was read until all of it
   * had left, a full stop of the pipeline whenever 8 × 128 KiB replies waited at once.)
   */
  private pump(): void {
    let progress = true;
    while (progress && !this.closed && this.phase !== 'done') {
      try {
        progress = this.step();
        // A fed chunk (TLS) comes in as parsing makes room, unless a request waits for the budget.
        if (!progress && this.waiting === null && this.phase !== 'tls' && this.input.hasPending) {
          progress = this.input.moreFromChunk();
        }
      } catch (err) {
        // A bug must cost this connection, never the bridge and its other clients.
        this.drop(`internal error: ${(err as Error).stack ?? err}`);
        return;
      }
    }
    // (During the TLS switch the socket stays paused: its buffered bytes belong to TLS.)
    if (!this.closed && this.phase !== 'done' && this.phase !== 'tls' && this.socket.isPaused() !== (this.waiting !== null)) {
      if (this.waiting) this.socket.pause();
      else this.socket.resume();
    }
  }

  /** One parsing step; false when more input (or room in the budget) is needed. */
  private step(): boolean {
    switch (this.phase) {
      case 'client-flags': {
        const b = this.take(CLIENT_FLAGS_SIZE);
        if (!b) return false;
        const flags = getBE32(b, CLIENT_FLAGS.flags);
        if ((flags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) !== 0) {
          this.drop(`unknown client flags 0x${flags.toString(16)}`);
          return false;
        }
        this.noZeroes = (flags & NBD_FLAG_C_NO_ZEROES) !== 0;
        this.fixedNewstyle = (flags & NBD_FLAG_C_FIXED_NEWSTYLE) !== 0;
        // TLS needs fixed newstyle (the spec: NOTLS mode otherwise); such a client could never get in.
        if (this.tlsRequired && !this.fixedNewstyle) {
          this.drop('TLS is required and the client does not speak fixed newstyle');
          return false;
        }
        this.phase = 'option';
        return true;
      }
      case 'option':
        return this.stepOption();
      case 'tls':
        return false;
      case 'request':
        return this.stepRequest();
      case 'payload': {
        const req = this.receiving!;
        const n = Math.min(req.length - req.filled, this.input.length);
        if (n > 0) this.input.takeInto(n, req.data, req.filled);
        req.filled += n;
        if (req.filled < req.length) return false;
        this.receiving = null;
        this.phase = 'request';
        this.run(req);
        return true;
      }
      case 'skip': {
        this.skipRemaining -= this.input.skip(this.skipRemaining);
        if (this.skipRemaining > 0) return false;
        const next = this.afterSkip;
        this.afterSkip = null;
        if (next) next();
        else this.phase = 'request';
        return true;
      }
      case 'done':
        return false;
    }
  }

  private skip(bytes: number, then: (() => void) | null): void {
    this.skipRemaining = bytes;
    this.afterSkip = then;
    this.phase = 'skip';
  }

  // ---- handshake ----

  private stepOption(): boolean {
    if (!this.option) {
      const h = this.take(OPTION_HEADER_SIZE);
      if (!h) return false;
      const { magic, option, length } = decodeOptionHeader(h);
      if (magic !== NBD_IHAVEOPT) {
        this.drop(`bad option magic 0x${magic.toString(16)}`);
        return false;
      }
      if (length > MAX_OPTION_DATA) {
        this.log.warn(`nbd ${this.peer}: option ${option} with ${length} bytes of data refused`);
        this.skip(length, () => {
          this.phase = 'option';
          if (this.tlsRequired && option !== NbdOption.STARTTLS && option !== NbdOption.ABORT) this.replyTlsRequired(option);
          else this.replyOption(option, NbdReply.ERR_TOO_BIG, 'option data too large');
        });
        return true;
      }
      this.option = { option, length };
    }
    const data = this.take(this.option.length);
    if (!data) return false;
    const { option } = this.option;
    this.option = null;
    this.handleOption(option, data);
    return true;
  }

  private replyOption(option: number, type: number, message?: string): void {
    this.socket.write(encodeOptionReply(option, type, message ? Buffer.from(message, 'utf8') : undefined));
  }

  private replyTlsRequired(option: number): void {
    this.replyOption(option, NbdReply.ERR_TLS_REQD, 'TLS is required: upgrade with NBD_OPT_STARTTLS first');
  }

  private handleOption(option: number, data: Buffer): void {
    if (this.shuttingDown && option !== NbdOption.ABORT) {
      this.replyOption(option, NbdReply.ERR_SHUTDOWN, 'server shutting down');
      return;
    }
    // FORCEDTLS: before TLS, nothing about the export (not even its name) is told.
    if (this.tlsRequired && option !== NbdOption.STARTTLS && option !== NbdOption.ABORT) {
      if (option === NbdOption.EXPORT_NAME) {
        // It cannot be refused with an error: the only answer is to end the session.
        this.drop('NBD_OPT_EXPORT_NAME before NBD_OPT_STARTTLS, and TLS is required');
        return;
      }
      this.log.debug(`nbd ${this.peer}: option ${option} before TLS refused with NBD_REP_ERR_TLS_REQD`);
      this.replyTlsRequired(option);
      return;
    }
    switch (option) {
      case NbdOption.STARTTLS:
        if (!this.shared.tls) {
          // NOTLS mode.
          this.replyOption(option, NbdReply.ERR_UNSUP, 'this server has no TLS');
        } else if (this.tlsActive) {
          this.replyOption(option, NbdReply.ERR_INVALID, 'TLS is already on');
        } else if (data.length !== 0) {
          this.replyOption(option, NbdReply.ERR_INVALID, 'NBD_OPT_STARTTLS takes no data');
        } else if (!this.fixedNewstyle) {
          this.replyOption(option, NbdReply.ERR_POLICY, 'TLS needs fixed newstyle negotiation');
        } else {
          this.startTls();
        }
        return;
      case NbdOption.EXPORT_NAME: {
        const name = data.toString('utf8');
        if (!this.exp.matches(name)) {
          // NBD_OPT_EXPORT_NAME cannot fail: the only answer is to end the session.
          this.drop(`NBD_OPT_EXPORT_NAME for unknown export ${quotePeerString(name)}`);
          return;
        }
        this.socket.write(encodeExportNameReply(BigInt(this.exp.size), this.exp.transmissionFlags, this.noZeroes));
        this.enterTransmission(false, name);
        return;
      }
      case NbdOption.ABORT:
        this.replyOption(option, NbdReply.ACK);
        this.phase = 'done';
        this.socket.end();
        return;
      case NbdOption.LIST:
        if (data.length !== 0) {
          this.replyOption(option, NbdReply.ERR_INVALID, 'NBD_OPT_LIST takes no data');
          return;
        }
        this.socket.write(encodeOptionReply(option, NbdReply.SERVER, encodeServerReplyData(this.exp.name, this.exp.description)));
        this.replyOption(option, NbdReply.ACK);
        return;
      case NbdOption.INFO:
      case NbdOption.GO: {
        const req = decodeInfoRequest(data);
        if (!req) {
          this.replyOption(option, NbdReply.ERR_INVALID, 'malformed NBD_OPT_INFO/NBD_OPT_GO data');
          return;
        }
        if (!this.exp.matches(req.name)) {
          this.log.info(`nbd ${this.peer}: unknown export ${quotePeerString(req.name)} requested`);
          this.replyOption(option, NbdReply.ERR_UNKNOWN, `no export named ${quotePeerString(req.name)}; this server exports ${quotePeerString(this.exp.name)}`);
          return;
        }
        this.socket.write(encodeOptionReply(option, NbdReply.INFO, encodeInfoExport(BigInt(this.exp.size), this.exp.transmissionFlags)));
        // Block size constraints are sent whether asked or not (clients ignore what they do not understand).
        this.socket.write(encodeOptionReply(option, NbdReply.INFO, encodeInfoBlockSize(this.exp.blockSizes)));
        if (req.infos.includes(NbdInfo.NAME)) this.socket.write(encodeOptionReply(option, NbdReply.INFO, encodeInfoString(NbdInfo.NAME, this.exp.name)));
        if (req.infos.includes(NbdInfo.DESCRIPTION) && this.exp.description) {
          this.socket.write(encodeOptionReply(option, NbdReply.INFO, encodeInfoString(NbdInfo.DESCRIPTION, this.exp.description)));
        }
        this.replyOption(option, NbdReply.ACK);
        if (option === NbdOption.GO) this.enterTransmission(req.infos.includes(NbdInfo.BLOCK_SIZE), req.name);
        return;
      }
      default:
        // STRUCTURED_REPLY, metadata contexts, extended headers and anything unknown: not
        // implemented; simple replies only.
        this.replyOption(option, NbdReply.ERR_UNSUP, `option ${option} is not supported`);
    }
  }

  /**
   * NBD_REP_ACK, then the TLS handshake on the same socket; option haggling restarts inside
   * TLS (the greeting and client flags are not repeated). A failed handshake ends the session:
   * after the ACK there is no going back to plain text.
   */
  private startTls(): void {
    const tls = this.shared.tls!;
    // The client must wait for the ACK before it starts TLS: bytes already here are neither
    // options nor TLS, and would be lost in the switch.
    if (this.input.length > 0 || this.input.hasPending) {
      this.drop('data after NBD_OPT_STARTTLS before its reply');
      return;
    }
    const raw = this.socket;
    this.phase = 'tls';
    // What arrives from here (the ClientHello) stays in the socket's read buffer for TLS.
    raw.pause();
    raw.off('data', this.onData);
    raw.write(encodeOptionReply(NbdOption.STARTTLS, NbdReply.ACK), (err) => {
      if (err || this.closed) return;
      tls.upgrade(raw, this.peer).then(
        ({ socket, identity }) => {
          if (this.closed) {
            socket.destroy();
            return;
          }
          this.socket = socket;
          this.tlsActive = true;
          this.attach(socket);
          this.log.info(`nbd ${this.peer}: TLS ${socket.getProtocol() ?? ''} on${identity !== undefined ? `, client ${quotePeerString(identity)}` : ''}`);
          this.phase = 'option';
          this.pump();
        },
        (e: Error) => this.drop(`TLS handshake failed: ${e.message}`),
      );
    });
  }

  private enterTransmission(strictAlignment: boolean, name: string): void {
    this.strictAlignment = strictAlignment;
    this.batch = new TickBatch(this.socket);
    this.phase = 'request';
    this.log.info(`nbd ${this.peer}: export ${quotePeerString(name || this.exp.name)} in use${strictAlignment ? ' (block sizes agreed)' : ''}`);
  }

  // ---- transmission ----

  private stepRequest(): boolean {
    let req = this.waiting;
    if (!req) {
      if (this.input.length < REQUEST_HEADER_SIZE) return false;
      const h = this.headerBytes;
      this.input.takeWords(REQUEST_HEADER_SIZE, h);
      const magic = getBE32(h, REQUEST_HEADER.magic);
      if (magic !== NBD_REQUEST_MAGIC) {
        this.drop(`bad request magic 0x${magic.toString(16)}`);
        return false;
      }
      if (getBE16(h, REQUEST_HEADER.type) === NbdCommand.DISC) {
        this.phase = 'done';
        this.log.info(`nbd ${this.peer}: disconnect requested`);
        void this.idle().then(() => this.socket.end());
        return false;
      }
      req = (this.freeRequests.pop() ?? new NbdRequest(this, this.exp)).start(h);
      const isWrite = req.type === NbdCommand.WRITE;
      req.refusal = this.shuttingDown
        ? { code: NbdError.ESHUTDOWN, why: 'server shutting down' }
        : this.exp.validate(req.type, req.flags, req.offset, req.length, this.strictAlignment);
      // Refused requests hold no payload budget: a refused write's payload is skipped as it streams in.
      req.charge = req.refusal ? 0 : req.type === NbdCommand.READ || isWrite ? req.length : 0;
    }
    // This connection's own limits first (its replies free them), then the bridge's budget
    // (anyone's replies free it; tryTake queues this connection for it).
    if (
      this.inFlight >= this.limits.maxRequests ||
      (this.inFlight > 0 && this.inFlightBytes + req.charge > this.limits.maxBytes) ||
      !this.shared.budget.tryTake(this, req.charge)
    ) {
      this.waiting = req;
      return false;
    }
    this.waiting = null;
    req.live = true;
    this.inFlight++;
    this.inFlightBytes += req.charge;
    const isWrite = req.type === NbdCommand.WRITE;
    if (req.refusal) {
      this.log.debug(`nbd ${this.peer}: command ${req.type} refused with ${NBD_ERROR_NAMES[req.refusal.code]}: ${req.refusal.why}`);
      if (isWrite && req.length > 0) this.skip(req.length, null);
      this.sendReply(req, req.refusal.code, null);
      return true;
    }
    if (isWrite && req.length > 0) {
      req.takeData();
      this.receiving = req;
      this.phase = 'payload';
      return true;
    }
    this.run(req);
    return true;
  }

  private run(req: NbdRequest): void {
    if (req.type === NbdCommand.READ && req.length > 0) req.takeData();
    // A plain aligned READ or WRITE: one disk call, answered through req.onDisk (diskDone).
    if (this.exp.submit(req, req.flags)) {
      req.submitted = true;
      return;
    }
    const { type, flags, offset, length } = req;
    this.exp.execute(type, flags, offset, length, type === NbdCommand.WRITE && length > 0 ? req.data : null).then(
      (data) => this.sendReply(req, NbdError.OK, data),
      (err: unknown) => this.failed(req, err instanceof NbdCommandError ? err.code : NbdError.EIO, err as Error),
    );
  }

  /** A request would keep `delta` more bytes (negative: gives them up): whether it may. */
  keep(delta: number): boolean {
    if (delta > 0 && (this.keptBytes + delta > KEPT_PER_CONNECTION || !this.shared.budget.keep(delta))) return false;
    if (delta <= 0) this.shared.budget.keep(delta);
    this.keptBytes += delta;
    return true;
  }

  /** The disk call of a request run by NbdExport.submit has ended (NbdRequest.onDisk). */
  diskDone(req: NbdRequest, err: Error | null): void {
    if (req.type === NbdCommand.WRITE) this.exp.leaveWrite(req);
    if (err) {
      req.forgetData();
      this.failed(req, nbdErrorOf(err), err);
    } else this.sendReply(req, NbdError.OK, req.type === NbdCommand.READ ? req.data : null);
  }

  private failed(req: NbdRequest, code: number, err: Error): void {
    this.log.warn(`nbd ${this.peer}: command ${req.type} at ${req.offset}+${req.length} failed (${NBD_ERROR_NAMES[code]}): ${err.message}`);
    this.sendReply(req, code, null);
  }

  /** The simple reply (with the data of a successful READ); the request finishes once the kernel has it. */
  private sendReply(req: NbdRequest, error: number, data: Buffer | null): void {
    if (this.closed || this.socket.destroyed) {
      this.finish(req);
      return;
    }
    setBE32(req.reply, SIMPLE_REPLY.error, error);
    // Replies of one turn leave in one writev rather than a syscall each.
    this.batch!.hold();
    if (error === NbdError.OK && data === req.data && data.length > 0) {
      // A READ run on the request's own buffer: header and data leave as one buffer.
      this.socket.write(req.replyFrame(), req.onWritten);
    } else if (error === NbdError.OK && data && data.length > 0) {
      this.socket.write(req.reply);
      this.socket.write(data, req.onWritten);
    } else {
      this.socket.write(req.reply, req.onWritten);
    }
    if (this.limits.sendTimeoutMs > 0 && this.socket.writableLength > 0 && !this.stallArmed) {
      this.stallArmed = true;
      // One timer per connection, re-armed (refresh) rather than made per batch of replies.
      if (this.stallTimer === null) {
        this.stallTimer = setTimeout(this.onStalled, this.limits.sendTimeoutMs);
        this.stallTimer.unref();
      } else this.stallTimer.refresh();
    }
  }

  /** A reply reached the kernel (NbdRequest.onWritten). */
  replySent(req: NbdRequest): void {
    if (!req.live) return;
    this.finish(req);
    this.replyMoved();
    if (this.waiting || this.socket.isPaused()) this.pump();
  }

  /** The request's budget comes back and the request is free for the next header. */
  private finish(req: NbdRequest): void {
    if (!req.live) return;
    req.live = false;
    this.inFlight--;
    this.inFlightBytes -= req.charge;
    this.shared.budget.give(req.charge);
    req.recycle();
    if (!this.closed) this.freeRequests.push(req);
    else req.forgetData(); // its kept bytes go back to the bridge's share
    if (this.inFlight === 0) this.wakeIdle();
  }

  /** A reply reached the kernel: the client is reading. Restart the stall clock, or stop it when all is out. */
  private replyMoved(): void {
    if (!this.stallArmed) return;
    // All out: disarmed, the timer left to run out (onStalled then does nothing).
    if (!this.closed && this.socket.writableLength > 0) this.stallTimer!.refresh();
    else this.stallArmed = false;
  }

  private stopStallTimer(): void {
    if (this.stallTimer) clearTimeout(this.stallTimer);
    this.stallTimer = null;
    this.stallArmed = false;
  }

  /**
   * A client that stopped reading its replies holds their bytes in the bridge-wide budget,
   * which others wait for: after the send timeout without progress it is cut off, and what it
   * held comes back (as the target does with initiators that stop reading completions).
   */
  private readonly onStalled = (): void => {
    if (!this.stallArmed) return;
    this.stallArmed = false;
    if (this.closed || this.socket.writableLength === 0) return;
    this.drop(`${this.socket.writableLength} bytes of replies unread for ${this.limits.sendTimeoutMs} ms`);
  };

  private wakeIdle(): void {
    this.idleSignal.wake();
  }

  /** Resolves when no request is in flight (or the socket closed). */
  idle(): Promise<void> {
    if (this.inFlight === 0 || this.closed) return Promise.resolve();
    return this.idleSignal.wait();
  }

  /**
   * Server shutdown: options still in haggling and new requests get ESHUTDOWN-type answers;
   * in-flight requests finish. The caller flushes the disk, then calls close().
   */
  beginShutdown(): void {
    this.shuttingDown = true;
  }

  close(): void {
    this.phase = 'done';
    if (this.closed) return;
    this.socket.end();
    // A client that does not read what is left gets cut off rather than holding shutdown up.
    setTimeout(() => this.socket.destroy(), 2000).unref();
  }
}
