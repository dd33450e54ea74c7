#!/usr/bin/env node
// A/B of vof remote invalidation (docs/PROTOCOL.md "Remote invalidation on keyed queues"): one
// target in this process over rxe and two initiators of the same disk, one that negotiates
// VOF_F_REMOTE_INVALIDATE (each completion is a SEND with Invalidate of the request's key, no
// LOCAL_INV) and one that does not (the initiator posts a LOCAL_INV per key and waits for it
// before it reports the completion). Random I/O at a fixed queue depth, in alternating windows
// (only one initiator busy at a time, in ABBA order) under the same machine load. Per window: IOPS, mean
// latency, this process's CPU time per I/O (target and both initiators), and the initiator's
// LOCAL_INV work requests and remote invalidations per I/O. Run it where rxe exists:
//
//   npm run build && npm run rxe -- --vm --timeout 900 node bench/remote-invalidation.mjs [--qd 1] [--bs 4096] [--time 3] [--rounds 5] [--rw randread|randwrite]
import { BlockDevice, silentLogger } from '../dist/index.js';
import { abOptions, median, startAbTarget } from './rxe-ab.mjs';

const { addr, rw, qd, bs, seconds, writing, rounds } = abOptions('remote-invalidation', 1);
const MODES = ['remote', 'local'];

const target = await startAbTarget('remote-invalidation', addr);
const size = target.size;
const disks = {
  remote: await BlockDevice.open(target.url, { log: silentLogger }),
  local: await BlockDevice.open(target.url, { log: silentLogger, remoteInvalidation: false }),
};
/** LOCAL_INV work requests and remote invalidations seen by one initiator's connections. */
const keyStats = (disk) => {
  const sum = { local: 0, remote: 0 };
  for (const q of disk.device.queues) {
    sum.local += q.connection.keyStats.localInvalidations;
    sum.remote += q.connection.keyStats.remoteInvalidations;
  }
  return sum;
};
try {
  const blocks = size / bs;
  let active = null;
  let ios = 0;
  let latencyNs = 0n;
  let running = true;
  const worker = async (mode) => {
    const disk = disks[mode];
    const buf = Buffer.alloc(bs, 7);
    while (running) {
      if (active !== mode) {
        await new Promise((r) => setTimeout(r, 20));
        continue;
      }
      const at = Math.floor(Math.random() * blocks) * bs;
      const t = process.hrtime.bigint();
      if (writing) await disk.write(at, buf);
      else await disk.read(at, buf);
      latencyNs += process.hrtime.bigint() - t;
      ios++;
    }
  };
  const all = Promise.all(MODES.flatMap((m) => Array.from({ length: qd }, () => worker(m))));
  const results = { remote: [], local: [] };
  for (let round = 0; round <= rounds; round++) {
    // ABBA order, so a trend over the run (JIT, pools, the machine's load) favours neither.
    for (const mode of round % 2 === 0 ? MODES : [...MODES].reverse()) {
      active = mode;
      await new Promise((r) => setTimeout(r, round === 0 ? 3000 : 300)); // round 0 warms up; then let the other mode drain
      const ios0 = ios;
      const lat0 = latencyNs;
      const k0 = keyStats(disks[mode]);
      const cpu0 = process.cpuUsage();
      const started = process.hrtime.bigint();
      await new Promise((r) => setTimeout(r, seconds * 1000));
      const cpu = process.cpuUsage(cpu0);
      const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
      const k1 = keyStats(disks[mode]);
      const n = ios - ios0;
      if (round === 0) continue;
      const r = {
        iops: n / elapsed,
        latencyUs: Number(latencyNs - lat0) / n / 1000,
        cpuUsPerIo: (cpu.user + cpu.system) / n,
        localPerIo: (k1.local - k0.local) / n,
        remotePerIo: (k1.remote - k0.remote) / n,
      };
      results[mode].push(r);
      console.log(`round ${round} ${mode.padEnd(6)}: ${r.iops.toFixed(0)} IOPS, ${r.latencyUs.toFixed(0)} µs mean, ${r.cpuUsPerIo.toFixed(0)} µs CPU per I/O, ${r.localPerIo.toFixed(2)} LOCAL_INV and ${r.remotePerIo.toFixed(2)} remote invalidations per I/O`);
    }
  }
  active = null;
  running = false;
  await all;
  console.log(`\n${rw} bs ${bs} qd ${qd}, medians of ${rounds} windows of ${seconds} s:`);
  for (const mode of MODES) {
    const rs = results[mode];
    console.log(`  ${mode.padEnd(6)}: ${median(rs.map((r) => r.iops)).toFixed(0)} IOPS, ${median(rs.map((r) => r.latencyUs)).toFixed(0)} µs mean latency, ${median(rs.map((r) => r.cpuUsPerIo)).toFixed(0)} µs CPU per I/O, ${median(rs.map((r) => r.localPerIo)).toFixed(2)} LOCAL_INV per I/O`);
  }
} finally {
  await disks.remote.close();
  await disks.local.close();
  await target.close();
}
