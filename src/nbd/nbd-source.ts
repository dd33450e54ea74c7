import { NBD_LOST, NbdClientConnection, NbdClientError, type NbdAddress, type NbdClientOptions, type NbdDone, type NbdExportInfo } from './nbd-client.js';
import type { ReconnectPolicy } from '../util/reconnect-policy.js';
import type { Logger } from '../util/log.js';
import { WaiterQueue } from '../util/waiter-queue.js';

/**
 * An NBD export as a vof target's storage (issue 20): one or more client connections to the
 * server (several only when it offers NBD_FLAG_CAN_MULTI_CONN), requests queued when every slot
 * is busy, and reconnection when the server goes away.
 *
 * Nothing acknowledged is lost across a reconnect: a request whose answer never came is sent
 * again, in its original order, on the next connection (NBD's reads, writes, trims, zeroing and
 * flushes may all be repeated), so a flush still follows the writes it covers. A server that stays
 * away longer than the loss timeout makes the source 'lost': everything held and everything new
 * fails with -1 (the device answers IOERR and asks for a reset) while reconnection goes on, so a
 * later reset finds the storage again.
 */

export type NbdSourceState = 'connected' | 'reconnecting' | 'lost' | 'closed';

export interface NbdSourceOptions extends Omit<NbdClientOptions, 'maxInFlight'> {
  readonly address: NbdAddress;
  /** Connections wanted; more than one only with CAN_MULTI_CONN. Default 1. */
  readonly connections?: number;
  /** Requests in flight per connection (default 64); more wait in the source's queue. */
  readonly depth?: number;
  readonly reconnect: ReconnectPolicy;
  readonly log: Logger;
  /** Shown in logs: e.g. the URL without credentials. */
  readonly label: string;
}

/** One request of the source, pooled: re-sendable until answered. */
class SourceRequest {
  type = 0;
  flags = 0;
  offset = 0;
  length = 0;
  data: Buffer | null = null;
  done: NbdDone | null = null;
  /** Submission order: re-sent requests go out in it. */
  seq = 0;
  /** Bound once: what a connection calls when it answers (or loses) this request. */
  readonly onAnswer: NbdDone;

  constructor(source: NbdSource) {
    this.onAnswer = (error) => source.answered(this, error);
  }
}

export class NbdSource {
  private readonly live: NbdClientConnection[] = [];
  /**
   * Requests for a connection's free slot, in submission order. Bounded by the caller (the
   * bridge's admitted requests), not here: submit() never refuses for room.
   */
  private readonly waiting = new WaiterQueue<SourceRequest>(Number.POSITIVE_INFINITY);
  private readonly spare: SourceRequest[] = [];
  private nextSeq = 0;
  private next = 0;
  private stateNow: NbdSourceState = 'connected';
  private lossTimer: NodeJS.Timeout | null = null;
  private retryTimer: NodeJS.Timeout | null = null;
  private connecting = 0;
  private readonly wanted: number;
  private readonly stateListeners: ((s: NbdSourceState) => void)[] = [];

  private constructor(
    private readonly options: NbdSourceOptions,
    readonly info: NbdExportInfo,
    first: NbdClientConnection,
  ) {
    this.wanted = info.canMultiConn ? Math.max(1, options.connections ?? 1) : 1;
    this.adopt(first);
  }

  /** Connects (the first connection must work: a source that never came up is an error). */
  static async open(options: NbdSourceOptions): Promise<NbdSource> {
    const first = await NbdClientConnection.connect(options.address, { ...options, maxInFlight: options.depth ?? 64 });
    const source = new NbdSource(options, first.info, first);
    if ((options.connections ?? 1) > 1 && !first.info.canMultiConn) {
      options.log.info(`${options.label}: the server does not offer multi-conn; using one connection`);
    }
    for (let i = 1; i < source.wanted; i++) await source.connectOne();
    return source;
  }

  get state(): NbdSourceState {
    return this.stateNow;
  }

  get connections(): number {
    return this.live.length;
  }

  onState(listener: (s: NbdSourceState) => void): void {
    this.stateListeners.push(listener);
  }

  /**
   * One request; `done` runs once with 0, the server's NBD error, -1 (lost or closed) or -2 (the
   * server broke the protocol answering it). Never
   * throws: without a free slot the request waits in order.
   */
  submit(type: number, flags: number, offset: number, length: number, data: Buffer | null, done: NbdDone): void {
    if (this.stateNow === 'lost' || this.stateNow === 'closed') return done(-1);
    const r = this.spare.pop() ?? new SourceRequest(this);
    r.type = type;
    r.flags = flags;
    r.offset = offset;
    r.length = length;
    r.data = data;
    r.done = done;
    r.seq = this.nextSeq++;
    this.waiting.push(r);
    this.pump();
  }

  async close(): Promise<void> {
    if (this.stateNow === 'closed') return;
    this.setState('closed');
    this.clearTimers();
    await Promise.all(this.live.splice(0).map((c) => c.close()));
    this.failAll();
  }

  /** Called by a request's bound callback. */
  answered(r: SourceRequest, error: number): void {
    // Only a lost answer is sent again: a request the server answered with garbage
    // (NBD_PROTOCOL_ERROR) fails now, or a server that always does so would hold it forever.
    if (error === NBD_LOST && this.stateNow !== 'closed' && this.stateNow !== 'lost' && this.options.reconnect.lossTimeoutMs !== 0) {
      // The connection went away before the answer: send it again, in order, on the next one.
      this.waiting.insertByKey(r, bySeq);
      return;
    }
    const done = r.done!;
    r.done = null;
    r.data = null;
    this.spare.push(r);
    done(error);
    this.pump();
  }

  private pump(): void {
    const n = this.live.length;
    while (this.waiting.length > 0 && n > 0) {
      // The least busy connection with a free slot, starting after the last one used.
      let pick: NbdClientConnection | null = null;
      for (let k = 0; k < n; k++) {
        const c = this.live[(this.next + k) % n]!;
        if (c.available > 0 && (!pick || c.busy < pick.busy)) pick = c;
      }
      if (!pick) return;
      this.next = (this.live.indexOf(pick) + 1) % n;
      const r = this.waiting.shift()!;
      pick.submit(r.type, r.flags, r.offset, r.length, r.data, r.onAnswer);
    }
  }

  private adopt(c: NbdClientConnection): void {
    this.live.push(c);
    c.onClose((err) => this.lostConnection(c, err));
  }

  private lostConnection(c: NbdClientConnection, err: Error | null): void {
    const i = this.live.indexOf(c);
    if (i >= 0) this.live.splice(i, 1);
    if (this.stateNow === 'closed') return;
    const why = err ? err.message : `${c.peer}: the server closed the connection`;
    if (this.options.reconnect.lossTimeoutMs === 0) {
      this.options.log.warn(`${this.options.label}: ${why}; reconnecting is off, so requests fail`);
      if (this.live.length === 0) this.declareLost();
      return;
    }
    this.options.log.warn(`${this.options.label}: ${why}; reconnecting (${this.live.length} of ${this.wanted} connections left)`);
    if (this.live.length === 0 && this.stateNow === 'connected') {
      this.setState('reconnecting');
      const loss = this.options.reconnect.lossTimeoutMs;
      if (loss > 0) {
        this.lossTimer = setTimeout(() => {
          this.lossTimer = null;
          if (this.live.length === 0) this.declareLost();
        }, loss);
        this.lossTimer.unref();
      }
    }
    this.scheduleRetry(0);
    this.pump();
  }

  private declareLost(): void {
    this.options.log.error(`${this.options.label}: the NBD server stayed away; requests fail until it is back and the device is reset`);
    this.setState('lost');
    this.failAll();
  }

  private scheduleRetry(delayMs: number): void {
    if (this.retryTimer || this.stateNow === 'closed') return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      void this.retry();
    }, delayMs);
    this.retryTimer.unref();
  }

  private async retry(): Promise<void> {
    while (this.stateNow !== 'closed' && this.live.length + this.connecting < this.wanted) {
      try {
        await this.connectOne();
      } catch (err) {
        this.options.log.info(`${this.options.label}: reconnect failed: ${(err as Error).message}`);
        return this.scheduleRetry(this.options.reconnect.delayMs);
      }
    }
  }

  private async connectOne(): Promise<void> {
    this.connecting++;
    let c: NbdClientConnection;
    try {
      c = await NbdClientConnection.connect(this.options.address, { ...this.options, maxInFlight: this.options.depth ?? 64 });
    } finally {
      this.connecting--;
    }
    if (this.stateNow === 'closed') {
      c.destroy();
      return;
    }
    if (c.info.size !== this.info.size || c.info.readOnly !== this.info.readOnly) {
      c.destroy();
      throw new NbdClientError(`${c.peer}: the export changed (size ${c.info.size}, was ${this.info.size}); not using it`);
    }
    this.adopt(c);
    if (this.stateNow !== 'connected') {
      this.options.log.info(`${this.options.label}: reconnected`);
      if (this.lossTimer) clearTimeout(this.lossTimer);
      this.lossTimer = null;
      this.setState('connected');
    }
    this.pump();
  }

  private failAll(): void {
    for (const r of this.waiting.drain()) {
      const done = r.done!;
      r.done = null;
      r.data = null;
      done(-1);
    }
  }

  private clearTimers(): void {
    if (this.lossTimer) clearTimeout(this.lossTimer);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.lossTimer = this.retryTimer = null;
  }

  private setState(s: NbdSourceState): void {
    if (this.stateNow === s) return;
    this.stateNow = s;
    for (const l of this.stateListeners) l(s);
  }
}

/** Waiting requests are kept in submission order: a re-sent one goes back in it. */
const bySeq = (r: SourceRequest): number => r.seq;
