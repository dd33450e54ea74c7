#!/usr/bin/env node
// The vof nbd bridge's own cost per I/O, beside nbdkit's file plugin, both driven by fio's nbd
// engine (issue 18: vof-nbd ÷ nbdkit). On a shared machine compare CPU and system calls per I/O,
// not IOPS.
//
//   npm run build
//   node bench/nbd-bridge-cost.mjs [--systems vof-nbd,nbdkit] [--workloads read:128k:8,write:128k:8,randread:4k:1]
//        [--time 5] [--ramp 1] [--rounds 1] [--bridge-node-args='--cpu-prof --cpu-prof-dir /tmp/prof']
//
// vof-nbd: a vof target (`vof target`, the image as a file disk) ← `vof nbd` over TCP ← fio
// (--ioengine=nbd, Unix socket). nbdkit: `nbdkit file` on the same image ← fio (TCP loopback, as
// `vof bench` runs it). Per workload it prints IOPS and p99 from fio, and per process (the
// bridge, the vof target, nbdkit) user and system CPU µs, system calls and context switches per
// I/O over fio's measured window (after the ramp), through the bench's own SideWindow (perf).
// `--bridge-node-args` go to the bridge's node (e.g. --cpu-prof, --trace-gc; stderr is shown).
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, openSync, writeSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { randomFillSync } from 'node:crypto';
import { SideWindow } from '../dist/bench/per-io.js';
import { freePort } from '../dist/bench/free-port.js';

const { values: o } = parseArgs({
  options: {
    systems: { type: 'string', default: 'vof-nbd,nbdkit' },
    workloads: { type: 'string', default: 'read:128k:8,write:128k:8,randread:4k:1' },
    time: { type: 'string', default: '5' },
    ramp: { type: 'string', default: '1' },
    rounds: { type: 'string', default: '1' },
    size: { type: 'string', default: '256' }, // MiB
    'bridge-node-args': { type: 'string', default: '' },
    // strace -c -f on the first process of each system (the bridge, nbdkit) for this many
    // seconds of each workload: which system calls (strace slows it: the per-I/O figures of
    // that pass are not comparable).
    strace: { type: 'string', default: '0' },
  },
});
const CLI = new URL('../dist/cli/main.js', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'vof-nbdcost-'));
const image = join(dir, 'disk.img');
{
  // Random bytes, written once: no sparse holes answered for free by either server.
  const fd = openSync(image, 'w');
  const chunk = Buffer.alloc(1 << 20);
  for (let i = 0; i < Number(o.size); i++) writeSync(fd, randomFillSync(chunk));
  closeSync(fd);
}

/** A child that prints `lines` lines on stdout when ready; resolves with them. */
function start(cmd, args, lines, showStderr) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', showStderr ? 'inherit' : 'pipe'] });
  const got = [];
  const exited = new Promise((r) => child.once('exit', r));
  const ready = new Promise((resolve, reject) => {
    if (lines === 0) resolve(got);
    const rl = createInterface({ input: child.stdout });
    rl.on('line', (l) => {
      // Anything else on stdout (--trace-gc's lines) passes through to stderr.
      if (!/^(listening on |nbd)/.test(l)) return void process.stderr.write(`${l}\n`);
      got.push(l.trim());
      if (got.length === lines) resolve(got);
    });
    void exited.then((code) => reject(new Error(`${cmd} ${args.join(' ')} exited with ${code}`)));
  });
  ready.catch(() => {}); // (awaited by the caller; an exit after readiness is not an error here)
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
  };
  return { child, ready, stop };
}

function fio(engine, rw, bs, qd) {
  const args = ['--name=nbdcost', ...engine, `--rw=${rw}`, `--bs=${bs}`, `--iodepth=${qd}`, `--size=${Number(o.size)}m`, '--time_based=1',
    `--runtime=${o.time}`, `--ramp_time=${o.ramp}`, '--lat_percentiles=1', '--percentile_list=50:99:99.9', '--randrepeat=0', '--norandommap=1',
    '--numjobs=1', '--output-format=json'];
  return new Promise((resolve, reject) => {
    const c = spawn('fio', args, { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    c.stdout.on('data', (d) => (out += d));
    c.once('exit', (code) => (code === 0 ? resolve(JSON.parse(out.slice(out.indexOf('{')))) : reject(new Error(`fio exited with ${code}`))));
  });
}

async function measure(system, engine, sides, rw, bs, qd) {
  const windows = sides.map(([, pid]) => new SideWindow([pid]));
  const opened = new Promise((r) => setTimeout(r, Number(o.ramp) * 1000)).then(() => Promise.all(windows.map((w) => w.start())));
  let traced = null;
  if (Number(o.strace) > 0) {
    traced = new Promise((r) => setTimeout(r, Number(o.ramp) * 1000)).then(
      () =>
        new Promise((resolve) => {
          const c = spawn('strace', ['-c', '-f', '-p', String(sides[0][1])], { stdio: ['ignore', 'ignore', 'pipe'] });
          let err = '';
          c.stderr.on('data', (d) => (err += d));
          setTimeout(() => c.kill('SIGINT'), Number(o.strace) * 1000);
          c.once('exit', () => resolve(err));
        }),
    );
  }
  const json = await fio(engine, rw, bs, qd);
  if (traced) console.log(await traced);
  await opened;
  const totals = await Promise.all(windows.map((w) => w.stop()));
  const job = json.jobs[0];
  const d = job.read.total_ios >= job.write.total_ios ? job.read : job.write;
  const ios = job.read.total_ios + job.write.total_ios;
  const pct = d.lat_ns.percentile;
  const p = (k) => (pct[Object.keys(pct).find((x) => Number(x) === k)] / 1000).toFixed(0);
  const f = (x, digits = 1) => (x === null ? 'n/a' : x.toFixed(digits));
  const fioUs = ((job.usr_cpu + job.sys_cpu) / 100) * (d.runtime / 1000) * 1e6 / ios;
  let line = `${system.padEnd(7)} ${`${rw} ${bs} qd${qd}`.padEnd(18)} ${String(Math.round(d.iops)).padStart(6)} IOPS  p50 ${p(50).padStart(5)} p99 ${p(99).padStart(6)} µs  fio ${f(fioUs)} µs`;
  sides.forEach(([name], i) => {
    const t = totals[i];
    const us = (s) => (s === null ? null : (s * 1e6) / ios);
    line += ` | ${name}: usr ${f(us(t.userSec))} sys ${f(us(t.systemSec))} µs, ${f(t.syscalls === null ? null : t.syscalls / ios, 2)} syscalls, ${f(t.contextSwitches === null ? null : t.contextSwitches / ios, 2)} cs`;
  });
  console.log(line);
}

const workloads = o.workloads.split(',').map((w) => w.split(':'));
const stops = [];
try {
  const systems = {};
  for (const s of o.systems.split(',')) {
    if (s === 'vof-nbd') {
      const target = start(process.execPath, [CLI, 'target', '--listen', 'tcp://127.0.0.1:0', '--blk', `disk0=${image}`, '--log', 'warn'], 1, true);
      stops.push(target.stop);
      const [listening] = await target.ready;
      const url = `${listening.replace(/^listening on /, '')}/disk0`;
      const nodeArgs = o['bridge-node-args'].split(' ').filter(Boolean);
      const bridge = start(process.execPath, [...nodeArgs, CLI, 'nbd', url, '--socket', join(dir, 'nbd.sock')], 1, true);
      stops.unshift(bridge.stop);
      const [uri] = await bridge.ready;
      console.error(`bridge pid ${bridge.child.pid}, target pid ${target.child.pid}: ${uri}`);
      systems[s] = { engine: ['--ioengine=nbd', `--uri=${uri}`], sides: [['bridge', bridge.child.pid], ['target', target.child.pid]] };
    } else if (s === 'nbdkit') {
      const port = await freePort();
      const nbdkit = start('nbdkit', ['--foreground', '--ipaddr', '127.0.0.1', '--port', String(port), 'file', `file=${image}`], 0, true);
      stops.push(nbdkit.stop);
      await new Promise((r) => setTimeout(r, 1000));
      systems[s] = { engine: ['--ioengine=nbd', `--uri=nbd://127.0.0.1:${port}/`], sides: [['nbdkit', nbdkit.child.pid]] };
    } else throw new Error(`unknown system ${s}`);
  }
  for (let round = 0; round < Number(o.rounds); round++) {
    for (const [rw, bs, qd] of workloads) {
      for (const [name, s] of Object.entries(systems)) await measure(name, s.engine, s.sides, rw, bs, qd);
    }
  }
} finally {
  for (const stop of stops) await stop();
  rmSync(dir, { recursive: true, force: true });
}
