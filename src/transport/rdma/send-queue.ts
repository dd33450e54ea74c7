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

interface Chain {
  readonly slots: number;
  readonly what: string;
  resolve(): void;
  reject(err: Error): void;
}

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
  /** Told once when either limit fails the queue (the owner closes the connection). */
  readonly onStall?: (err: SendStalledError) => void;
}

/**
 * Posts chains of send work requests (RDMA READs, or WRITEs then a SEND) without overrunning
 * the send queue. Only the last request of a chain is signaled and every request of the chain
 * carries the chain's id, so one completion frees the whole chain and an error on any member
 * settles the chain. Chains that do not fit wait, in order, up to a bounded backlog.
 */
export class SendQueue {
  private free: number;
  private nextId = 1;
  private readonly inFlight = new Map<number, Chain>();
  private readonly waiting: Array<{ wrs: SendWr[]; chain: Chain }> = [];
  private broken: Error | null = null;
  readonly maxBacklog: number;
  /** Send completions seen (cumulative); the stall watchdog compares it between its ticks. */
  private completions = 0;
  private watchdog: NodeJS.Timeout | null = null;

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
        this.stall(new SendStalledError(`no send completion for ${timeoutMs} ms with ${this.inFlight.size} chains in flight and ${this.waiting.length} waiting (the peer stopped receiving)`));
      }
    }, Math.max(20, Math.floor(timeoutMs / 4)));
    this.watchdog.unref();
  }

  private stall(err: SendStalledError): void {
    if (this.broken) return;
    this.fail(err);
    this.limits.onStall?.(err);
  }

  get backlog(): number {
    return this.waiting.length;
  }

  get idle(): boolean {
    return this.inFlight.size === 0 && this.waiting.length === 0;
  }

  post(wrs: SendWr[], what: string): Promise<void> {
    if (this.broken) return Promise.reject(this.broken);
    if (wrs.length > this.depth) return Promise.reject(new Error(`${what}: ${wrs.length} work requests exceed the send queue depth ${this.depth}`));
    return new Promise((resolve, reject) => {
      const chain: Chain = { slots: wrs.length, what, resolve, reject };
      if (this.waiting.length === 0 && this.free >= wrs.length) this.start(wrs, chain);
      else if (this.waiting.length < this.maxBacklog) this.waiting.push({ wrs, chain });
      else {
        const err = new SendStalledError(`${what}: ${this.waiting.length} chains already wait for the send queue (the peer is not taking completions)`);
        reject(err);
        this.stall(err);
      }
    });
  }

  private start(wrs: SendWr[], chain: Chain): void {
    const id = this.nextId;
    this.nextId = this.nextId >= 0x7fff_ffff ? 1 : this.nextId + 1;
    for (let i = 0; i < wrs.length; i++) {
      const wr = wrs[i]!;
      wr.wrId = id;
      wr.signaled = i === wrs.length - 1;
    }
    try {
      this.qp.postSend(wrs);
    } catch (err) {
      chain.reject(err as Error);
      return;
    }
    this.free -= chain.slots;
    this.inFlight.set(id, chain);
  }

  /** A send-side completion; returns false if it settles nothing (a late flush of a settled chain). */
  complete(wrId: number, status: number): boolean {
    const chain = this.inFlight.get(wrId);
    if (!chain) return false;
    this.inFlight.delete(wrId);
    this.free += chain.slots;
    this.completions++;
    if (status === 0) chain.resolve();
    else chain.reject(new RdmaWorkError(status, this.binding.wcStatusName(status), chain.what));
    while (!this.broken && this.waiting.length > 0 && this.free >= this.waiting[0]!.chain.slots) {
      const next = this.waiting.shift()!;
      this.start(next.wrs, next.chain);
    }
    return true;
  }

  /** The QP is gone or in error: everything still queued or in flight fails with `err`. */
  fail(err: Error): void {
    if (!this.broken) this.broken = err;
    if (this.watchdog) clearInterval(this.watchdog);
    this.watchdog = null;
    for (const c of this.inFlight.values()) c.reject(err);
    this.inFlight.clear();
    for (const w of this.waiting.splice(0)) w.chain.reject(err);
  }
}
