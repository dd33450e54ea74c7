#!/usr/bin/env node
// Initiator memory modes over RDMA, side by side: the default (bounce copies into memory
// registered at connection setup), allocateBuffer memory moved in place, and the opt-in
// registration cache. All three bind one memory window per descriptor per command and
// invalidate it on completion. Needs an rxe device: run it in the soft-RoCE VM:
//
//   npm run build && npm run rxe -- node bench/initiator-memory.mjs [SECONDS]
//
// Prints IOPS and MiB/s per mode and workload, and the peak of native registrations beyond
// those of the setup while measuring (0 expected for every mode once warm).
import { mkdtempSync, openSync, ftruncateSync, closeSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startTarget } from '../scripts/start-target.mjs';
import { BlockDevice } from '../dist/index.js';
import { nativeBinding } from '../dist/transport/rdma/native-binding.js';

const seconds = Number(process.argv[2] ?? 5);
const addr = process.env.VOF_RDMA_ADDR;
if (!addr) throw new Error('VOF_RDMA_ADDR is not set: run through `npm run rxe --`');
const MiB = 1 << 20;
const dir = mkdtempSync(join(tmpdir(), 'vof-bench-initiator-memory-'));
const disk = join(dir, 'disk.img');
const fd = openSync(disk, 'w');
ftruncateSync(fd, 64 * MiB);
closeSync(fd);
const target = await startTarget(['--listen', `rdma://${addr}:0`, '--blk', `b=${disk}`, '--queues', '1', '--queue-size', '64'], { timeoutMs: 120000 });
const url = `${target.urls[0]}/b`;
const workloads = [
  { name: '4k read QD16', bs: 4096, qd: 16, write: false },
  { name: '1M read QD4', bs: MiB, qd: 4, write: false },
  { name: '1M write QD4', bs: MiB, qd: 4, write: true },
];
const modes = [
  { name: 'default (bounce)', options: {}, inPlace: false },
  { name: 'allocateBuffer', options: {}, inPlace: true },
  { name: 'registration cache', options: { keyedMemory: { registrationCache: true } }, inPlace: false },
];
const regions = () => nativeBinding().resourceCounts().memoryRegions;
try {
  for (const w of workloads) {
    for (const m of modes) {
      const dev = await BlockDevice.open(url, { keepaliveIntervalMs: 0, queueSize: 64, ...m.options });
      const blocks = (64 * MiB) / w.bs;
      const buffers = Array.from({ length: w.qd }, () => (m.inPlace ? dev.device.allocateBuffer(w.bs) : Buffer.alloc(w.bs)).fill(0xa5));
      let ops = 0;
      let stop = false;
      let peak = 0;
      const worker = async (buf) => {
        while (!stop) {
          const offset = Math.floor(Math.random() * blocks) * w.bs;
          if (w.write) await dev.write(offset, buf);
          else await dev.read(offset, buf);
          ops++;
          peak = Math.max(peak, regions());
        }
      };
      // One pass to warm up (the cache registers each buffer once), then measure.
      await Promise.all(buffers.map((b) => (w.write ? dev.write(0, b) : dev.read(0, b))));
      const before = regions();
      const t0 = performance.now();
      const timer = setTimeout(() => (stop = true), seconds * 1000);
      await Promise.all(buffers.map(worker));
      clearTimeout(timer);
      const secs = (performance.now() - t0) / 1000;
      const made = Math.max(0, peak - before);
      console.log(`${w.name.padEnd(14)} ${m.name.padEnd(20)} ${(ops / secs).toFixed(0).padStart(7)} IOPS ${((ops * w.bs) / secs / MiB).toFixed(1).padStart(7)} MiB/s  registrations beyond the setup while measuring (peak): ${made}`);
      if (m.inPlace) for (const b of buffers) dev.device.freeBuffer(b);
      await dev.close();
    }
  }
} finally {
  await target.stop();
  rmSync(dir, { recursive: true, force: true });
}
