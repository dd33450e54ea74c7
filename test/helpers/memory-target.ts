import { Worker } from 'node:worker_threads';
import { BlockDevice, silentLogger } from '../../src/index.js';
import { HeapWindow } from '../../src/bench/per-io.js';

/** JS heap and GCs of a measured loop: this thread's per I/O, the worker target's in total. */
export interface Measured {
  bytesPerRead: number;
  gcs: number;
  target: { allocatedBytes: number; gcs: number };
}

export interface MemoryTargetOptions {
  /** The disk's bytes (every 4 KiB block starts with its own byte offset). */
  readonly size: number;
  /** 'file': the worker's target serves the file export itself (io_uring or libuv), not the memory disk. */
  readonly backing?: 'memory' | 'file';
  /** The target's listen URL (default TCP on loopback). */
  readonly listen?: string;
}

/**
 * A target in a worker thread (its own V8 heap: test/helpers/memory-target-worker.mjs) and a
 * BlockDevice on it; `measure(loop)` counts the heap both sides allocate during `loop`, which
 * runs `ios` I/Os. Everything is closed afterwards.
 */
export async function withMemoryTarget(
  options: MemoryTargetOptions,
  ios: number,
  run: (d: BlockDevice, measure: (loop: () => Promise<void>) => Promise<Measured>) => Promise<void>,
): Promise<void> {
  const worker = new Worker(new URL('./memory-target-worker.mjs', import.meta.url), { workerData: options });
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
    return { bytesPerRead: allocatedBytes / ios, gcs, target: heap };
  };
  try {
    await run(d, measure);
  } finally {
    await d.close();
    await ask('close');
    await worker.terminate();
  }
}
