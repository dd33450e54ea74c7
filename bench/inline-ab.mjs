#!/usr/bin/env node
// A/B of vof's inline-data extension over RDMA (docs/PROTOCOL.md "Inline data on keyed queues"):
// two `vof target`s on the same image, one offering inline data (--inline, default 4112 bytes), one with
// `--inline-data 0`, measured alternately with `vof bench --vm-part --target URL` so that both
// see the same machine load. Run it where rxe exists:
//
//   npm run build && npm run rxe -- --vm --timeout 1800 node bench/inline-ab.mjs [--rounds 2] [--time 3] [--inline 4112]
//       [--rw randread,randwrite] [--bs 4k] [--qd 1,16]
//
// Prints one line per run and a table of medians (IOPS, p50/p99 µs, target CPU µs per I/O over
// the whole bench invocation, ramps included).
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { randomBytes } from 'node:crypto';
import { VOF_CLI, startTarget } from '../scripts/start-target.mjs';

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '2' },
    time: { type: 'string', default: '3' },
    rw: { type: 'string', default: 'randread,randwrite' },
    bs: { type: 'string', default: '4k' },
    qd: { type: 'string', default: '1,16' },
    inline: { type: 'string', default: '4112' },
  },
});
const addr = process.env.VOF_RDMA_ADDR;
if (!addr) {
  console.error('inline-ab: VOF_RDMA_ADDR is not set: run it through `npm run rxe -- --vm node bench/inline-ab.mjs`');
  process.exit(2);
}

const dir = mkdtempSync(join('/dev/shm', 'vof-inline-ab-'));
const image = join(dir, 'disk.img');
writeFileSync(image, randomBytes(64 << 20));
const ticks = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;
const cpuSec = (pid) => {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / ticks; // utime, stime
};

const variants = [
  { name: `inline ${values.inline}`, args: ['--inline-data', values.inline] },
  { name: 'no inline', args: ['--inline-data', '0'] },
];
const targets = [];
try {
  for (const v of variants) {
    const t = await startTarget(['--listen', `rdma://${addr}:0`, '--blk', `disk0=${image}`, '--queues', '2', '--log', 'warn', ...v.args], { timeoutMs: 180_000, stderr: 'inherit' });
    targets.push({ ...v, t, url: `${t.urls[0]}/disk0` });
  }
  const results = [];
  for (let round = 1; round <= Number(values.rounds); round++) {
    for (const v of targets) {
      const out = join(dir, `run-${round}-${targets.indexOf(v)}.json`);
      const before = cpuSec(v.t.child.pid);
      execFileSync(process.execPath, [VOF_CLI, 'bench', '--vm-part', '--target', v.url, '--rw', values.rw, '--bs', values.bs, '--qd', values.qd, '--time', values.time, '--ramp', '1', '--json', out], { stdio: ['ignore', 'ignore', 'inherit'] });
      const targetCpu = cpuSec(v.t.child.pid) - before;
      const report = JSON.parse(readFileSync(out, 'utf8'));
      const runs = report.runs.filter((r) => r.system === 'vof-rdma');
      const ios = runs.reduce((n, r) => n + r.ios, 0);
      for (const r of runs) {
        const label = `${r.workload.rw} ${r.workload.bs / 1024}k QD${r.workload.qd}`;
        results.push({ variant: v.name, label, iops: r.iops, p50: r.latencyUs?.p50, p99: r.latencyUs?.p99, cpuUsPerIo: (targetCpu * 1e6) / ios });
        console.log(`round ${round}  ${v.name.padEnd(11)}  ${label.padEnd(18)}  ${Math.round(r.iops)} IOPS  p50 ${Math.round(r.latencyUs?.p50 ?? 0)} µs  p99 ${Math.round(r.latencyUs?.p99 ?? 0)} µs`);
      }
      console.log(`round ${round}  ${v.name.padEnd(11)}  target CPU ${targetCpu.toFixed(2)} s for ${ios} I/Os (whole invocation)`);
    }
  }
  const median = (xs) => {
    const s = [...xs].sort((a, b) => a - b);
    return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
  };
  console.log('\nmedians       workload            IOPS   p50 µs   p99 µs   target CPU µs/IO (per invocation)');
  for (const label of [...new Set(results.map((r) => r.label))]) {
    for (const v of variants) {
      const rs = results.filter((r) => r.label === label && r.variant === v.name);
      if (rs.length === 0) continue;
      console.log(
        `${v.name.padEnd(13)} ${label.padEnd(18)} ${String(Math.round(median(rs.map((r) => r.iops)))).padStart(6)} ${String(Math.round(median(rs.map((r) => r.p50 ?? 0)))).padStart(8)} ${String(Math.round(median(rs.map((r) => r.p99 ?? 0)))).padStart(8)} ${String(Math.round(median(rs.map((r) => r.cpuUsPerIo)))).padStart(10)}`,
      );
    }
  }
} finally {
  for (const v of targets) await v.t.stop();
  rmSync(dir, { recursive: true, force: true });
}
