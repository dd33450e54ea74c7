// A vof target in a worker thread (its own V8 isolate and heap) serving a virtio-blk disk from
// memory: a test in the main thread then measures the initiator's heap alone, and asks this
// worker for the target's over the same window. Runs the compiled dist/ (test/global-setup.ts
// builds it before any test file).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';
import { FileBlockExport, VofTarget, silentLogger } from '../../dist/index.js';
import { HeapWindow } from '../../dist/bench/per-io.js';
import { delegatingInstance } from './delegating-instance.mjs';

// backing 'file': the file export itself serves the requests (its io_uring or libuv path, the
// page cache), with the same image; else the in-memory disk below.
// `listen`: the target's URL (default TCP on loopback; the RDMA allocation test gives rdma://).
const { size, backing = 'memory', listen = 'tcp://127.0.0.1:0' } = workerData;
const dir = mkdtempSync(join(tmpdir(), 'vof-memtarget-'));
const path = join(dir, 'disk.img');
// Every 4 KiB block starts with its own byte offset, so a read can check what it got.
const image = Buffer.alloc(size);
for (let i = 0; i < size; i += 4096) image.writeUInt32LE(i, i);
writeFileSync(path, backing === 'file' ? image : Buffer.alloc(size));
const real = await FileBlockExport.open(path);

/** A read answered from `image` (the bytes written), or -1 for anything else. */
function fromImage(readable, writable) {
  if (readable.length < 16 || writable.length < 1 || readable.readUInt32LE(0) !== 0) return -1;
  const at = (readable.readUInt32LE(8) + readable.readUInt32LE(12) * 2 ** 32) * 512;
  if (at + writable.length - 1 > image.length) return -1;
  image.copy(writable, 0, at, at + writable.length - 1);
  writable[writable.length - 1] = 0;
  return writable.length;
}

/** The file disk's config space, features and queues; reads and writes served from `image`. */
const memoryDisk = {
  description: 'in-memory disk',
  close: () => real.close(),
  createInstance(limits) {
    const inner = real.createInstance(limits);
    return delegatingInstance(inner, {
      handleRequest(vq, readable, writable, cancel) {
        const n = fromImage(readable, writable);
        return n < 0 ? inner.handleRequest(vq, readable, writable, cancel) : Promise.resolve(n);
      },
      // The target's entry point when a device has it: answered in this call, nothing allocated.
      submitRequest(vq, readable, writable, request) {
        const n = fromImage(readable, writable);
        if (n < 0) inner.submitRequest(vq, readable, writable, request);
        else request.deviceDone(n);
      },
    });
  },
};

const target = new VofTarget({ log: silentLogger });
target.addExport('mem', backing === 'file' ? real : memoryDisk);
const url = await target.listen(listen);
const heap = new HeapWindow();
parentPort.on('message', async (m) => {
  if (m === 'start') {
    heap.start();
    parentPort.postMessage({ started: true });
  } else if (m === 'stop') {
    parentPort.postMessage({ heap: heap.stop() });
  } else if (m === 'close') {
    await target.close();
    rmSync(dir, { recursive: true, force: true });
    parentPort.postMessage({ closed: true });
  }
});
parentPort.postMessage({ url: `${url}/mem` });
