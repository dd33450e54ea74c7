import type { Socket } from 'node:net';
import { quotePeerString } from '../util/escape.js';
import type { Logger } from '../util/log.js';
import type { BridgeBudget, BudgetWaiter } from './bridge-budget.js';
import { NbdCommandError, type NbdExport } from './nbd-export.js';
import {
  CLIENT_FLAGS_SIZE,
  NBD_ERROR_NAMES,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_IHAVEOPT,
  NBD_REQUEST_MAGIC,
  NbdCommand,
  NbdError,
  NbdInfo,
  NbdOption,
  NbdReply,
  OPTION_HEADER_SIZE,
  REQUEST_HEADER_SIZE,
  decodeInfoRequest,
  decodeOptionHeader,
  decodeRequestHeader,
  encodeExportNameReply,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeOptionReply,
  encodeServerGreeting,
  encodeServerReplyData,
  encodeSimpleReply,
  type RequestHeader,
} from './nbd-protocol.js';
import type { NbdTls } from './nbd-tls.js';

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
/** Stop reading while this much output waits in the socket (a client that does not read). */
const OUTPUT_HIGH_WATER = 1024 * 1024;

/** 'tls': NBD_OPT_STARTTLS acknowledged, the TLS handshake runs; nothing is parsed meanwhile. */
type Phase = 'client-flags' | 'option' | 'tls' | 'request' | 'payload' | 'skip' | 'done';

/**
 * One NBD request in flight: its header, its payload, its share of the connection's budget,
 * and how it is answered. Owned by its connection from admission until its reply has been
 * handed to the kernel.
 */
class NbdRequest {
  payload: Buffer | null = null;
  /** Payload bytes received so far (WRITE). */
  filled = 0;

  constructor(
    private readonly conn: NbdConnection,
    readonly header: RequestHeader,
    /** Bytes of the budget held: read data or write payload. */
    readonly charge: number,
    /** Set when the request was refused before execution. */
    readonly refusal: { code: number; why: string } | null,
  ) {}

  get offset(): number {
    return Number(this.header.offset);
  }

  /** Send the simple reply (with the data of a successful READ); the budget is returned once the kernel has it. */
  complete(error: number, data: Buffer | null): void {
    this.conn.sendReply(this, error, error === NbdError.OK ? data : null);
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
  private readonly chunks: Buffer[] = [];
  private buffered = 0;
  private noZeroes = false;
  private strictAlignment = false;
  private option: { option: number; length: number } | null = null;
  private skipRemaining = 0;
  private afterSkip: (() => void) | null = null;
  private receiving: NbdRequest | null = null;
  /** A parsed request header waiting for room in the budget. */
  private waiting: RequestHeader | null = null;
  private readonly inFlight = new Set<NbdRequest>();
  private inFlightBytes = 0;
  private shuttingDown = false;
  private corked = false;
  private closed = false;
  private idleWaiters: Array<() => void> = [];
  readonly closedPromise: Promise<void>;

  private readonly onData = (d: Buffer): void => {
    if (this.phase === 'done' || this.phase === 'tls') return; // after DISC or ABORT nothing more is read
    this.chunks.push(d);
    this.buffered += d.length;
    this.pump();
  };
  private readonly onDrain = (): void => this.pump();

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
    this.attach(raw);
    raw.on('close', () => {
      this.closed = true;
      this.phase = 'done';
      this.chunks.length = 0;
      this.buffered = 0;
      this.stopStallTimer();
      this.shared.budget.leave(this);
      // A WRITE whose payload never arrived in full will not run: its bytes go back now (else a
      // client could leak the bridge's budget away, a header at a time).
      const partial = this.receiving;
      if (partial) {
        this.receiving = null;
        partial.payload = null;
        this.inFlight.delete(partial);
        this.inFlightBytes -= partial.charge;
        this.shared.budget.give(partial.charge);
      }
      this.wakeIdle();
    });
    raw.write(encodeServerGreeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES));
  }

  private attach(s: Socket): void {
    s.on('data', this.onData);
    s.on('drain', this.onDrain);
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
    return this.inFlight.size;
  }

  /** Hard disconnect (of the TLS socket too, if any), with a reason in the log. */
  drop(why: string): void {
    if (this.closed) return;
    this.log.warn(`nbd ${this.peer}: ${why}; disconnecting`);
    this.phase = 'done';
    this.socket.destroy();
  }

  /** Bytes available in the input queue, joined; null if fewer than n have arrived. */
  private take(n: number): Buffer | null {
    if (this.buffered < n) return null;
    if (n === 0) return Buffer.alloc(0);
    let out: Buffer;
    if (this.chunks[0]!.length >= n) {
      const first = this.chunks[0]!;
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let at = 0;
      while (at < n) {
        const c = this.chunks[0]!;
        const k = Math.min(c.length, n - at);
        c.copy(out, at, 0, k);
        at += k;
        if (k === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(k);
      }
    }
    this.buffered -= n;
    return out;
  }

  /** Move up to `max` queued input bytes into `into` at `at` (or drop them when into is null). */
  private drain(into: Buffer | null, at: number, max: number): number {
    let moved = 0;
    while (moved < max && this.chunks.length > 0) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length, max - moved);
      if (into) c.copy(into, at + moved, 0, k);
      moved += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    this.buffered -= moved;
    return moved;
  }

  /** Parse and act on everything that has arrived, as far as the limits allow. */
  private pump(): void {
    let progress = true;
    while (progress && !this.closed && this.phase !== 'done') {
      if (this.socket.writableLength > OUTPUT_HIGH_WATER) {
        this.socket.pause(); // 'drain' pumps again
        // Not looking at the budget until then: let whoever waits behind go first.
        this.shared.budget.leave(this);
        return;
      }
      try {
        progress = this.step();
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
        const flags = b.readUInt32BE(0);
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
        const want = req.header.length - req.filled;
        req.filled += this.drain(req.payload, req.filled, want);
        if (req.filled < req.header.length) return false;
        this.receiving = null;
        this.phase = 'request';
        this.run(req);
        return true;
      }
      case 'skip': {
        this.skipRemaining -= this.drain(null, 0, this.skipRemaining);
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
    if (this.buffered > 0) {
      this.drop('data after NBD_OPT_STARTTLS before its reply');
      return;
    }
    const raw = this.socket;
    this.phase = 'tls';
    // What arrives from here (the ClientHello) stays in the socket's read buffer for TLS.
    raw.pause();
    raw.off('data', this.onData);
    raw.off('drain', this.onDrain);
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
    this.phase = 'request';
    this.log.info(`nbd ${this.peer}: export ${quotePeerString(name || this.exp.name)} in use${strictAlignment ? ' (block sizes agreed)' : ''}`);
  }

  // ---- transmission ----

  private stepRequest(): boolean {
    let header = this.waiting;
    if (!header) {
      const b = this.take(REQUEST_HEADER_SIZE);
      if (!b) return false;
      header = decodeRequestHeader(b);
      if (header.magic !== NBD_REQUEST_MAGIC) {
        this.drop(`bad request magic 0x${header.magic.toString(16)}`);
        return false;
      }
      if (header.type === NbdCommand.DISC) {
        this.phase = 'done';
        this.log.info(`nbd ${this.peer}: disconnect requested`);
        void this.idle().then(() => this.socket.end());
        return false;
      }
    }
    const isWrite = header.type === NbdCommand.WRITE;
    const refusal = this.shuttingDown
      ? { code: NbdError.ESHUTDOWN, why: 'server shutting down' }
      : this.exp.validate(header.type, header.flags, header.offset, header.length, this.strictAlignment);
    // Refused requests hold no payload budget: a refused write's payload is skipped as it streams in.
    const charge = refusal ? 0 : header.type === NbdCommand.READ || isWrite ? header.length : 0;
    // This connection's own limits first (its replies free them), then the bridge's budget
    // (anyone's replies free it; tryTake queues this connection for it).
    if (
      this.inFlight.size >= this.limits.maxRequests ||
      (this.inFlight.size > 0 && this.inFlightBytes + charge > this.limits.maxBytes) ||
      !this.shared.budget.tryTake(this, charge)
    ) {
      this.waiting = header;
      return false;
    }
    this.waiting = null;
    const req = new NbdRequest(this, header, charge, refusal);
    this.inFlight.add(req);
    this.inFlightBytes += charge;
    if (refusal) {
      this.log.debug(`nbd ${this.peer}: command ${header.type} refused with ${NBD_ERROR_NAMES[refusal.code]}: ${refusal.why}`);
      if (isWrite && header.length > 0) this.skip(header.length, null);
      req.complete(refusal.code, null);
      return true;
    }
    if (isWrite && header.length > 0) {
      req.payload = Buffer.allocUnsafe(header.length);
      this.receiving = req;
      this.phase = 'payload';
      return true;
    }
    this.run(req);
    return true;
  }

  private run(req: NbdRequest): void {
    const { type, flags, length } = req.header;
    this.exp.execute(type, flags, req.offset, length, req.payload).then(
      (data) => req.complete(NbdError.OK, data),
      (err: unknown) => {
        const code = err instanceof NbdCommandError ? err.code : NbdError.EIO;
        this.log.warn(`nbd ${this.peer}: command ${type} at ${req.offset}+${length} failed (${NBD_ERROR_NAMES[code]}): ${(err as Error).message}`);
        req.complete(code, null);
      },
    );
  }

  /** Called by NbdRequest.complete. */
  sendReply(req: NbdRequest, error: number, data: Buffer | null): void {
    req.payload = null;
    const finished = () => {
      if (!this.inFlight.delete(req)) return;
      this.inFlightBytes -= req.charge;
      this.shared.budget.give(req.charge);
      this.replyMoved();
      if (this.inFlight.size === 0) this.wakeIdle();
      if (this.waiting || this.socket.isPaused()) this.pump();
    };
    if (this.closed || this.socket.destroyed) {
      finished();
      return;
    }
    // Replies completed in the same tick leave in one writev rather than a syscall each.
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(() => {
        this.corked = false;
        this.socket.uncork();
      });
    }
    const header = encodeSimpleReply(error, req.header.cookie);
    if (data && data.length > 0) {
      this.socket.write(header);
      this.socket.write(data, () => finished());
    } else {
      this.socket.write(header, () => finished());
    }
    if (this.limits.sendTimeoutMs > 0 && this.socket.writableLength > 0 && this.stallTimer === null) {
      this.stallTimer = setTimeout(() => this.onStalled(), this.limits.sendTimeoutMs);
      this.stallTimer.unref();
    }
  }

  /** A reply reached the kernel: the client is reading. Restart the stall clock, or stop it when all is out. */
  private replyMoved(): void {
    if (!this.stallTimer) return;
    if (!this.closed && this.socket.writableLength > 0) this.stallTimer.refresh();
    else this.stopStallTimer();
  }

  private stopStallTimer(): void {
    if (this.stallTimer) clearTimeout(this.stallTimer);
    this.stallTimer = null;
  }

  /**
   * A client that stopped reading its replies holds their bytes in the bridge-wide budget,
   * which others wait for: after the send timeout without progress it is cut off, and what it
   * held comes back (as the target does with initiators that stop reading completions).
   */
  private onStalled(): void {
    this.stallTimer = null;
    if (this.closed || this.socket.writableLength === 0) return;
    this.drop(`${this.socket.writableLength} bytes of replies unread for ${this.limits.sendTimeoutMs} ms`);
  }

  private wakeIdle(): void {
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }

  /** Resolves when no request is in flight (or the socket closed). */
  idle(): Promise<void> {
    if (this.inFlight.size === 0 || this.closed) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
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
