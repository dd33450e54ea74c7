#!/usr/bin/env node
// Markdown tables from a `vof bench --json` report, for bench/RESULTS.md:
//   node bench/results-md.mjs bench/results.json > tables.md
// Per environment: every system and workload (median (min–max) over the report's rounds), vof ÷
// anchor ratios by workload (medians of per-round ratios), per-I/O costs, and the vof runs'
// registered memory and target RSS. Every table says how many rounds its figures are; a
// version-1 report (before --rounds) is one round. Figures as the report has them (4 digits).
import { readFileSync } from 'node:fs';
import { formatSpread } from '../dist/bench/report.js';
import { groupBy, medianOrNull, runKey, summarizeRuns } from '../dist/bench/rounds.js';

const report = JSON.parse(readFileSync(process.argv[2] ?? 'bench/results.json', 'utf8'));
const rounds = report.settings?.rounds ?? 1;
const roundsNote = rounds > 1 ? `${rounds} rounds, systems interleaved: median (min–max)` : 'one pass per system: no spread';
const sizeLabel = (bs) => (bs >= 1 << 20 && bs % (1 << 20) === 0 ? `${bs >> 20}m` : bs >= 1024 && bs % 1024 === 0 ? `${bs >> 10}k` : String(bs));
const label = (w) => `${w.rw} ${sizeLabel(w.bs)} qd${w.qd}`;
const num = (x) => (x === null || x === undefined ? '–' : String(x));
const out = [];

for (const env of ['host', 'vm']) {
  const runs = report.runs.filter((r) => r.environment === env);
  if (runs.length === 0) continue;
  const title = env === 'host' ? 'Host' : 'soft-RoCE VM';
  const summaries = summarizeRuns(runs);
  const groups = groupBy(runs, runKey);
  out.push(`### ${title}: runs (${roundsNote}; latency and CPU medians)`, '');
  out.push('| system | workload | rounds | IOPS | MB/s | p50 µs | p99 µs | p99.9 µs | initiator s/GB | target s/GB | initiator s/M I/O | target s/M I/O |');
  out.push('|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|');
  summaries.forEach((s, i) => {
    const m = (f) => num(medianOrNull(groups[i].map((r) => f(r) ?? null)));
    out.push(`| ${s.system} | ${label(s.workload)} | ${s.rounds} | ${formatSpread(s.iops, 4)} | ${formatSpread(s.mbps, 4)} | ${m((r) => r.latencyUs?.p50)} | ${m((r) => r.latencyUs?.p99)} | ${m((r) => r.latencyUs?.p999)} | ${m((r) => r.cpu.initiatorSecPerGB)} | ${m((r) => r.cpu.targetSecPerGB)} | ${m((r) => r.cpu.initiatorSecPerMillionIos)} | ${m((r) => r.cpu.targetSecPerMillionIos)} |`);
  });
  out.push('');
  const costs = summaries.filter((s) => s.perIo);
  if (costs.length) {
    out.push(`### ${title}: per I/O (medians over ${rounds === 1 ? 'a single pass' : `${rounds} rounds`}; CPU in µs user/system)`, '');
    out.push('| system | workload | initiator CPU | target CPU | initiator syscalls | target syscalls | initiator ctx switches | target ctx switches | JS heap bytes | GCs per 1k I/O |');
    out.push('|---|---|--:|--:|--:|--:|--:|--:|--:|--:|');
    for (const s of costs) {
      const c = s.perIo;
      out.push(`| ${s.system} | ${label(s.workload)} | ${num(c.initiator.userUs)}/${num(c.initiator.systemUs)} | ${num(c.target.userUs)}/${num(c.target.systemUs)} | ${num(c.initiator.syscalls)} | ${num(c.target.syscalls)} | ${num(c.initiator.contextSwitches)} | ${num(c.target.contextSwitches)} | ${num(c.heapBytes)} | ${num(c.gcs === null ? null : Number((c.gcs * 1000).toPrecision(4)))} |`);
    }
    const reasons = [...new Set(costs.flatMap((s) => Object.entries(s.perIo.unavailable).map(([k, why]) => `${k}: ${why}`)))];
    if (reasons.length) out.push('', 'Not measured (–):', ...reasons.map((r) => `- ${r}`));
    out.push('');
  }
  const ratios = report.ratios.filter((r) => r.environment === env);
  if (ratios.length) {
    const workloads = [...new Map(ratios.map((r) => [label(r.workload), r.workload])).keys()];
    const pairs = [...new Set(ratios.map((r) => `${r.system} ÷ ${r.anchor}${r.kind === 'ceiling' ? ` (${r.anchorWorkload.rw})` : ''}`))];
    out.push(`### ${title}: ratios (vof ÷ anchor; IOPS, MB/s above 1 = vof faster; p99 above 1 = vof slower; ${rounds > 1 ? `median (min–max) of ${rounds} per-round ratios` : 'a single pass'})`, '');
    out.push(`| vof ÷ anchor | ${workloads.join(' | ')} |`);
    out.push(`|---|${workloads.map(() => '--:').join('|')}|`);
    for (const pair of pairs) {
      const cells = workloads.map((w) => {
        const r = ratios.find((x) => `${x.system} ÷ ${x.anchor}${x.kind === 'ceiling' ? ` (${x.anchorWorkload.rw})` : ''}` === pair && label(x.workload) === w);
        if (!r) return '';
        // A version-1 ratio has no min/max: its one value stands for both.
        const cell = (f) => (r[f] === null ? '–' : formatSpread({ median: r[f], min: r.min?.[f] ?? r[f], max: r.max?.[f] ?? r[f] }, 2));
        return r.kind === 'ceiling' ? `MB/s ${cell('mbps')}` : `IOPS ${cell('iops')}, p99 ${cell('p99')}`;
      });
      out.push(`| ${pair} | ${cells.join(' | ')} |`);
    }
    out.push('');
  }
  const res = runs.filter((r) => r.resources);
  if (res.length) {
    out.push(`### ${title}: registered memory and target RSS during each measurement`, '');
    out.push('| system | workload | round | target ibv_reg_mr | initiator ibv_reg_mr | target RSS MiB start | peak | end |');
    out.push('|---|---|--:|--:|--:|--:|--:|--:|');
    for (const r of res) {
      const x = r.resources;
      out.push(`| ${r.system} | ${label(r.workload)} | ${r.round ?? 1} | ${num(x.targetRegistrations)} | ${num(x.initiatorRegistrations)} | ${num(x.targetRssMiB?.start)} | ${num(x.targetRssMiB?.peak)} | ${num(x.targetRssMiB?.end)} |`);
    }
    out.push('');
  }
}
const skipped = report.skipped ?? [];
if (skipped.length) {
  out.push('### Skipped', '');
  for (const s of skipped) out.push(`- ${s.system} (${s.environment}): ${s.reason}`);
  out.push('');
}
process.stdout.write(`${out.join('\n')}\n`);
