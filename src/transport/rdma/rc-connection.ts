import { constants } from 'node:os';
import type { CmId, CompletionQueue, MemoryRegion, NativeBinding, ProtectionDomain, QueuePair, SendWr } from './native-binding.js';
import { WrOpcode } from './native-binding.js';
import { NicMemory, type NicMemoryLease } from './nic-memory.js';
import { RegisteredPool } from './registered-pool.js';
import { RdmaWorkError, RECV_WR_FLAG, SendQueue, type SendQueueLimits } from './send-queue.js';

/** "EIO" for 5: the errno's name where Node knows it. */
function errnoName(errno: number): string {
  const name = Object.entries(constants.errno).find(([, v]) => v === errno)?.[0];
  return name ?? `errno ${errno}`;
}

export interface RcConnectionOptions {
  /** Receive buffers posted at all times; a peer that sends more waits (RNR), it is not dropped. */
  readonly recvDepth: number;
  /**
   * Receive buffers registered and posted at first (default recvDepth): the rest come with
   * growReceives(). The QP is created for recvDepth either way.
   */
  readonly initialRecvDepth?: number;
  /** Largest message accepted; a longer one is a local length error that ends the connection. */
  readonly recvSize: number;
  readonly sendDepth: number;
  /** Size of the pooled send slots: the usual largest message. */
  readonly sendSize: number;
  /**
   * Pooled send slots (default: sendDepth plus the send backlog, one per place a send() can
   * wait in). An owner that sends its data-path messages from buffers of its own (the
   * initiator's command slots) needs only a few, for its rare other messages; send() beyond
   * them registers a buffer for the message.
   */
  readonly sendSlots?: number;
  /**
   * Largest message sent at all (default sendSize). A rare message between sendSize and this
   * (a Connect answered with a redirect record) gets its own registration, released after it.
   */
  readonly largestSend?: number;
  /**
   * The NIC memory whose PD the QP uses and whose chunks carry the receive ring, the send slots
   * and createPool()'s pools; release() is called once, by destroy(), after this connection's QP
   * and chunks are gone. Default: a memory of its own over a PD of its own on the CM id's device.
   */
  readonly memory?: NicMemoryLease;
  /** Backlog bound and stall timeout of the send queue (a peer that stops receiving). */
  readonly sendLimits?: Omit<SendQueueLimits, 'onFail'>;
}

/**
 * What onMessage returns to keep its receive buffer: the message stays valid, and the buffer is
 * not posted again, until the owner calls releaseReceive(slot) (vof inline data used in place).
 */
export const HOLD_RECEIVE = 'hold' as const;

export interface RcConnectionHandler {
  /**
   * One received message; `message` is valid during the call only. `invalidatedKey`: the SEND
   * carried an invalidation and the NIC has already ended this key of ours (null otherwise).
   * `slot`: the receive buffer's; HOLD_RECEIVE keeps it (see releaseReceive).
   */
  onMessage(message: Buffer, invalidatedKey: number | null, slot: number): void | typeof HOLD_RECEIVE;
  /** The QP left the working state (first failed completion); called once. */
  onBroken(err: Error): void;
}

/**
 * The verbs half of one Virtio-oF queue on RDMA, shared by target and initiator: one RC QP with
 * one CQ, pre-posted receive buffers reposted as soon as their message is handled, and
 * registered slots for outgoing capsules. Owns the CQ, QP, its chunks of the NIC memory, and its
 * lease on that memory (or a memory of its own); destroy() releases them in the order the verbs require.
 *
 * The completion callback is the boundary between native code and JS: nothing thrown below it
 * reaches the addon (which would end the process). A throw breaks this connection only.
 */
export class RcConnection {
  readonly pd: ProtectionDomain;
  readonly cq: CompletionQueue;
  readonly qp: QueuePair;
  readonly sendQueue: SendQueue;
  /** The NIC memory everything registered comes from. */
  readonly memory: NicMemory;
  /** Receive slots [0, initial) are the first pool's chunks, the rest (after growReceives) the second's. */
  private readonly recvPools: RegisteredPool[] = [];
  /** Each receive slot's region and offset (its pool's chunk), by slot number. */
  private readonly recvRegions: MemoryRegion[] = [];
  private readonly recvOffsets: number[] = [];
  private readonly initialRecvDepth: number;
  private readonly sendSlots: RegisteredPool;
  private readonly extraPools: RegisteredPool[] = [];
  private brokenBy: Error | null = null;
  private destroyed = false;
  /**
   * The view last handed out for each receive slot: a queue's messages mostly have one length
   * (a 4 KiB read's request is always 48 bytes), so the slot's view of that length is reused
   * rather than a Buffer made per message.
   */
  private readonly recvViews: Buffer[] = [];

  constructor(
    private readonly binding: NativeBinding,
    readonly cmId: CmId,
    private readonly options: RcConnectionOptions,
    private readonly handler: RcConnectionHandler,
  ) {
    const { recvDepth, sendDepth, sendSize } = options;
    this.initialRecvDepth = Math.min(recvDepth, Math.max(1, options.initialRecvDepth ?? recvDepth));
    this.memory = options.memory?.memory ?? new NicMemory(new binding.ProtectionDomain(cmId));
    this.pd = this.memory.pd;
    try {
      this.cq = new binding.CompletionQueue(cmId, recvDepth + sendDepth, (n) => this.onCompletions(n));
      this.qp = cmId.createQp(this.pd, this.cq, {
        maxSendWr: sendDepth,
        maxRecvWr: recvDepth,
        // Two: the initiator's SEND can carry inline bytes from the caller's registered memory.
        maxSendSge: 2,
        maxRecvSge: 1,
      });
      const limits = options.sendLimits ?? {};
      this.sendQueue = new SendQueue(this.qp, sendDepth, binding, { ...limits, onFail: (err) => this.break(err) });
      this.addReceives(this.initialRecvDepth);
      // A slot is held from send() until the chain completes, in flight or in the backlog: an
      // owner that bounds the backlog gets one slot per place, so a message of sendSize never
      // needs a registration of its own (the target). Others get one per send queue entry.
      this.sendSlots = new RegisteredPool(this.memory, sendSize, options.sendSlots ?? sendDepth + (limits.maxBacklog ?? 0), 0);
      for (let i = 0; i < this.initialRecvDepth; i++) this.postRecv(i);
    } catch (err) {
      this.destroy();
      throw err;
    }
  }

  get broken(): boolean {
    return this.brokenBy !== null;
  }

  /** A pool of this connection's NIC memory, given back by destroy(). */
  createPool(chunkSize: number, chunkCount: number, access: number): RegisteredPool {
    const pool = new RegisteredPool(this.memory, chunkSize, chunkCount, access);
    this.extraPools.push(pool);
    return pool;
  }

  /**
   * Register and post the receive buffers beyond initialRecvDepth, up to recvDepth (once; later
   * calls do nothing). Throws if the registration fails; the caller closes the connection.
   */
  growReceives(): void {
    if (this.recvPools.length > 1 || this.destroyed || this.brokenBy) return;
    const more = this.options.recvDepth - this.initialRecvDepth;
    if (more <= 0) return;
    this.addReceives(more);
    for (let i = this.initialRecvDepth; i < this.options.recvDepth; i++) this.postRecv(i);
  }

  /**
   * `count` more receive buffers, one pool of them (registered now), numbered after the ones
   * there are; each slot's region and offset are noted once, for every post of it.
   */
  private addReceives(count: number): void {
    // Receive buffers are written by the local NIC only: no remote access.
    const pool = new RegisteredPool(this.memory, this.options.recvSize, count, this.binding.access.LOCAL_WRITE);
    this.recvPools.push(pool);
    for (let i = 0; i < count; i++) {
      this.recvRegions.push(pool.regionOf(i));
      this.recvOffsets.push(pool.offsetOf(i));
    }
  }

  private postRecv(slot: number): void {
    this.qp.postRecv(RECV_WR_FLAG | slot, this.recvRegions[slot]!, this.recvOffsets[slot]!, this.options.recvSize);
  }

  private onCompletions(count: number): void {
    if (count < 0) {
      // The addon could not re-arm the CQ: no completion would ever arrive again, so the
      // connection fails now instead of hanging with its requests in flight.
      if (!this.destroyed) this.break(new Error(`ibv_req_notify_cq failed (${errnoName(-count)}): the completion queue delivers nothing more`));
      return;
    }
    const wc = this.cq.completions;
    const words = this.cq.wordsPerCompletion;
    for (let i = 0; i < count; i++) {
      if (this.destroyed) return;
      const w = words * i;
      try {
        this.onCompletion(wc[w]!, wc[w + 1]!, wc[w + 3]!, wc[w + 4] === 1 ? wc[w + 5]! : null);
      } catch (err) {
        // A bug or an unexpected verbs error below us: this connection cannot be trusted any
        // more, the process and every other connection can.
        const e = err instanceof Error ? err : new Error(String(err));
        this.break(new Error(`completion handler threw: ${e.message}`, { cause: e }));
      }
    }
    // Chains the handlers started for this burst (invalidations, answers) leave in one post.
    if (!this.destroyed) this.sendQueue.postPending();
  }

  private onCompletion(wrId: number, status: number, byteLen: number, invalidatedKey: number | null): void {
    if ((wrId & RECV_WR_FLAG) === 0) {
      this.sendQueue.complete(wrId, status);
      if (status !== 0) this.break(new RdmaWorkError(status, this.binding.wcStatusName(status), 'send queue'));
      return;
    }
    const slot = wrId & ~RECV_WR_FLAG;
    if (status !== 0) return this.break(new RdmaWorkError(status, this.binding.wcStatusName(status), 'receive'));
    if (this.brokenBy) return;
    let view = this.recvViews[slot];
    if (view === undefined || view.length !== byteLen) {
      const offset = this.recvOffsets[slot]!;
      view = this.recvRegions[slot]!.buffer.subarray(offset, offset + byteLen);
      this.recvViews[slot] = view;
    }
    if (this.handler.onMessage(view, invalidatedKey, slot) === HOLD_RECEIVE) return;
    if (!this.destroyed && !this.brokenBy) this.postRecv(slot);
  }

  /** A receive buffer onMessage held (HOLD_RECEIVE) is done with: posted again. */
  releaseReceive(slot: number): void {
    if (!this.destroyed && !this.brokenBy) this.postRecv(slot);
  }

  private break(err: Error): void {
    if (this.brokenBy) return;
    this.brokenBy = err;
    this.sendQueue.fail(err);
    try {
      this.handler.onBroken(err);
    } catch {
      // The owner's close path failed: destroy at least the verbs objects.
      this.destroy();
    }
  }

  /**
   * SEND `parts` (copied into a registered slot) as one message, after the work requests in
   * `before` (posted as one chain: the target's RDMA WRITEs and the completion they precede).
   * `invalidateKey`: a SEND with Invalidate that ends this key of the peer's on arrival.
   */
  send(parts: readonly Buffer[], what: string, before: SendWr[] = [], invalidateKey: number | null = null): Promise<void> {
    let total = 0;
    for (const p of parts) total += p.length;
    const largest = Math.max(this.options.sendSize, this.options.largestSend ?? 0);
    if (total > largest) return Promise.reject(new Error(`${what}: ${total}-byte message exceeds ${largest}`));
    const slot = this.sendSlots.acquire(total);
    let at = 0;
    for (const p of parts) at += p.copy(slot.view, at);
    before.push(
      invalidateKey === null
        ? { wrId: 0, opcode: WrOpcode.Send, signaled: true, sg: [slot.mr, slot.offset, total] }
        : { wrId: 0, opcode: WrOpcode.SendWithInvalidate, signaled: true, sg: [slot.mr, slot.offset, total], rkey: invalidateKey },
    );
    return this.sendQueue.post(before, what).finally(() => slot.release());
  }

  /**
   * Release every verbs object in the order the verbs require (QP, CQ and its channel, the
   * NIC memory's chunks, the PD or its lease), the CM id last: the last CM id on a removed RDMA device
   * is what lets librdmacm close that device's verbs context (native-binding syncDevices), and
   * nothing of ours may be left on a closed context. An owner with registrations of its own in
   * the PD calls releaseVerbs(), releases those, then destroy().
   */
  destroy(): void {
    this.releaseVerbs();
    this.cmId.destroy();
  }

  /** Everything destroy() releases except the CM id (idempotent). */
  releaseVerbs(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.sendQueue?.fail(this.brokenBy ?? new Error('connection closed'));
    this.cmId.destroyQp();
    this.cq?.destroy();
    for (const p of this.extraPools) p.destroy();
    this.sendSlots?.destroy();
    for (const p of this.recvPools) p.destroy();
    if (this.options.memory) this.options.memory.release();
    else this.memory.destroy();
  }
}
