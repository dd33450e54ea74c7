#!/usr/bin/env node
// A/B of the target's CPU per I/O between two builds of vof, interleaved round by round.
//
//   node bench/target-cpu-ab.mjs --a ROOT_A --b ROOT_B [--rw randread] [--bs 4096] [--qd 32]
//                                [--seconds 4] [--rounds 3] [--size-mib 256]
//
// ROOT_A and ROOT_B are package roots, each with its dist/ (npm run build) and the addon its
// dist loads (build/ or prebuilds/: a dist copied elsewhere without them falls back to libuv
// file I/O, which is not the comparison you want). For each round, A's target and then B's
// (the order alternates per round) serve one TCP disk, driven from this process through the
// library of ROOT_B; the target's user and system CPU come from /proc/PID/stat over the
// measured seconds, the initiator's from process.cpuUsage(). Prints one line per run and the
// median (min–max) of each side's CPU per I/O.
import { spawn } from 'node:child_process';
import { writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const { values: o } = parseArgs({
  options: {
    a: { type: 'string' },
    b: { type: 'string' },
    rw: { type: 'string', default: 'randread' },
    bs: { type: 'string', default: '4096' },
    qd: { type: 'string', default: '32' },
    seconds: { type: 'string', default: '4' },
    rounds: { type: 'string', default: '3' },
    'size-mib': { type: 'string', default: '256' },
  },
});
if (!o.a || !o.b) {
  console.error('usage: node bench/target-cpu-ab.mjs --a ROOT_A --b ROOT_B [--rw randread|randwrite] [--bs N] [--qd N] [--seconds S] [--rounds N]');
  process.exit(2);
}
const roots = { A: resolve(o.a), B: resolve(o.b) };
const bs = Number(o.bs);
const qd = Number(o.qd);
const seconds = Number(o.seconds);
const rounds = Number(o.rounds);
const { BlockDevice, silentLogger } = await import(pathToFileURL(join(roots.B, 'dist/index.js')).href);
// The offsets vof bench uses (xorshift32): cheap enough not to show in the initiator's CPU.
const { randomSource } = await import(pathToFileURL(join(roots.B, 'dist/bench/vof-workload.js')).href);
// The target's utime and stime from /proc/PID/stat, as vof bench reads them.
const { processCpuTimes: cpuOf } = await import(pathToFileURL(join(roots.B, 'dist/bench/cpu.js')).href);

const dir = mkdtempSync(join(tmpdir(), 'vof-cpu-ab-'));
const image = join(dir, 'disk.img');
writeFileSync(image, Buffer.alloc(Number(o['size-mib']) << 20, 0x5a));


async function run(label) {
  const target = spawn(process.execPath, [join(roots[label], 'dist/cli/main.js'), 'target', '--listen', 'tcp://127.0.0.1:0', '--blk', `d=${image}`, '--log', 'warn'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const url = await new Promise((res, rej) => {
    target.stdout.on('data', (d) => {
      const m = /listening on (\S+)/.exec(String(d));
      if (m) res(m[1]);
    });
    target.once('exit', (code) => rej(new Error(`target ${label} exited with ${code}`)));
  });
  const dev = await BlockDevice.open(`${url}/d`, { keepaliveIntervalMs: 0, maxQueues: 1, log: silentLogger });
  const blocks = Math.floor(dev.capacity / bs);
  const next = randomSource(0x9e3779b9);
  let stop = false;
  let measuring = false;
  let ios = 0;
  const worker = async () => {
    const buf = Buffer.alloc(bs, 1);
    while (!stop) {
      const at = (o.rw.startsWith('rand') ? next() % blocks : ios % blocks) * bs;
      if (o.rw.endsWith('write')) await dev.write(at, buf);
      else await dev.read(at, buf);
      if (measuring) ios++;
    }
  };
  const workers = Array.from({ length: qd }, worker);
  await new Promise((r) => setTimeout(r, 1000)); // ramp
  const t0 = cpuOf(target.pid);
  const i0 = process.cpuUsage();
  measuring = true;
  await new Promise((r) => setTimeout(r, seconds * 1000));
  measuring = false;
  const t1 = cpuOf(target.pid);
  const i1 = process.cpuUsage(i0);
  stop = true;
  await Promise.all(workers);
  await dev.close();
  target.kill('SIGTERM');
  await new Promise((r) => target.once('exit', r));
  const per = (s) => (s * 1e6) / ios;
  return {
    label,
    iops: ios / seconds,
    targetUser: per(t1.user - t0.user),
    targetSystem: per(t1.system - t0.system),
    initiatorUser: i1.user / ios,
    initiatorSystem: i1.system / ios,
  };
}

const median = (xs) => {
  const s = [...xs].sort((p, q) => p - q);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const fmt = (xs) => `${median(xs).toFixed(1)} (${Math.min(...xs).toFixed(1)}–${Math.max(...xs).toFixed(1)})`;

const results = [];
try {
  for (let r = 1; r <= rounds; r++) {
    for (const label of r % 2 ? ['A', 'B'] : ['B', 'A']) {
      const res = await run(label);
      results.push(res);
      console.log(
        `round ${r} ${label}: ${Math.round(res.iops)} IOPS; target user ${res.targetUser.toFixed(1)} sys ${res.targetSystem.toFixed(1)} µs/I/O; ` +
          `initiator user ${res.initiatorUser.toFixed(1)} sys ${res.initiatorSystem.toFixed(1)} µs/I/O`,
      );
    }
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
console.log(`\n${o.rw} bs=${bs} qd=${qd}, ${rounds} rounds of ${seconds} s, median (min–max):`);
for (const label of ['A', 'B']) {
  const rs = results.filter((r) => r.label === label);
  console.log(
    `${label} (${roots[label]}): IOPS ${fmt(rs.map((r) => r.iops))}; target user ${fmt(rs.map((r) => r.targetUser))} sys ${fmt(rs.map((r) => r.targetSystem))} µs/I/O; ` +
      `initiator user ${fmt(rs.map((r) => r.initiatorUser))} sys ${fmt(rs.map((r) => r.initiatorSystem))} µs/I/O`,
  );
}
