import { describe, expect, it } from 'vitest';
import type { CmId, CompletionQueue, MemoryRegion, NativeBinding, ProtectionDomain, QueuePair, SendWr } from '../src/transport/rdma/native-binding.js';
import { WrOpcode } from '../src/transport/rdma/native-binding.js';
import { RcConnection, type RcConnectionHandler } from '../src/transport/rdma/rc-connection.js';
import { NicMemory } from '../src/transport/rdma/nic-memory.js';
import { MAX_WRS_PER_POST, RdmaWorkError, RECV_WR_FLAG, SendQueue, SendStalledError, WorkRequestStaging, WR_WORDS } from '../src/transport/rdma/send-queue.js';

// The send queue's batching, with a fake QueuePair that records every postSend call (one call
// is one ibv_post_send, a system call on soft-RoCE): what reaches the QP, in which calls, with
// which ids and signaled flags. The same queue runs against rxe in the test/rdma suite.

/** Records postSend calls as copies of what the addon would read; throws on the calls told to. */
class RecordingQp implements QueuePair {
  readonly calls: Array<Array<{ wrId: number; signaled: boolean; tag: number }>> = [];
  /** postSend call numbers (0-based) that throw instead of posting. */
  readonly refuse = new Set<number>();
  private attempts = 0;
  postSend(staging: Uint32Array, count: number): void {
    if (this.refuse.has(this.attempts++)) throw new Error('ibv_post_send failed: Cannot allocate memory');
    // The staged words of each request (native/queue_pair.cc): wr_id, flags (1: signaled), and
    // the rkey word, which carries the test's tag of each request, to check the order.
    const at = (i: number) => i * WR_WORDS;
    this.calls.push(Array.from({ length: count }, (_, i) => ({ wrId: staging[at(i)]!, signaled: (staging[at(i) + 2]! & 1) === 1, tag: staging[at(i) + 4]! })));
  }
  postRecv(): void {}
  query() {
    return { state: 3, rnrRetry: 6, retryCount: 7, minRnrTimer: 0, timeout: 14 };
  }
  /** Every request posted so far, in posting order. */
  get posted() {
    return this.calls.flat();
  }
}

const binding = { wcStatusName: (s: number) => `status ${s}` } as unknown as NativeBinding;
let nextTag = 0;
/** A chain of `n` RDMA WRITEs, each tagged with a fresh number (through rkey). */
function chain(n: number): SendWr[] {
  return Array.from({ length: n }, () => ({ wrId: 0, opcode: WrOpcode.Write, signaled: true, sg: [], remoteAddrLow: 0, remoteAddrHigh: 0, rkey: nextTag++ }));
}
const tags = (wrs: SendWr[]) => wrs.map((wr) => wr.rkey!);
/** Lets queued microtasks (the queue's end-of-turn post) run. */
const turn = () => new Promise<void>((r) => setImmediate(r));
/** Settles to 'resolved', 'pending' or the rejection, without an unhandled rejection. */
function track(p: Promise<void>): { state: 'pending' | 'resolved' | Error } {
  const t: { state: 'pending' | 'resolved' | Error } = { state: 'pending' };
  p.then(
    () => (t.state = 'resolved'),
    (e: Error) => (t.state = e),
  );
  return t;
}

describe('send queue batching (one postSend per JS turn)', () => {
  it('chains started in one turn leave in one postSend, in order, each signaled once with its own id', async () => {
    const qp = new RecordingQp();
    const sq = new SendQueue(qp, 64, binding);
    const chains = [chain(3), chain(1), chain(2), chain(4)];
    const results = chains.map((c) => track(sq.post(c, 'chain')));
    expect(qp.calls).toHaveLength(0); // nothing before the turn ends
    expect(sq.idle).toBe(false); // pending chains count
    await turn();
    expect(qp.calls).toHaveLength(1);
    expect(sq.posted).toEqual({ calls: 1, chains: 4 });
    expect(qp.posted.map((w) => w.tag)).toEqual(chains.flatMap(tags));
    // Within a chain: one id on every request, only the last signaled; ids differ between chains.
    let at = 0;
    const ids: number[] = [];
    for (const c of chains) {
      const wrs = qp.posted.slice(at, at + c.length);
      at += c.length;
      expect(new Set(wrs.map((w) => w.wrId)).size).toBe(1);
      expect(wrs.map((w) => w.signaled)).toEqual(c.map((_, i) => i === c.length - 1));
      ids.push(wrs[0]!.wrId);
    }
    expect(new Set(ids).size).toBe(chains.length);
    // Completions settle the chain they name, and only it.
    expect(sq.complete(ids[2]!, 0)).toBe(true);
    await turn();
    expect(results.map((r) => r.state)).toEqual(['pending', 'pending', 'resolved', 'pending']);
    expect(sq.complete(ids[0]!, 12)).toBe(true);
    expect(sq.complete(ids[0]!, 0)).toBe(false); // already settled
    await turn();
    expect(results[0]!.state).toBeInstanceOf(RdmaWorkError);
    expect((results[0]!.state as RdmaWorkError).status).toBe(12);
    sq.complete(ids[1]!, 0);
    sq.complete(ids[3]!, 0);
    await turn();
    expect(results.map((r) => r.state)).toEqual([results[0]!.state, 'resolved', 'resolved', 'resolved']);
    expect(sq.idle).toBe(true);
  });

  it('an explicit postPending() posts at once, and chains of the next turn go in the next call', async () => {
    const qp = new RecordingQp();
    const sq = new SendQueue(qp, 64, binding);
    const first = [chain(2), chain(1)];
    for (const c of first) void sq.post(c, 'chain').catch(() => {});
    sq.postPending();
    expect(qp.calls.map((c) => c.map((w) => w.tag))).toEqual([first.flatMap(tags)]);
    await turn(); // the armed microtask finds nothing left
    expect(qp.calls).toHaveLength(1);
    const second = chain(2);
    void sq.post(second, 'chain').catch(() => {});
    await turn();
    expect(qp.calls.map((c) => c.map((w) => w.tag))).toEqual([first.flatMap(tags), tags(second)]);
    sq.fail(new Error('closed'));
  });

  it(`a batch over ${MAX_WRS_PER_POST} work requests is split into calls of whole chains`, async () => {
    const qp = new RecordingQp();
    const sq = new SendQueue(qp, 256, binding);
    const chains = [chain(30), chain(30), chain(5), chain(40), chain(64), chain(1)];
    for (const c of chains) void sq.post(c, 'chain').catch(() => {});
    await turn();
    // 30+30 (a third chain would make 65), 5+40, 64, 1.
    expect(qp.calls.map((c) => c.length)).toEqual([60, 45, 64, 1]);
    expect(sq.posted).toEqual({ calls: 4, chains: 6 });
    expect(qp.posted.map((w) => w.tag)).toEqual(chains.flatMap(tags));
    // No chain straddles two calls: every call ends with a signaled request.
    for (const call of qp.calls) expect(call[call.length - 1]!.signaled).toBe(true);
    sq.fail(new Error('closed'));
  });

  it(`a chain longer than one post can carry (${MAX_WRS_PER_POST}) is refused alone`, async () => {
    const qp = new RecordingQp();
    const sq = new SendQueue(qp, 256, binding);
    const ok = track(sq.post(chain(2), 'small'));
    await expect(sq.post(chain(MAX_WRS_PER_POST + 1), 'huge')).rejects.toThrow(/exceed the 64 one post can carry/);
    await turn();
    expect(qp.calls.map((c) => c.length)).toEqual([2]);
    sq.complete(qp.posted[1]!.wrId, 0);
    await turn();
    expect(ok.state).toBe('resolved');
  });

  it('a postSend that throws rejects the chains of that call with its error and fails the queue', async () => {
    const qp = new RecordingQp();
    qp.refuse.add(1); // the second call of the batch
    const failures: Error[] = [];
    const sq = new SendQueue(qp, 256, binding, { onFail: (e) => failures.push(e) });
    const posted = [chain(40), chain(20)].map((c) => track(sq.post(c, 'posted')));
    const refused = [chain(30), chain(30)].map((c) => track(sq.post(c, 'refused')));
    const never = track(sq.post(chain(10), 'after the refused call'));
    await turn();
    expect(qp.calls.map((c) => c.length)).toEqual([60]); // the refused call and the one after never reached the QP
    for (const r of refused) expect((r.state as Error).message).toBe('ibv_post_send failed: Cannot allocate memory');
    // The QP's state is unknown after a refused post: the owner is told once and closes the
    // connection; nothing else is posted and every other chain fails with the same error.
    expect(failures.map((e) => e.message)).toEqual(['ibv_post_send failed: Cannot allocate memory']);
    for (const r of [...posted, never]) expect(r.state).toBe(failures[0]);
    await expect(sq.post(chain(1), 'later')).rejects.toBe(failures[0]);
    expect(sq.idle).toBe(true);
    expect(qp.calls).toHaveLength(1);
  });
});

describe('send queue room and backlog with batching', () => {
  it('room is taken when a chain is accepted: the depth is never exceeded, waiting chains follow in order', async () => {
    const qp = new RecordingQp();
    const sq = new SendQueue(qp, 8, binding, { maxBacklog: 10 });
    const chains = [chain(3), chain(3), chain(3), chain(1), chain(2)];
    const results = chains.map((c) => track(sq.post(c, 'chain')));
    // 3+3 fit the depth of 8; the third (3) waits, and the later ones wait behind it (order).
    expect(sq.backlog).toBe(3);
    await turn();
    expect(qp.calls.map((c) => c.map((w) => w.tag))).toEqual([[...tags(chains[0]!), ...tags(chains[1]!)]]);
    // One completion frees 3: the waiting 3 fits (and 1 more would fit, 2 not): accepted in order.
    sq.complete(qp.calls[0]![2]!.wrId, 0);
    expect(sq.backlog).toBe(1);
    sq.postPending(); // as RcConnection does after a burst of completions
    expect(qp.calls.map((c) => c.map((w) => w.tag))).toEqual([[...tags(chains[0]!), ...tags(chains[1]!)], [...tags(chains[2]!), ...tags(chains[3]!)]]);
    sq.complete(qp.calls[0]![5]!.wrId, 0);
    await turn();
    expect(qp.calls.map((c) => c.map((w) => w.tag))[2]).toEqual(tags(chains[4]!));
    for (const call of qp.calls.slice(1)) for (const w of call) if (w.signaled) sq.complete(w.wrId, 0);
    await turn();
    expect(results.map((r) => r.state)).toEqual(['resolved', 'resolved', 'resolved', 'resolved', 'resolved']);
    expect(sq.idle).toBe(true);
  });

  it('a backlog overflow fails the queue: pending and waiting chains are rejected and never posted', async () => {
    const qp = new RecordingQp();
    const stalls: Error[] = [];
    const sq = new SendQueue(qp, 2, binding, { maxBacklog: 2, onFail: (e) => stalls.push(e) });
    const results = Array.from({ length: 5 }, () => track(sq.post(chain(1), 'completion')));
    await turn();
    expect(qp.calls).toHaveLength(0);
    expect(results.every((r) => r.state instanceof SendStalledError)).toBe(true);
    expect(stalls).toHaveLength(1);
    expect(sq.idle).toBe(true);
  });

  it('fail() rejects in-flight, pending and waiting chains alike; a later postPending() posts nothing', async () => {
    const qp = new RecordingQp();
    const sq = new SendQueue(qp, 2, binding);
    const inFlight = track(sq.post(chain(1), 'in flight'));
    await turn();
    const pending = track(sq.post(chain(1), 'pending'));
    const waiting = track(sq.post(chain(1), 'waiting'));
    expect(sq.backlog).toBe(1);
    const err = new Error('connection closed');
    sq.fail(err);
    sq.postPending();
    await turn();
    expect(qp.calls).toHaveLength(1);
    expect([inFlight.state, pending.state, waiting.state]).toEqual([err, err, err]);
    expect(sq.idle).toBe(true);
    expect(sq.complete(qp.posted[0]!.wrId, 5)).toBe(false); // the flushed (WC_WR_FLUSH_ERR) completion of a settled chain
  });
});

/** An RcConnection over a fake CQ (its callback is `deliver`) and a RecordingQp. */
function fakeConnection(handler: RcConnectionHandler) {
  const qp = new RecordingQp();
  let deliver: (n: number) => void = () => {};
  const WORDS = 6;
  const completions = new Uint32Array(WORDS * 8);
  const pd: ProtectionDomain = {
    registerMemory(buffer: Uint8Array): MemoryRegion {
      const buf = Buffer.from(buffer.buffer, buffer.byteOffset, buffer.byteLength);
      return { lkey: 1, rkey: 1, address: 0n, length: buf.length, buffer: buf, deregister() {} };
    },
    dealloc: () => true,
    registrations: () => 0,
  };
  const binding = {
    wcStatusName: (s: number) => `status ${s}`,
    access: { LOCAL_WRITE: 1, REMOTE_WRITE: 2, REMOTE_READ: 4, MW_BIND: 16 },
    CompletionQueue: class implements CompletionQueue {
      readonly completions = completions;
      readonly wordsPerCompletion = WORDS;
      constructor(_cmId: CmId, _cqe: number, onCompletions: (n: number) => void) {
        deliver = onCompletions;
      }
      destroy(): void {}
    },
  } as unknown as NativeBinding;
  const cmId = { createQp: () => qp, destroy() {}, destroyQp() {} } as unknown as CmId;
  const rc = new RcConnection(binding, cmId, { recvDepth: 4, recvSize: 16, sendDepth: 16, sendSize: 16, memory: { memory: new NicMemory(pd), release() {} } }, handler);
  return { rc, qp, completions, WORDS, deliver: (n: number) => deliver(n) };
}

describe('RcConnection posts what is pending after a burst of completions', () => {
  it('the answers to a burst of received messages leave in one postSend, before the turn ends', () => {
    const answered: number[] = [];
    const { rc, qp, completions, WORDS, deliver } = fakeConnection({
      onMessage(message) {
        // Each message is answered at once, as the initiator's invalidations are.
        answered.push(message[0]!);
        void rc.send([Buffer.from([message[0]! + 100])], 'answer').catch(() => {});
      },
      onBroken() {},
    });
    // Three receives complete in one callback: wr_id, status, opcode, byte_len, no invalidation.
    for (let i = 0; i < 3; i++) completions.set([RECV_WR_FLAG | i, 0, 128, 1, 0, 0], WORDS * i);
    deliver(3);
    // Posted synchronously at the end of the callback, as one call of the three SENDs.
    expect(answered).toHaveLength(3);
    expect(qp.calls).toHaveLength(1);
    expect(qp.calls[0]!.map((w) => w.signaled)).toEqual([true, true, true]);
    expect(new Set(qp.calls[0]!.map((w) => w.wrId)).size).toBe(3);
    rc.destroy();
  });
});

describe('RcConnection when the CQ cannot be re-armed (issue 17, finding 12c)', () => {
  it('a negative count from the addon (-errno of ibv_req_notify_cq) breaks the connection, and its sends fail', async () => {
    const broken: Error[] = [];
    const { rc, deliver } = fakeConnection({ onMessage() {}, onBroken: (err) => broken.push(err) });
    const pending = rc.send([Buffer.from([1])], 'capsule');
    deliver(-5);
    expect(broken).toHaveLength(1);
    expect(broken[0]!.message).toMatch(/ibv_req_notify_cq failed \(EIO\): the completion queue delivers nothing more/);
    expect(rc.broken).toBe(true);
    await expect(pending).rejects.toThrow(/ibv_req_notify_cq failed/);
    deliver(-5); // reported once
    expect(broken).toHaveLength(1);
    rc.destroy();
  });
});

describe('WorkRequestStaging: the words the addon reads', () => {
  it('an RDMA WRITE: opcode, flags, rkey, the remote address from its two halves, the region as an index, offset and length', () => {
    const staging = new WorkRequestStaging();
    const mr = {} as MemoryRegion;
    staging.add({ wrId: 7, opcode: WrOpcode.Write, signaled: true, sg: [mr, 4096, 512], remoteAddrLow: 0xdeadbeef, remoteAddrHigh: 0x7f12, rkey: 0x1234 });
    expect(Array.from(staging.words.subarray(0, 11))).toEqual([7, WrOpcode.Write, 1, 1, 0x1234, 0xdeadbeef, 0x7f12, 0, 0, 4096, 512]);
    expect(staging.objects).toEqual([mr]);
  });
});
