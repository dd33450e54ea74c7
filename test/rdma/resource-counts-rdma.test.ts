// The native addon's resource counters are per Node.js environment (native/common.h): a worker
// thread loads the addon again and counts what it creates, the main thread counts its own. The
// leak checks of the other RDMA tests compare a thread's counts with that thread's baseline; with
// one process-wide set of counters (plain ints written by two threads: issue 21 item 7) a target
// in a worker moved the main thread's numbers, and the two threads raced on them.
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { nativeBinding, type ResourceCounts } from '../../src/transport/rdma/native-binding.js';

const require = createRequire(import.meta.url);
/** Where node-gyp-build finds the addon the main thread loaded (prebuilds/ or build/Release). */
const root = new URL('../../', import.meta.url).pathname;

/**
 * A worker that loads the addon, creates an event channel and a CM id (no device needed), posts
 * its counts, and then either releases them (`release`) and posts its counts again, or waits to
 * be terminated with both still alive (their finalizers then run in the worker's teardown).
 */
const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const b = require(workerData.gypBuild)(workerData.root);
const channel = new b.EventChannel(() => {});
const id = new b.CmId(channel);
parentPort.postMessage({ step: 'created', counts: b.resourceCounts() });
parentPort.on('message', (m) => {
  if (m !== 'release') return;
  id.destroy();
  channel.close();
  parentPort.postMessage({ step: 'released', counts: b.resourceCounts() });
});
`;

type Step = { step: string; counts: ResourceCounts };

function startWorker(): { worker: Worker; next: () => Promise<Step> } {
  const worker = new Worker(WORKER, { eval: true, workerData: { gypBuild: require.resolve('node-gyp-build'), root } });
  const queue: Step[] = [];
  const waiting: Array<(s: Step) => void> = [];
  worker.on('message', (s: Step) => (waiting.length > 0 ? waiting.shift()!(s) : queue.push(s)));
  const failed = new Promise<never>((_, reject) => {
    worker.on('error', reject);
    worker.on('exit', (code) => reject(new Error(`worker exited (${code}) before its message`)));
  });
  failed.catch(() => {});
  const next = () => Promise.race([queue.length > 0 ? Promise.resolve(queue.shift()!) : new Promise<Step>((r) => waiting.push(r)), failed]);
  return { worker, next };
}

const live = ({ registrationsTotal: _, ...c }: ResourceCounts) => c;

describe('native resource counters are per environment (issue 21 item 7)', () => {
  it("a worker thread's resources count in the worker, not in the main thread", async () => {
    const binding = nativeBinding();
    const before = live(binding.resourceCounts());
    const { worker, next } = startWorker();
    try {
      const created = await next();
      expect(created.step).toBe('created');
      expect(created.counts.eventChannels).toBe(1);
      expect(created.counts.cmIds).toBe(1);
      // The worker's channel and CM id are not the main thread's.
      expect(live(binding.resourceCounts())).toEqual(before);
      worker.postMessage('release');
      const released = await next();
      expect(released.counts.eventChannels).toBe(0);
      expect(released.counts.cmIds).toBe(0);
      expect(live(binding.resourceCounts())).toEqual(before);
    } finally {
      await worker.terminate();
    }
  });

  it('a worker terminated with live resources releases them in its teardown; the main thread counts on', async () => {
    const binding = nativeBinding();
    const before = live(binding.resourceCounts());
    const { worker, next } = startWorker();
    expect((await next()).counts.cmIds).toBe(1);
    // Their finalizers run in the worker's teardown and must still find the worker's counters.
    await worker.terminate();
    expect(live(binding.resourceCounts())).toEqual(before);
    // The main thread's own resources still count in the main thread.
    const channel = new binding.EventChannel(() => {});
    try {
      expect(binding.resourceCounts().eventChannels).toBe(before.eventChannels + 1);
    } finally {
      channel.close();
    }
    expect(live(binding.resourceCounts())).toEqual(before);
  });
});
