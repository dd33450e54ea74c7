import type { MemoryRegion, MemoryWindow, NativeBinding, QueuePair, SendWr } from './native-binding.js';
import { WrOpcode } from './native-binding.js';
import { WaiterQueue } from '../../util/waiter-queue.js';
import { SlotTable } from '../../util/slot-table.js';

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

/** Scatter-gather entries a staged work request carries at most (kStagedSge in native/queue_pair.cc). */
export const STAGED_SGE = 2;
/** 32-bit words per staged work request (kWrWords in native/queue_pair.cc, which lays them out). */
export const WR_WORDS = 8 + 3 * STAGED_SGE;

/**
 * The flat boundary to the addon's postSend: work requests written as numbers into one
 * Uint32Array per queue (the layout is described in native/queue_pair.cc), the regions and
 * windows they name as indexes into `objects`, which is rebuilt for every call so that it
 * keeps nothing alive. Staging allocates nothing.
 */
export class WorkRequestStaging {
  readonly words = new Uint32Array(MAX_WRS_PER_POST * WR_WORDS);
  /**
   * The first `objectCount` entries are this call's; the rest are null. Cleared in place, not
   * by `length = 0`, which would drop the array's storage and make the next call allocate it.
   */
  readonly objects: Array<MemoryRegion | MemoryWindow | null> = [];
  private objectCount = 0;
  count = 0;

  reset(): void {
    this.count = 0;
    const objects = this.objects;
    for (let i = 0; i < this.objectCount; i++) objects[i] = null;
    this.objectCount = 0;
  }

  private indexOf(o: MemoryRegion | MemoryWindow): number {
    const objects = this.objects;
    const n = this.objectCount;
    for (let i = 0; i < n; i++) if (objects[i] === o) return i;
    objects[n] = o;
    return this.objectCount++;
  }

  /** Append `wr` (throws RangeError for one the layout cannot carry, before anything is posted). */
  add(wr: SendWr): void {
    if (this.count >= MAX_WRS_PER_POST) throw new RangeError(`more than ${MAX_WRS_PER_POST} work requests in one post`);
    const w = this.words;
    const at = this.count * WR_WORDS;
    const sg = wr.sg;
    const nsge = sg.length / 3;
    if (nsge > STAGED_SGE || !Number.isInteger(nsge)) throw new RangeError(`a work request takes at most ${STAGED_SGE} (region, offset, length) triples, not ${sg.length} values`);
    w[at] = wr.wrId;
    w[at + 1] = wr.opcode;
    w[at + 2] = wr.signaled ? 1 : 0;
    w[at + 3] = nsge;
    w[at + 4] = (wr.opcode === WrOpcode.BindWindow ? wr.access : wr.rkey) ?? 0;
    w[at + 5] = wr.remoteAddrLow ?? 0;
    w[at + 6] = wr.remoteAddrHigh ?? 0;
    w[at + 7] = wr.window ? this.indexOf(wr.window) : 0;
    for (let j = 0; j < nsge; j++) {
      const offset = sg[3 * j + 1] as number;
      const length = sg[3 * j + 2] as number;
      // A word holds 32 bits: larger values would wrap into another place of the region.
      if (!(offset >= 0 && offset <= 0xffff_ffff && length >= 0 && length <= 0xffff_ffff)) throw new RangeError(`scatter-gather entry (${offset}, ${length}) does not fit the staging words`);
      w[at + 8 + 3 * j] = this.indexOf(sg[3 * j] as MemoryRegion);
      w[at + 9 + 3 * j] = offset;
      w[at + 10 + 3 * j] = length;
    }
    this.count++;
  }

  /** Post what is staged as one list. */
  post(qp: QueuePair): void {
    qp.postSend(this.words, this.count, this.objects);
  }
}

/** Schedules the end-of-turn post (see accept). */
const SETTLED = Promise.resolve();

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
 * list of work requests by postPending(), from a microtask armed by the first pending chain or
 * explicitly by the owner (RcConnection, after a burst of completions). Chains reach the QP in
 * the order post() was called, so a chain's WRITEs still precede its SEND, and binds their
 * command's SEND.
 */
export class SendQueue {
  /** Send queue entries not taken by pending or in-flight chains. */
  private free: number;
  /**
   * Chains posted and not yet completed, by id: a chain's id is taken here when it is posted
   * and given back when it settles, so ids stay unique among the chains in flight and no map
   * entry is made per chain. Every chain in flight holds at least one send queue entry, so
   * `depth` ids (and id 0, taken once and never given back: no chain's wrId is 0) always do;
   * the id freed last is taken next (any id does).
   */
  private readonly byId: SlotTable<SendChain>;
  /** Accepted (room taken), not yet posted: leaves at the next postPending(). */
  private readonly pending: SendChain[] = [];
  /** No room yet: accepted in order as completions free entries. */
  private readonly waiting: WaiterQueue<SendChain>;
  /** The work requests of one postSend call, as the addon reads them. */
  private readonly staging = new WorkRequestStaging();
  private postArmed = false;
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
    this.byId = new SlotTable<SendChain>(depth + 1, 'last-freed');
    this.byId.take();
    this.maxBacklog = limits.maxBacklog ?? DEFAULT_MAX_BACKLOG;
    this.waiting = new WaiterQueue(this.maxBacklog);
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
        this.failOnOwn(new SendStalledError(`no send completion for ${timeoutMs} ms with ${this.inFlight + this.pending.length} chains in flight and ${this.waiting.length} waiting (the peer stopped receiving)`));
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
    return this.inFlight === 0 && this.pending.length === 0 && this.waiting.length === 0;
  }

  /** Chains posted and not yet completed (id 0 is no chain's). */
  private get inFlight(): number {
    return this.byId.inUse - 1;
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
    // Nothing to post, nothing that would complete: done now.
    if (n === 0) return chain.done(null);
    if (n > this.depth) return chain.done(new Error(`${chain.what}: ${n} work requests exceed the send queue depth ${this.depth}`));
    if (n > MAX_WRS_PER_POST) return chain.done(new Error(`${chain.what}: ${n} work requests exceed the ${MAX_WRS_PER_POST} one post can carry`));
    if (this.waiting.length === 0 && this.free >= n) this.accept(chain);
    else if (!this.waiting.push(chain)) {
      const err = new SendStalledError(`${chain.what}: ${this.waiting.length} chains already wait for the send queue (the peer is not taking completions)`);
      chain.done(err);
      this.failOnOwn(err);
    }
  }

  /** Room is taken now, so pending chains never exceed the depth; the post is at the turn's end. */
  private accept(chain: SendChain): void {
    this.free -= chain.wrs.length;
    this.pending.push(chain);
    if (!this.postArmed) {
      this.postArmed = true;
      // A reaction on a settled promise: queueMicrotask would make an AsyncResource and a bound
      // function for every post.
      SETTLED.then(this.postFromMicrotask);
    }
  }

  private readonly postFromMicrotask = (): void => {
    this.postArmed = false;
    this.postPending();
  };

  /**
   * Posts every pending chain, in order, in as few postSend calls as MAX_WRS_PER_POST allows
   * (each call whole chains). A refused call rejects its chains and fails the queue.
   */
  postPending(): void {
    const pending = this.pending;
    while (!this.broken && pending.length > 0) {
      let count = 0;
      let wrCount = 0;
      // Whole chains, up to what one call carries.
      for (const c of pending) {
        if (wrCount + c.wrs.length > MAX_WRS_PER_POST) break;
        wrCount += c.wrs.length;
        count++;
      }
      const staging = this.staging;
      staging.reset();
      let error: Error | null = null;
      for (let k = 0; k < count; k++) {
        const chain = pending[k]!;
        // Not in flight until the post succeeds: the id holds no chain before then.
        chain.id = this.byId.take();
        // Cannot happen while every chain holds a send queue entry (depth + 1 ids); if it does,
        // the post fails cleanly rather than post under an id no completion can find.
        if (chain.id < 0) error ??= new Error(`send queue: no work request id free (${this.byId.inUse - 1} chains in flight)`);
        const last = chain.wrs.length - 1;
        for (let i = 0; i <= last; i++) {
          const wr = chain.wrs[i]!;
          wr.wrId = chain.id;
          wr.signaled = i === last;
          if (error === null) {
            try {
              staging.add(wr);
            } catch (err) {
              error = err as Error;
            }
          }
        }
      }
      try {
        if (error) throw error;
        staging.post(this.qp);
      } catch (err) {
        const e = err instanceof Error ? err : new Error(String(err));
        // None of this call's chains is in flight: their ids go back, each fails with the error.
        const refused = pending.splice(0, count);
        for (const chain of refused) if (chain.id > 0) this.byId.release(chain.id);
        for (const chain of refused) chain.done(e);
        this.failOnOwn(e);
        return;
      }
      for (let k = 0; k < count; k++) {
        const chain = pending[k]!;
        this.byId.set(chain.id, chain);
      }
      this.posted.calls++;
      this.posted.chains += count;
      // Emptied by pop, not `length = 0` (which would drop the storage the next push reallocates).
      if (count === pending.length) while (pending.length > 0) pending.pop();
      else pending.splice(0, count);
    }
    // Nothing kept alive between calls.
    this.staging.reset();
  }

  /** A send-side completion; returns false if it settles nothing (a late WC_WR_FLUSH_ERR of a settled chain). */
  complete(wrId: number, status: number): boolean {
    const chain = this.byId.get(wrId);
    if (!chain) return false;
    this.byId.release(wrId);
    this.free += chain.wrs.length;
    this.completions++;
    chain.done(status === 0 ? null : new RdmaWorkError(status, this.binding.wcStatusName(status), chain.what));
    while (!this.broken && this.waiting.length > 0 && this.free >= this.waiting.peek()!.wrs.length) this.accept(this.waiting.shift()!);
    return true;
  }

  /** The QP is gone or in error: everything still queued, pending or in flight fails with `err`. */
  fail(err: Error): void {
    if (!this.broken) this.broken = err;
    if (this.watchdog) clearInterval(this.watchdog);
    this.watchdog = null;
    // Ids are given back, but no chain takes one again once the queue has failed: a late
    // flushed (WC_WR_FLUSH_ERR) completion of a failed chain finds its id free and settles nothing.
    const inFlight: SendChain[] = [];
    for (let id = this.byId.nextTaken(0); id >= 0; id = this.byId.nextTaken(id)) {
      const c = this.byId.release(id);
      if (c) inFlight.push(c);
    }
    const pending = this.pending.splice(0);
    const waiting = this.waiting.drain();
    for (const c of inFlight) c.done(err);
    for (const c of pending) c.done(err);
    for (const c of waiting) c.done(err);
  }
}
