#!/usr/bin/env node
// Markdown tables from a `vof bench --json` report, for bench/RESULTS.md:
//   node bench/results-md.mjs bench/results.json > tables.md
// Per environment: every run, vof ÷ anchor ratios by workload, and the vof runs' registered
// memory and target RSS. Figures are printed as the report has them (4 significant digits).
import { readFileSync } from 'node:fs';

const report = JSON.parse(readFileSync(process.argv[2] ?? 'bench/results.json', 'utf8'));
const sizeLabel = (bs) => (bs >= 1 << 20 && bs % (1 << 20) === 0 ? `${bs >> 20}m` : bs >= 1024 && bs % 1024 === 0 ? `${bs >> 10}k` : String(bs));
const label = (w) => `${w.rw} ${sizeLabel(w.bs)} qd${w.qd}`;
const num = (x) => (x === null || x === undefined ? '–' : String(x));
const out = [];

for (const env of ['host', 'vm']) {
  const runs = report.runs.filter((r) => r.environment === env);
  if (runs.length === 0) continue;
  out.push(`### ${env === 'host' ? 'Host' : 'soft-RoCE VM'}: runs`, '');
  out.push('| system | workload | IOPS | MB/s | p50 µs | p99 µs | p99.9 µs | initiator s/GB | target s/GB | initiator s/M I/O | target s/M I/O |');
  out.push('|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|');
  for (const r of runs) {
    const l = r.latencyUs;
    const c = r.cpu;
    out.push(`| ${r.system} | ${label(r.workload)} | ${num(r.iops)} | ${num(r.mbps)} | ${num(l?.p50)} | ${num(l?.p99)} | ${num(l?.p999)} | ${num(c.initiatorSecPerGB)} | ${num(c.targetSecPerGB)} | ${num(c.initiatorSecPerMillionIos)} | ${num(c.targetSecPerMillionIos)} |`);
  }
  out.push('');
  const ratios = report.ratios.filter((r) => r.environment === env);
  if (ratios.length) {
    const workloads = [...new Map(ratios.map((r) => [label(r.workload), r.workload])).keys()];
    const pairs = [...new Set(ratios.map((r) => `${r.system} ÷ ${r.anchor}${r.kind === 'ceiling' ? ` (${r.anchorWorkload.rw})` : ''}`))];
    out.push(`### ${env === 'host' ? 'Host' : 'soft-RoCE VM'}: ratios (vof ÷ anchor; IOPS, MB/s above 1 = vof faster; p99 above 1 = vof slower)`, '');
    out.push(`| vof ÷ anchor | ${workloads.join(' | ')} |`);
    out.push(`|---|${workloads.map(() => '--:').join('|')}|`);
    for (const pair of pairs) {
      const cells = workloads.map((w) => {
        const r = ratios.find((x) => `${x.system} ÷ ${x.anchor}${x.kind === 'ceiling' ? ` (${x.anchorWorkload.rw})` : ''}` === pair && label(x.workload) === w);
        if (!r) return '';
        return r.kind === 'ceiling' ? `MB/s ${r.mbps}` : `IOPS ${num(r.iops)}, p99 ${num(r.p99)}`;
      });
      out.push(`| ${pair} | ${cells.join(' | ')} |`);
    }
    out.push('');
  }
  const res = runs.filter((r) => r.resources);
  if (res.length) {
    out.push(`### ${env === 'host' ? 'Host' : 'soft-RoCE VM'}: registered memory and target RSS during each measurement`, '');
    out.push('| system | workload | target ibv_reg_mr | initiator ibv_reg_mr | target RSS MiB start | peak | end |');
    out.push('|---|---|--:|--:|--:|--:|--:|');
    for (const r of res) {
      const x = r.resources;
      out.push(`| ${r.system} | ${label(r.workload)} | ${num(x.targetRegistrations)} | ${num(x.initiatorRegistrations)} | ${num(x.targetRssMiB?.start)} | ${num(x.targetRssMiB?.peak)} | ${num(x.targetRssMiB?.end)} |`);
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
