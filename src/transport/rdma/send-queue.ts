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

/**
 * Posts chains of send work requests (RDMA READs, or WRITEs then a SEND) without overrunning
 * the send queue. Only the last request of a chain is signaled and every request of the chain
 * carries the chain's id, so one completion frees the whole chain and an error on any member
 * settles the chain. Chains that do not fit wait, in order.
 */
export class SendQueue {
  private free: number;
  private nextId = 1;
  private readonly inFlight = new Map<number, Chain>();
  private readonly waiting: Array<{ wrs: SendWr[]; chain: Chain }> = [];
  private broken: Error | null = null;

  constructor(
    private readonly qp: QueuePair,
    readonly depth: number,
    private readonly binding: NativeBinding,
  ) {
    this.free = depth;
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
      else this.waiting.push({ wrs, chain });
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
    for (const c of this.inFlight.values()) c.reject(err);
    this.inFlight.clear();
    for (const w of this.waiting.splice(0)) w.chain.reject(err);
  }
}
