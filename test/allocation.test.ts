import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { BlockDevice, silentLogger } from '../src/index.js';
import { HeapWindow } from '../src/bench/per-io.js';

/**
 * Issue 18: at most the caller's Promise allocated per command on the initiator, nothing with
 * the callback entry point. 100k 4 KiB reads, 8 at a time over TCP, against an in-memory disk
 * served by a target in a worker thread of this process: the worker has its own V8 heap, so
 * what this thread measures is the initiator's alone (BlockDevice, RemoteDevice, the queue,
 * the TCP connection, Node's socket writes and this loop), and what the worker measures over
 * the same window is the target's alone.
 *
 * The bounds are above what the initiator measures (logged below; about 730 bytes per read()
 * and 11 GCs per 100k reads, about 250 bytes and 4 GCs with submitRead: what is left is Node's
 * socket write path, an entry per write while corked and the writev's array) and below what
 * came before: per-command object graphs cost about 5.4 KiB per read() (79 GCs per 100k
 * reads); the completion reader's copy of a small payload out of its scratch, a Buffer view
 * per copy on Node 20, cost about 240 more bytes per read (960 per read(), 485 with
 * submitRead), so the test fails if either comes back. Not a benchmark: no timing is asserted.
 *
 * The target's bound likewise: its slots (per-slot completion buffers, headers decoded in the
 * connection's buffer, reused stream requests and frames, callbacks bound once per slot, no
 * Map entry per command) leave about 750 bytes per read (24-45 GCs per 100k reads), most of it
 * Node's socket write and this test's memory disk (its promise and copy); the target before
 * them allocated about 2.9 KiB per read (85 GCs per 100k reads).
 */

const READS = 100_000;
/** Target bounds (both entry points send the target the same commands): see above. */
const TARGET_BYTES_PER_READ = 1500;
const TARGET_GCS = 70;
const DEPTH = 8;
const DISK = 1024 * 1024;

interface Measured {
  bytesPerRead: number;
  gcs: number;
  target: { allocatedBytes: number; gcs: number };
}

async function withMemoryTarget(run: (d: BlockDevice, measure: (loop: () => Promise<void>) => Promise<Measured>) => Promise<void>): Promise<void> {
  const worker = new Worker(new URL('./helpers/memory-target-worker.mjs', import.meta.url), { workerData: { size: DISK } });
  const replies: Array<(m: Record<string, unknown>) => void> = [];
  worker.on('message', (m: Record<string, unknown>) => replies.shift()?.(m));
  const ask = (m: string | null) =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      replies.push(resolve);
      worker.once('error', reject);
      if (m) worker.postMessage(m);
    });
  const { url } = (await ask(null)) as { url: string };
  const d = await BlockDevice.open(url, { log: silentLogger, maxQueues: 1 });
  const measure = async (loop: () => Promise<void>): Promise<Measured> => {
    await ask('start');
    const w = new HeapWindow();
    w.start();
    await loop();
    const { allocatedBytes, gcs } = w.stop();
    const { heap } = (await ask('stop')) as { heap: Measured['target'] };
    return { bytesPerRead: allocatedBytes / READS, gcs, target: heap };
  };
  try {
    await run(d, measure);
  } finally {
    await d.close();
    await ask('close');
    await worker.terminate();
  }
}

/** `reads` 4 KiB reads, DEPTH at a time, each worker into its own buffer; checks the bytes. */
async function promiseReads(d: BlockDevice, reads: number, bufs: Buffer[]): Promise<void> {
  let next = 0;
  const worker = async (buf: Buffer) => {
    while (next < reads) {
      const at = ((next++ * 4096) % DISK) | 0;
      await d.read(at, buf);
      if (buf.readUInt32LE(0) !== at) throw new Error(`read at ${at} returned the block at ${buf.readUInt32LE(0)}`);
    }
  };
  await Promise.all(bufs.map(worker));
}

/** The same through the callback entry point: one callback per buffer, made once. */
function callbackReads(d: BlockDevice, reads: number, bufs: Buffer[]): Promise<void> {
  return new Promise((resolve, reject) => {
    let next = 0;
    let running = bufs.length;
    let failed = false;
    const reader = (buf: Buffer) => {
      let at = 0;
      const issue = (): void => {
        if (failed) return;
        if (next >= reads) {
          if (--running === 0) resolve();
          return;
        }
        at = ((next++ * 4096) % DISK) | 0;
        d.submitRead(at, buf, done);
      };
      const done = (err: Error | null): void => {
        if (err || buf.readUInt32LE(0) !== at) {
          failed = true;
          reject(err ?? new Error(`read at ${at} returned the block at ${buf.readUInt32LE(0)}`));
          return;
        }
        issue();
      };
      return issue;
    };
    for (const issue of bufs.map(reader)) issue();
  });
}

const report = (what: string, m: Measured) =>
  console.log(
    `${what}: initiator ${m.bytesPerRead.toFixed(0)} heap bytes per 4 KiB read, ${m.gcs} GCs per ${READS} reads; ` +
      `target (worker) ${(m.target.allocatedBytes / READS).toFixed(0)} bytes per read, ${m.target.gcs} GCs`,
  );

describe('initiator and target JS heap allocation per 4 KiB read (TCP, in-memory disk, target in a worker thread)', () => {
  it("read(): about the caller's Promise", async () => {
    await withMemoryTarget(async (d, measure) => {
      const bufs = Array.from({ length: DEPTH }, () => Buffer.alloc(4096));
      await promiseReads(d, 5000, bufs); // warm-up: slots, pools, JIT
      const m = await measure(() => promiseReads(d, READS, bufs));
      report('read()', m);
      expect(m.bytesPerRead).toBeLessThan(900);
      expect(m.gcs).toBeLessThan(40);
      expect(m.target.allocatedBytes / READS).toBeLessThan(TARGET_BYTES_PER_READ);
      expect(m.target.gcs).toBeLessThan(TARGET_GCS);
    });
  }, 120_000);

  it('submitRead(): no Promise, less still', async () => {
    await withMemoryTarget(async (d, measure) => {
      const bufs = Array.from({ length: DEPTH }, () => Buffer.alloc(4096));
      await callbackReads(d, 5000, bufs);
      const m = await measure(() => callbackReads(d, READS, bufs));
      report('submitRead()', m);
      expect(m.bytesPerRead).toBeLessThan(400);
      expect(m.gcs).toBeLessThan(25);
      expect(m.target.allocatedBytes / READS).toBeLessThan(TARGET_BYTES_PER_READ);
      expect(m.target.gcs).toBeLessThan(TARGET_GCS);
    });
  }, 120_000);
});
