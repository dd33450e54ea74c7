import type { CmId, CompletionQueue, MemoryRegion, NativeBinding, ProtectionDomain, QueuePair, SendWr } from './native-binding.js';
import { WrOpcode } from './native-binding.js';
import { RegisteredPool } from './registered-pool.js';
import { RdmaWorkError, RECV_WR_FLAG, SendQueue } from './send-queue.js';

export interface RcConnectionOptions {
  /** Receive buffers posted at all times; a peer that sends more waits (RNR), it is not dropped. */
  readonly recvDepth: number;
  /** Largest message accepted; a longer one is a local length error that ends the connection. */
  readonly recvSize: number;
  readonly sendDepth: number;
  /** Size of the pooled send slots: the usual largest message. */
  readonly sendSize: number;
  /**
   * Largest message sent at all (default sendSize). A rare message between sendSize and this
   * (a Connect answered with a redirect record) gets its own registration, released after it.
   */
  readonly largestSend?: number;
  /** A protection domain shared with other connections (kept by destroy()); default: one of its own. */
  readonly pd?: ProtectionDomain;
}

export interface RcConnectionHandler {
  /** One received message; `message` is valid during the call only. */
  onMessage(message: Buffer): void;
  /** The QP left the working state (first failed completion); called once. */
  onBroken(err: Error): void;
}

/**
 * The verbs half of one Virtio-oF queue on RDMA, shared by target and initiator: one RC QP with
 * one CQ, pre-posted receive buffers reposted as soon as their message is handled, and
 * registered slots for outgoing capsules. Owns the PD, CQ, QP and every registration it makes;
 * destroy() releases them in the order the verbs require.
 */
export class RcConnection {
  readonly pd: ProtectionDomain;
  readonly cq: CompletionQueue;
  readonly qp: QueuePair;
  readonly sendQueue: SendQueue;
  private readonly recvRegion: MemoryRegion;
  private readonly sendSlots: RegisteredPool;
  private readonly extraPools: RegisteredPool[] = [];
  private brokenBy: Error | null = null;
  private destroyed = false;

  constructor(
    private readonly binding: NativeBinding,
    readonly cmId: CmId,
    private readonly options: RcConnectionOptions,
    private readonly handler: RcConnectionHandler,
  ) {
    const { recvDepth, recvSize, sendDepth, sendSize } = options;
    this.pd = options.pd ?? new binding.ProtectionDomain(cmId);
    try {
      this.cq = new binding.CompletionQueue(cmId, recvDepth + sendDepth, (n) => this.onCompletions(n));
      this.qp = cmId.createQp(this.pd, this.cq, {
        maxSendWr: sendDepth,
        maxRecvWr: recvDepth,
        maxSendSge: 1,
        maxRecvSge: 1,
        maxInlineData: 0,
      });
      this.sendQueue = new SendQueue(this.qp, sendDepth, binding);
      // Receive buffers are written by the local NIC only: no remote access.
      this.recvRegion = this.pd.registerMemory(Buffer.allocUnsafeSlow(recvDepth * recvSize), binding.access.LOCAL_WRITE);
      this.sendSlots = new RegisteredPool(this.pd, sendSize, sendDepth, 0);
      for (let i = 0; i < recvDepth; i++) this.postRecv(i);
    } catch (err) {
      this.destroy();
      throw err;
    }
  }

  get broken(): boolean {
    return this.brokenBy !== null;
  }

  /** A pool in this connection's PD, released by destroy(). */
  createPool(chunkSize: number, chunkCount: number, access: number): RegisteredPool {
    const pool = new RegisteredPool(this.pd, chunkSize, chunkCount, access);
    this.extraPools.push(pool);
    return pool;
  }

  private postRecv(slot: number): void {
    this.qp.postRecv(RECV_WR_FLAG | slot, this.recvRegion, slot * this.options.recvSize, this.options.recvSize);
  }

  private onCompletions(count: number): void {
    const wc = this.cq.completions;
    for (let i = 0; i < count; i++) {
      const wrId = wc[4 * i]!;
      const status = wc[4 * i + 1]!;
      const byteLen = wc[4 * i + 3]!;
      if (this.destroyed) return;
      if ((wrId & RECV_WR_FLAG) !== 0) {
        const slot = wrId & ~RECV_WR_FLAG;
        if (status !== 0) {
          this.break(new RdmaWorkError(status, this.binding.wcStatusName(status), 'receive'));
          continue;
        }
        if (this.brokenBy) continue;
        const offset = slot * this.options.recvSize;
        this.handler.onMessage(this.recvRegion.buffer.subarray(offset, offset + byteLen));
        if (!this.destroyed && !this.brokenBy) this.postRecv(slot);
      } else {
        this.sendQueue.complete(wrId, status);
        if (status !== 0) this.break(new RdmaWorkError(status, this.binding.wcStatusName(status), 'send queue'));
      }
    }
  }

  private break(err: Error): void {
    if (this.brokenBy) return;
    this.brokenBy = err;
    this.sendQueue.fail(err);
    this.handler.onBroken(err);
  }

  /**
   * SEND `parts` (copied into a registered slot) as one message, after the work requests in
   * `before` (posted as one chain: the target's RDMA WRITEs and the completion they precede).
   */
  send(parts: readonly Buffer[], what: string, before: SendWr[] = []): Promise<void> {
    let total = 0;
    for (const p of parts) total += p.length;
    const largest = Math.max(this.options.sendSize, this.options.largestSend ?? 0);
    if (total > largest) return Promise.reject(new Error(`${what}: ${total}-byte message exceeds ${largest}`));
    const slot = this.sendSlots.acquire(total);
    let at = 0;
    for (const p of parts) at += p.copy(slot.view, at);
    before.push({ wrId: 0, opcode: WrOpcode.Send, signaled: true, sg: [slot.mr, slot.offset, total] });
    return this.sendQueue.post(before, what).finally(() => slot.release());
  }

  /** Release every verbs object; the CM id is destroyed too (that destroys the QP first). */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.sendQueue?.fail(this.brokenBy ?? new Error('connection closed'));
    this.cmId.destroy();
    this.cq?.destroy();
    for (const p of this.extraPools) p.destroy();
    this.sendSlots?.destroy();
    this.recvRegion?.deregister();
    if (!this.options.pd) this.pd.dealloc();
  }
}
