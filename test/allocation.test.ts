import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BlockDevice, FileBlockExport } from '../src/index.js';
import { HeapWindow } from '../src/bench/per-io.js';
import { sharedUringRing } from '../src/target/blk/uring-ring.js';
import { encodeRequestHeader } from '../src/protocol/virtio-blk.js';
import type { DeviceRequest, DeviceModel } from '../src/target/device.js';
import { loadNativeAddon } from '../src/util/native-addon.js';
import { needs } from './helpers/deps.js';
import { TargetFixture } from './helpers/target-fixture.js';
import { withMemoryTarget, type Measured } from './helpers/memory-target.js';
import { callbackIo, callbackReads } from './helpers/callback-io.js';

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
 * Map entry per command) leave about 390 bytes per read (about 11 GCs per 100k reads), most of
 * it Node's socket write path (an entry per corked write, the writev's chunk array, its
 * WriteWrap and tick objects: about 200 bytes) and this test's memory disk; the target before
 * them allocated about 2.9 KiB per read (85 GCs per 100k reads). Three costs were found later
 * with V8's sampling heap profiler and removed: a closure in the TCP parser's loop made V8
 * allocate a block context for every command parsed (about 130 bytes), each payload gathered
 * into a pooled frame got a fresh view of it (about 95 bytes per write), and the keepalive
 * timer boxed a clock reading per command (16 bytes).
 *
 * The file export's own path (issue 18: the device and io_uring without a promise, RingOp or
 * closure per command) is bounded twice: over TCP, where the target measured about 295 bytes
 * per 4 KiB read and 480 per write (8-14 GCs per 100k; the write's extra is Node's
 * Buffer.copy, which makes a view of the source whenever it does not start at 0) against 1.7
 * and 1.9 KiB (49-56 GCs) before; and the device alone, without a transport: under 10 bytes
 * per request against 1.2-1.3 KiB before (a promise, an async frame and a RingOp per request,
 * BigInts per write).
 */

const READS = 100_000;
/** Target bounds (both entry points send the target the same commands): see above. */
const TARGET_BYTES_PER_READ = 600;
const TARGET_GCS = 40;
/** The same over the file export's own path, reads and writes (bytes per I/O; GCs per 100k I/Os): see above. */
const TARGET_FILE_BYTES_PER_IO = { read: 450, write: 650 };
const TARGET_FILE_GCS = 35;
const DEPTH = 8;
const DISK = 1024 * 1024;

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

const report = (what: string, m: Measured) =>
  console.log(
    `${what}: initiator ${m.bytesPerRead.toFixed(0)} heap bytes per 4 KiB read, ${m.gcs} GCs per ${READS} reads; ` +
      `target (worker) ${(m.target.allocatedBytes / READS).toFixed(0)} bytes per read, ${m.target.gcs} GCs`,
  );

describe('initiator and target JS heap allocation per 4 KiB read (TCP, in-memory disk, target in a worker thread)', () => {
  it("read(): about the caller's Promise", async () => {
    await withMemoryTarget({ size: DISK }, READS, async (d, measure) => {
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
    await withMemoryTarget({ size: DISK }, READS, async (d, measure) => {
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

describe('the target over TCP with the file export itself (target in a worker thread): 4 KiB reads and writes', () => {
  // What the brief of issue 18 asks to report: heap bytes and GCs per million 4 KiB reads AND
  // writes, through the device's own file path (io_uring where the addon works, else libuv).
  for (const write of [false, true]) {
    it(`${write ? 'submitWrite' : 'submitRead'}(): the target allocates about its transport's share`, async () => {
      await withMemoryTarget({ size: DISK, backing: 'file' }, READS, async (d, measure) => {
        // Writes put back the bytes each block already holds, so reads elsewhere still check.
        const bufs = Array.from({ length: DEPTH }, () => Buffer.alloc(4096));
        await callbackIo(d, 5000, bufs, write);
        const m = await measure(() => callbackIo(d, READS, bufs, write));
        const perIo = m.target.allocatedBytes / READS;
        console.log(
          `file export, ${write ? 'writes' : 'reads'}: target ${perIo.toFixed(0)} heap bytes per 4 KiB I/O, ` +
            `${m.target.gcs * (1_000_000 / READS)} GCs per million I/Os`,
        );
        expect(perIo).toBeLessThan(TARGET_FILE_BYTES_PER_IO[write ? 'write' : 'read']);
        expect(m.target.gcs).toBeLessThan(TARGET_FILE_GCS);
      });
    }, 120_000);
  }
});

const addon = needs('test/allocation.test.ts: the file device over io_uring (native addon)', ['addon'], () => {
  try {
    loadNativeAddon();
  } catch (err) {
    return `the native addon does not load (${(err as Error).message.split('\n')[0]})`;
  }
  const ring = sharedUringRing();
  return ring instanceof Error ? `io_uring is unavailable: ${ring.message}` : null;
});

describe.skipIf(!addon.ok)(`the file device alone (virtio-blk over io_uring, no transport)${addon.skipNote}`, () => {
  const fx = new TargetFixture();
  afterAll(() => fx.close());
  const REQUESTS = 100_000;
  /** Bytes per request, well above what the device's reused records measure (under 10). */
  const DEVICE_BYTES = 64;

  /**
   * `count` requests of `type` on the device, DEPTH at a time, each in its own buffers and
   * with its own request object, made once: through submitRequest, which the target calls, or
   * (a device without it) handleRequest with the slot's callbacks, as the target adapts it.
   */
  function run(inst: DeviceModel, type: number, count: number): Promise<void> {
    return new Promise((resolve, reject) => {
      let next = 0;
      let running = DEPTH;
      for (let k = 0; k < DEPTH; k++) {
        const readable = Buffer.concat([encodeRequestHeader(type, 0n), type === 1 ? Buffer.alloc(4096) : Buffer.alloc(0)]);
        const writable = Buffer.alloc(type === 1 ? 1 : 4097);
        const issue = (): void => {
          if (next >= count) {
            if (--running === 0) resolve();
            return;
          }
          // The sector (le64 at byte 8): the low word is enough for this 1 MiB disk.
          readable.writeUInt32LE(((next++ * 8) % (DISK / 512)) >>> 0, 8);
          if (inst.submitRequest) inst.submitRequest(0, readable, writable, request);
          else inst.handleRequest(0, readable, writable, request).then(request.onExecuted, request.onExecuteFailed);
        };
        const request: DeviceRequest & { onExecuted: (n: number) => void; onExecuteFailed: (e: unknown) => void } = {
          aborted: false,
          throwIfAborted: () => {},
          deviceDone: (written) => {
            if (written !== writable.length || writable[writable.length - 1] !== 0) return reject(new Error(`status ${writable[writable.length - 1]}, ${written} bytes`));
            issue();
          },
          deviceFailed: reject,
          onExecuted: (n) => request.deviceDone(n),
          onExecuteFailed: (e) => request.deviceFailed(e),
        };
        issue();
      }
    });
  }

  for (const [what, type] of [
    ['reads', 0],
    ['writes', 1],
  ] as const) {
    it(`${what}: reused request records, no promise per request`, async () => {
      const path = join(fx.dir, `device-${what}.img`);
      writeFileSync(path, Buffer.alloc(DISK));
      const disk = await FileBlockExport.open(path, { fileIo: 'uring' });
      try {
        const inst = disk.createInstance();
        // VERSION_1 and FLUSH: a writeback cache, so a write is one file operation.
        inst.setDriverFeatures((1n << 32n) | (1n << 9n));
        await run(inst, type, 5000);
        const w = new HeapWindow();
        w.start();
        await run(inst, type, REQUESTS);
        const { allocatedBytes, gcs } = w.stop();
        console.log(`file device alone, ${what}: ${(allocatedBytes / REQUESTS).toFixed(1)} heap bytes per 4 KiB request, ${gcs} GCs per ${REQUESTS}`);
        expect(allocatedBytes / REQUESTS).toBeLessThan(DEVICE_BYTES);
        expect(gcs).toBeLessThan(5);
      } finally {
        await disk.close();
      }
    }, 120_000);
  }
});
