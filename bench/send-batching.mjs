#!/usr/bin/env node
// A/B of the RDMA send queue's batched posts (src/transport/rdma/send-queue.ts): one target and
// one initiator in this process over rxe, random I/O at a fixed queue depth on 2 virtqueues (as
// `vof bench`), measured in alternating windows with batching as built ("batched": a JS turn's
// chains in one postSend) and with every chain posted the moment it is accepted ("unbatched":
// one postSend, i.e. one ibv_post_send system call, per chain, the behaviour before batching).
// Both modes run on the same connections under the same machine load. Per window: IOPS, chains
// and postSend calls summed over every send queue of both sides, and this process's CPU time
// per I/O (target and initiator together). Run it where rxe exists:
//
//   npm run build && npm run rxe -- --vm --timeout 900 node bench/send-batching.mjs [--qd 32] [--bs 4096] [--time 3] [--rounds 5] [--rw randread|randwrite]
import { BlockDevice, silentLogger } from '../dist/index.js';
import { SendQueue } from '../dist/transport/rdma/send-queue.js';
import { abOptions, median, startAbTarget } from './rxe-ab.mjs';

const { addr, rw, qd, bs, seconds, writing, rounds } = abOptions('send-batching', 32);

// Every send queue that posts, found at its first postPending; "unbatched" posts at each accept.
const queues = new Set();
let unbatched = false;
const { postPending, accept } = SendQueue.prototype;
SendQueue.prototype.postPending = function (...args) {
  queues.add(this);
  return postPending.apply(this, args);
};
SendQueue.prototype.accept = function (...args) {
  accept.apply(this, args);
  if (unbatched) this.postPending();
};
const totals = () => {
  let calls = 0;
  let chains = 0;
  for (const q of queues) {
    calls += q.posted.calls;
    chains += q.posted.chains;
  }
  return { calls, chains };
};

const target = await startAbTarget('send-batching', addr);
const disk = await BlockDevice.open(target.url, { log: silentLogger });
const size = target.size;
try {
  const blocks = size / bs;
  let ios = 0;
  let running = true;
  const worker = async () => {
    const buf = Buffer.alloc(bs, 7);
    while (running) {
      const at = Math.floor(Math.random() * blocks) * bs;
      if (writing) await disk.write(at, buf);
      else await disk.read(at, buf);
      ios++;
    }
  };
  const all = Promise.all(Array.from({ length: qd }, worker));
  await new Promise((r) => setTimeout(r, 3000)); // warm-up: connections, pools, the JIT
  const results = { batched: [], unbatched: [] };
  for (let round = 0; round < rounds; round++) {
    for (const mode of ['batched', 'unbatched']) {
      unbatched = mode === 'unbatched';
      await new Promise((r) => setTimeout(r, 200)); // let the other mode's I/O drain through
      const ios0 = ios;
      const t0 = totals();
      const cpu0 = process.cpuUsage();
      const started = process.hrtime.bigint();
      await new Promise((r) => setTimeout(r, seconds * 1000));
      const cpu = process.cpuUsage(cpu0);
      const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
      const t1 = totals();
      const n = ios - ios0;
      const r = { iops: n / elapsed, callsPerIo: (t1.calls - t0.calls) / n, chainsPerIo: (t1.chains - t0.chains) / n, cpuUsPerIo: (cpu.user + cpu.system) / n };
      results[mode].push(r);
      console.log(`round ${round + 1} ${mode.padEnd(9)}: ${r.iops.toFixed(0)} IOPS, ${r.chainsPerIo.toFixed(2)} chains and ${r.callsPerIo.toFixed(2)} postSend calls per I/O, ${r.cpuUsPerIo.toFixed(0)} µs CPU per I/O (both sides)`);
    }
  }
  running = false;
  await all;
  console.log(`\n${rw} bs ${bs} qd ${qd}, medians of ${rounds} windows of ${seconds} s:`);
  for (const mode of ['batched', 'unbatched']) {
    const rs = results[mode];
    console.log(`  ${mode.padEnd(9)}: ${median(rs.map((r) => r.iops)).toFixed(0)} IOPS, ${median(rs.map((r) => r.callsPerIo)).toFixed(2)} postSend calls per I/O, ${median(rs.map((r) => r.cpuUsPerIo)).toFixed(0)} µs CPU per I/O`);
  }
} finally {
  await disk.close();
  await target.close();
}
