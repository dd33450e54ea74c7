import type { NativeBinding, QueuePair, SendWr } from './native-binding.js';

/** A work request the NIC completed with an error status (ibv_wc_status_str in the message). */
export class RdmaWorkError extends Error {
  override name = 'RdmaWorkError';
  constructor(
    readonly status: number,
    readonly statusName: string,
    what: string,
  ) {
    super(`${what}: ${statusName} (wc status ${status})`);
  }
}

/** Receive work requests carry this bit in their id; send chains never do. */
export const RECV_WR_FLAG = 0x8000_0000;
/** IBV_WC_WR_FLUSH_ERR: the QP went to the error state and dropped this request. */
export const WC_WR_FLUSH_ERR = 5;

/**
 * One chain of work requests, from postChain() until its signaled completion (or the queue's
 * failure) settles it. An owner may keep one per request slot, with its work requests, and post
 * it again once it has settled: posting a chain allocates nothing.
 */
export interface SendChain {
  /** The work requests, in order; the queue sets their wrId and signaled flags when posting. */
  readonly wrs: SendWr[];
  /** What the chain does, for the error that fails it. */
  readonly what: string;
  /** Given by the queue while posted: the wrId every request of the chain carries. */
  id: number;
  /** Runs once per post: null when the chain completed, else why it failed (possibly during postChain). */
  done(err: Error | null): void;
}

/** The chain post() makes: a promise's two ends. */
class PromisedChain implements SendChain {
  id = 0;
  constructor(
    readonly wrs: SendWr[],
    readonly what: string,
    private readonly resolve: () => void,
    private readonly reject: (err: Error) => void,
  ) {}

  done(err: Error | null): void {
    if (err) this.reject(err);
    else this.resolve();
  }
}

/**
 * Work requests one QueuePair.postSend call takes at most (kMaxChain in native/queue_pair.cc):
 * a batch larger than this is split into several calls, each of whole chains.
 */
export const MAX_WRS_PER_POST = 64;

/** Chains allowed to wait for room in the send queue, unless the owner says otherwise. */
export const DEFAULT_MAX_BACKLOG = 1024;

/** Raised when the peer stops taking what we send: the backlog overflowed or nothing moved. */
export class SendStalledError extends Error {
  override name = 'SendStalledError';
}

export interface SendQueueLimits {
  /** Chains waiting for room at most; one more means the peer is not keeping up: the queue fails. */
  readonly maxBacklog?: number;
  /**
   * Fail the queue when work is outstanding and no send completion arrived for this long
   * (a peer that stopped posting receives, whatever RNR retry count it gave our QP); 0: never.
   */
  readonly stallTimeoutMs?: number;
  /**
   * Told once when the queue fails on its own: either limit above (a SendStalledError), or a
   * postSend the addon or the verbs refused (part of that call may have reached the QP, so what
   * the queue accounts no longer matches it). The owner closes the connection.
   */
  readonly onFail?: (err: Error) => void;
}

/**
 * Posts chains of send work requests (RDMA READs, or WRITEs then a SEND) without overrunning
 * the send queue. Only the last request of a chain is signaled and every request of the chain
 * carries the chain's id, so one completion frees the whole chain and an error on any member
 * settles the chain. Chains that do not fit wait, in order, up to a bounded backlog.
 *
 * Every ibv_post_send is a system call on soft-RoCE, so chains started in the same JS turn
 * leave together: a chain with room joins a pending list, and the list is posted as one linked
 * list of work requests by flush(), from a microtask armed by the first pending chain or
 * explicitly by the owner (RcConnection, after a burst of completions). Chains reach the QP in
 * the order post() was called, so a chain's WRITEs still precede its SEND, and binds their
 * command's SEND.
 */
export class SendQueue {
  /** Send queue entries not taken by pending or in-flight chains. */
  private free: number;
  /**
   * Chains posted and not yet completed, by id: a chain's id is its index here (0 is never
   * used), taken from `freeIds` when it is posted and given back when it settles, so ids stay
   * unique among the chains in flight and no map entry is made per chain.
   */
  private readonly byId: Array<SendChain | null> = [null];
  private readonly freeIds: number[] = [];
  private inFlightCount = 0;
  /** Accepted (room taken), not yet posted: leaves at the next flush(). */
  private readonly pending: SendChain[] = [];
  /** No room yet: accepted in order as completions free entries. */
  private readonly waiting: SendChain[] = [];
  /** The work requests of one postSend call, gathered from several chains (reused). */
  private readonly batchWrs: SendWr[] = [];
  private flushArmed = false;
  private broken: Error | null = null;
  readonly maxBacklog: number;
  /** Send completions seen (cumulative); the stall watchdog compares it between its ticks. */
  private completions = 0;
  private watchdog: NodeJS.Timeout | null = null;
  /** postSend calls made and chains they carried (cumulative): how well posts are batched. */
  readonly posted = { calls: 0, chains: 0 };

  constructor(
    private readonly qp: QueuePair,
    readonly depth: number,
    private readonly binding: NativeBinding,
    private readonly limits: SendQueueLimits = {},
  ) {
    this.free = depth;
    this.maxBacklog = limits.maxBacklog ?? DEFAULT_MAX_BACKLOG;
    const timeout = limits.stallTimeoutMs ?? 0;
    if (timeout > 0) this.startWatchdog(timeout);
  }

  /** One cheap timer per queue: progress is a counter bumped by complete(), read here. */
  private startWatchdog(timeoutMs: number): void {
    let seen = this.completions;
    let since = Date.now();
    this.watchdog = setInterval(() => {
      const now = Date.now();
      if (this.idle || this.completions !== seen) {
        seen = this.completions;
        since = now;
      } else if (now - since >= timeoutMs) {
        this.failOnOwn(new SendStalledError(`no send completion for ${timeoutMs} ms with ${this.inFlightCount + this.pending.length} chains in flight and ${this.waiting.length} waiting (the peer stopped receiving)`));
      }
    }, Math.max(20, Math.floor(timeoutMs / 4)));
    this.watchdog.unref();
  }

  private failOnOwn(err: Error): void {
    if (this.broken) return;
    this.fail(err);
    this.limits.onFail?.(err);
  }

  get backlog(): number {
    return this.waiting.length;
  }

  get idle(): boolean {
    return this.inFlightCount === 0 && this.pending.length === 0 && this.waiting.length === 0;
  }

  /** post() for callers that want a promise (set-up, rare messages): one chain object and promise per call. */
  post(wrs: SendWr[], what: string): Promise<void> {
    return new Promise((resolve, reject) => this.postChain(new PromisedChain(wrs, what, resolve, reject)));
  }

  /**
   * Queue `chain` for posting: its done() runs once it has completed or failed. A chain that
   * cannot be taken (the queue failed, too long, the backlog full) fails before this returns.
   */
  postChain(chain: SendChain): void {
    const n = chain.wrs.length;
    if (this.broken) return chain.done(this.broken);
    if (n > this.depth) return chain.done(new Error(`${chain.what}: ${n} work requests exceed the send queue depth ${this.depth}`));
    if (n > MAX_WRS_PER_POST) return chain.done(new Error(`${chain.what}: ${n} work requests exceed the ${MAX_WRS_PER_POST} one post can carry`));
    if (this.waiting.length === 0 && this.free >= n) this.accept(chain);
    else if (this.waiting.length < this.maxBacklog) this.waiting.push(chain);
    else {
      const err = new SendStalledError(`${chain.what}: ${this.waiting.length} chains already wait for the send queue (the peer is not taking completions)`);
      chain.done(err);
      this.failOnOwn(err);
    }
  }

  /** Room is taken now, so pending chains never exceed the depth; the post is at the turn's end. */
  private accept(chain: SendChain): void {
    this.free -= chain.wrs.length;
    this.pending.push(chain);
    if (!this.flushArmed) {
      this.flushArmed = true;
      queueMicrotask(this.flushFromMicrotask);
    }
  }

  private readonly flushFromMicrotask = (): void => {
    this.flushArmed = false;
    this.flush();
  };

  /**
   * Posts every pending chain, in order, in as few postSend calls as MAX_WRS_PER_POST allows
   * (each call whole chains). A refused call rejects its chains and fails the queue.
   */
  flush(): void {
    const pending = this.pending;
    while (!this.broken && pending.length > 0) {
      let count = 0;
      let wrCount = 0;
      for (const c of pending) {
        if (wrCount + c.wrs.length > MAX_WRS_PER_POST) break;
        wrCount += c.wrs.length;
        count++;
      }
      // One chain goes as it is; several are gathered into the queue's reused list.
      const wrs = count === 1 ? pending[0]!.wrs : this.batchWrs;
      this.batchWrs.length = 0;
      for (let k = 0; k < count; k++) {
        const chain = pending[k]!;
        chain.id = this.freeIds.pop() ?? this.byId.length;
        if (chain.id === this.byId.length) this.byId.push(null);
        const last = chain.wrs.length - 1;
        for (let i = 0; i <= last; i++) {
          const wr = chain.wrs[i]!;
          wr.wrId = chain.id;
          wr.signaled = i === last;
          if (wrs === this.batchWrs) wrs.push(wr);
        }
      }
      try {
        this.qp.postSend(wrs);
      } catch (err) {
        const e = err instanceof Error ? err : new Error(String(err));
        // None of this call's chains is in flight: their ids go back, each fails with the error.
        const refused = pending.splice(0, count);
        for (const chain of refused) this.freeIds.push(chain.id);
        for (const chain of refused) chain.done(e);
        this.failOnOwn(e);
        return;
      }
      for (let k = 0; k < count; k++) {
        const chain = pending[k]!;
        this.byId[chain.id] = chain;
      }
      this.inFlightCount += count;
      this.posted.calls++;
      this.posted.chains += count;
      if (count === pending.length) pending.length = 0;
      else pending.splice(0, count);
    }
    this.batchWrs.length = 0;
  }

  /** A send-side completion; returns false if it settles nothing (a late flush of a settled chain). */
  complete(wrId: number, status: number): boolean {
    const chain = wrId > 0 && wrId < this.byId.length ? this.byId[wrId] : null;
    if (!chain) return false;
    this.byId[wrId] = null;
    this.freeIds.push(wrId);
    this.inFlightCount--;
    this.free += chain.wrs.length;
    this.completions++;
    chain.done(status === 0 ? null : new RdmaWorkError(status, this.binding.wcStatusName(status), chain.what));
    while (!this.broken && this.waiting.length > 0 && this.free >= this.waiting[0]!.wrs.length) this.accept(this.waiting.shift()!);
    return true;
  }

  /** The QP is gone or in error: everything still queued, pending or in flight fails with `err`. */
  fail(err: Error): void {
    if (!this.broken) this.broken = err;
    if (this.watchdog) clearInterval(this.watchdog);
    this.watchdog = null;
    // Ids are not given back: a late flush completion of a failed chain then settles nothing.
    const inFlight: SendChain[] = [];
    for (let id = 1; id < this.byId.length; id++) {
      const c = this.byId[id];
      if (c) inFlight.push(c);
      this.byId[id] = null;
    }
    this.inFlightCount = 0;
    const pending = this.pending.splice(0);
    const waiting = this.waiting.splice(0);
    for (const c of inFlight) c.done(err);
    for (const c of pending) c.done(err);
    for (const c of waiting) c.done(err);
  }
}
