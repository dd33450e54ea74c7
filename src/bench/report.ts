import { round } from './cpu.js';
import type { BenchRun, Ratio, SkippedSystem } from './types.js';
import { sameWorkload, workloadLabel } from './workloads.js';

const CEILINGS = new Set(['iperf3', 'perftest']);
const isVof = (system: string) => system.startsWith('vof-');

/**
 * vof against every anchor measured in the same environment: the same workload (block anchors,
 * and keyed against stream: vof-rdma ÷ vof-tcp), and MB/s against the raw transports' ceilings
 * (iperf3 for TCP; perftest's RDMA WRITE for reads, where the target writes into the
 * initiator's memory, and RDMA READ for writes).
 */
export function computeRatios(runs: readonly BenchRun[]): Ratio[] {
  const ratios: Ratio[] = [];
  const div = (a: number | undefined, b: number | undefined) => (a === undefined || b === undefined || !(b > 0) ? null : round(a / b));
  for (const v of runs.filter((r) => isVof(r.system))) {
    for (const a of runs) {
      if (a === v || a.environment !== v.environment) continue;
      if (CEILINGS.has(a.system)) {
        const fits =
          (a.system === 'iperf3' && v.system !== 'vof-rdma') ||
          (a.system === 'perftest' && v.system === 'vof-rdma' && a.workload.rw === (v.workload.rw.endsWith('read') ? 'rdma-write' : 'rdma-read'));
        if (fits) ratios.push({ kind: 'ceiling', system: v.system, anchor: a.system, environment: v.environment, workload: v.workload, anchorWorkload: a.workload, iops: null, mbps: div(v.mbps, a.mbps)!, p99: null });
        continue;
      }
      if (!sameWorkload(a.workload, v.workload)) continue;
      // vof systems against each other only as keyed ÷ stream.
      if (isVof(a.system) && !(v.system === 'vof-rdma' && a.system === 'vof-tcp')) continue;
      ratios.push({
        kind: 'same-workload',
        system: v.system,
        anchor: a.system,
        environment: v.environment,
        workload: v.workload,
        anchorWorkload: a.workload,
        iops: div(v.iops, a.iops),
        mbps: div(v.mbps, a.mbps)!,
        p99: div(v.latencyUs?.p99, a.latencyUs?.p99),
      });
    }
  }
  return ratios;
}

function table(head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i < 3 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

const num = (x: number | null | undefined, digits = 3) => (x === null || x === undefined ? '-' : x >= 1000 ? String(Math.round(x)) : String(Number(x.toPrecision(digits))));

export function formatRuns(runs: readonly BenchRun[]): string {
  return table(
    ['system', 'env', 'workload', 'IOPS', 'MB/s', 'p50 µs', 'p99 µs', 'p99.9 µs', 'ini s/GB', 'tgt s/GB', 'ini s/Mio', 'tgt s/Mio'],
    runs.map((r) => [
      r.system,
      r.environment,
      workloadLabel(r.workload),
      num(r.iops),
      num(r.mbps),
      num(r.latencyUs?.p50),
      num(r.latencyUs?.p99),
      num(r.latencyUs?.p999),
      num(r.cpu.initiatorSecPerGB),
      num(r.cpu.targetSecPerGB),
      num(r.cpu.initiatorSecPerMillionIos),
      num(r.cpu.targetSecPerMillionIos),
    ]),
  );
}

/** vof runs' registered-memory and target-RSS figures (what issue 8's "zero registrations" goal reads). */
export function formatResources(runs: readonly BenchRun[]): string {
  const rows = runs.filter((r) => r.resources);
  if (rows.length === 0) return '';
  return table(
    ['system', 'env', 'workload', 'tgt reg_mr', 'ini reg_mr', 'tgt RSS MiB start', 'peak', 'end'],
    rows.map((r) => {
      const x = r.resources!;
      return [r.system, r.environment, workloadLabel(r.workload), num(x.targetRegistrations), num(x.initiatorRegistrations), num(x.targetRssMiB?.start), num(x.targetRssMiB?.peak), num(x.targetRssMiB?.end)];
    }),
  );
}

export function formatRatios(ratios: readonly Ratio[]): string {
  return table(
    ['vof ÷ anchor', 'env', 'workload', 'IOPS', 'MB/s', 'p99'],
    ratios.map((r) => [
      `${r.system} ÷ ${r.anchor}${r.kind === 'ceiling' ? ` (${r.anchorWorkload.rw})` : ''}`,
      r.environment,
      workloadLabel(r.workload),
      num(r.iops, 2),
      num(r.mbps, 2),
      num(r.p99, 2),
    ]),
  );
}

export function formatSkipped(skipped: readonly SkippedSystem[]): string {
  return skipped.map((s) => `SKIPPED ${s.system} (${s.environment}): ${s.reason}`).join('\n');
}
