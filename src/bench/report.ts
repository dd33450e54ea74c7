import { round } from './cpu.js';
import { groupBy, median, medianOrNull, runKey, summarizeRuns } from './rounds.js';
import type { BenchRun, Ratio, RunSummary, SkippedSystem, Spread } from './types.js';
import { sameWorkload, workloadLabel } from './workloads.js';

const CEILINGS = new Set(['iperf3', 'perftest']);
const isVof = (system: string) => system.startsWith('vof-');
/** vof over RDMA (vof-rdma, vof-null-rdma): its ceiling is perftest, not iperf3. */
const keyed = (system: string) => system.endsWith('-rdma') && isVof(system);
/**
 * vof systems compared with another vof system: RDMA with TCP, and the same transport with an
 * NBD source or the null device behind the target with the file export.
 */
/** Systems with no storage behind them (vof-null, vof-null-rdma, nvmeof-rdma-null, nvmeof-tcp-null). */
const isNull = (system: string) => /(^|-)null(-|$)/.test(system);
const VOF_VARIANTS = new Map<string, readonly string[]>([
  ['vof-rdma', ['vof-tcp']],
  ['vof-nbdsrc', ['vof-tcp']],
  ['vof-null', ['vof-tcp']],
  ['vof-null-rdma', ['vof-rdma']],
  // The kernel's virtio-blk through `vof vduse` against the library on the same transport, and
  // against the kernel's other block driver on the same vof target over TCP: its nbd client.
  ['vof-vduse', ['vof-tcp', 'vof-nbd-kernel']],
  ['vof-vduse-rdma', ['vof-rdma']],
  // The kernel's nbd client on `vof nbd` against the library, and against fio's nbd engine on
  // the same bridge (the kernel's block layer and NBD client against a user-space one).
  ['vof-nbd-kernel', ['vof-tcp', 'vof-nbd']],
]);

/**
 * vof against every anchor measured in the same environment: the same workload (block anchors,
 * and keyed against stream: vof-rdma ÷ vof-tcp), and MB/s against the raw transports' ceilings
 * (iperf3 for TCP; perftest's RDMA WRITE for reads, where the target writes into the
 * initiator's memory, and RDMA READ for writes). Runs are paired by round (vof's round N ÷ the
 * anchor's round N); a ratio is the median of those per-round ratios, with their min and max.
 */
export function computeRatios(runs: readonly BenchRun[]): Ratio[] {
  const pairs: { kind: Ratio['kind']; v: BenchRun; a: BenchRun }[] = [];
  for (const v of runs.filter((r) => isVof(r.system))) {
    for (const a of runs) {
      if (a === v || a.environment !== v.environment || a.round !== v.round) continue;
      if (CEILINGS.has(a.system)) {
        const fits =
          (a.system === 'iperf3' && !keyed(v.system)) ||
          (a.system === 'perftest' && keyed(v.system) && a.workload.rw === (v.workload.rw.endsWith('read') ? 'rdma-write' : 'rdma-read'));
        if (fits) pairs.push({ kind: 'ceiling', v, a });
        continue;
      }
      if (!sameWorkload(a.workload, v.workload)) continue;
      // vof systems against each other only as VOF_VARIANTS pairs.
      if (isVof(a.system) && !VOF_VARIANTS.get(v.system)?.includes(a.system)) continue;
      // Against the other block anchors, like storage with like: null with null_blk, a file with a file.
      if (!isVof(a.system) && isNull(a.system) !== isNull(v.system)) continue;
      pairs.push({ kind: 'same-workload', v, a });
    }
  }
  const div = (a: number | undefined, b: number | undefined) => (a === undefined || b === undefined || !(b > 0) ? null : round(a / b));
  const key = ({ v, a }: (typeof pairs)[number]) => `${v.system}|${a.system}|${v.environment}|${workloadLabel(v.workload)}|${workloadLabel(a.workload)}`;
  return groupBy(pairs, key).map((group) => {
    const { kind, v, a } = group[0]!;
    const perRound = group.map((p) => ({
      round: p.v.round,
      iops: kind === 'ceiling' ? null : div(p.v.iops, p.a.iops),
      mbps: div(p.v.mbps, p.a.mbps)!,
      p99: kind === 'ceiling' ? null : div(p.v.latencyUs?.p99, p.a.latencyUs?.p99),
    }));
    const pick = (f: (xs: number[]) => number) => {
      const of = (field: 'iops' | 'mbps' | 'p99') => {
        const xs = perRound.map((r) => r[field]).filter((x): x is number => x !== null);
        return xs.length ? round(f(xs)) : null;
      };
      return { iops: of('iops'), mbps: of('mbps')!, p99: of('p99') };
    };
    return {
      kind,
      system: v.system,
      anchor: a.system,
      environment: v.environment,
      workload: v.workload,
      anchorWorkload: a.workload,
      ...pick(median),
      min: pick((xs) => Math.min(...xs)),
      max: pick((xs) => Math.max(...xs)),
      rounds: perRound.length,
      perRound,
    };
  });
}

function table(head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i < 3 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

const num = (x: number | null | undefined, digits = 3) => (x === null || x === undefined ? '-' : x >= 1000 ? String(Math.round(x)) : String(Number(x.toPrecision(digits))));

/** `median (min–max)`, or the one value when there was a single round or no spread. */
export function formatSpread(x: Spread | null, digits = 3): string {
  if (x === null) return '-';
  if (x.min === x.max) return num(x.median, digits);
  return `${num(x.median, digits)} (${num(x.min, digits)}–${num(x.max, digits)})`;
}

/**
 * One row per system and workload: IOPS and MB/s as median (min–max) over the rounds, latency
 * and CPU per GB as medians.
 */
export function formatRuns(runs: readonly BenchRun[]): string {
  const summaries = summarizeRuns(runs);
  const groups = groupBy(runs, runKey);
  return table(
    ['system', 'env', 'workload', 'IOPS', 'MB/s', 'p50 µs', 'p99 µs', 'p99.9 µs', 'ini s/GB', 'tgt s/GB'],
    summaries.map((s, i) => {
      const m = (f: (r: BenchRun) => number | null | undefined) => num(medianOrNull(groups[i]!.map((r) => f(r) ?? null)));
      return [
        s.system,
        s.environment,
        workloadLabel(s.workload),
        formatSpread(s.iops),
        formatSpread(s.mbps),
        m((r) => r.latencyUs?.p50),
        m((r) => r.latencyUs?.p99),
        m((r) => r.latencyUs?.p999),
        m((r) => r.cpu.initiatorSecPerGB),
        m((r) => r.cpu.targetSecPerGB),
      ];
    }),
  );
}

/**
 * What one I/O cost each side (medians over rounds): CPU µs (user/system), system calls and
 * context switches, and for vof's in-process initiator the JS heap allocated and GCs; then why
 * a figure is missing ("-"), once per reason.
 */
export function formatPerIo(summaries: readonly RunSummary[]): string {
  const rows = summaries.filter((s) => s.perIo);
  if (rows.length === 0) return '';
  const us = (a: number | null, b: number | null) => `${num(a)}/${num(b)}`;
  const body = table(
    ['system', 'env', 'workload', 'ini usr/sys µs', 'tgt usr/sys µs', 'ini syscalls', 'tgt syscalls', 'ini ctx sw', 'tgt ctx sw', 'heap B', 'GCs/1k I/O'],
    rows.map((s) => {
      const c = s.perIo!;
      return [
        s.system,
        s.environment,
        workloadLabel(s.workload),
        us(c.initiator.userUs, c.initiator.systemUs),
        us(c.target.userUs, c.target.systemUs),
        num(c.initiator.syscalls),
        num(c.target.syscalls),
        num(c.initiator.contextSwitches),
        num(c.target.contextSwitches),
        num(c.heapBytes),
        num(c.gcs === null ? null : c.gcs * 1000),
      ];
    }),
  );
  const reasons = new Map<string, Set<string>>();
  for (const s of rows) for (const [field, why] of Object.entries(s.perIo!.unavailable)) reasons.set(`${field}: ${why}`, (reasons.get(`${field}: ${why}`) ?? new Set()).add(s.system));
  const notes = [...reasons].map(([reason, systems]) => `  - ${reason} (${[...systems].join(', ')})`);
  return notes.length ? `${body}\nnot measured:\n${notes.join('\n')}` : body;
}

/** vof runs' registered-memory and target-RSS figures (what issue 8's "zero registrations" goal reads). */
export function formatResources(runs: readonly BenchRun[]): string {
  const rows = runs.filter((r) => r.resources);
  if (rows.length === 0) return '';
  return table(
    ['system', 'env', 'workload', 'round', 'tgt reg_mr', 'ini reg_mr', 'tgt RSS MiB start', 'peak', 'end'],
    rows.map((r) => {
      const x = r.resources!;
      return [r.system, r.environment, workloadLabel(r.workload), String(r.round), num(x.targetRegistrations), num(x.initiatorRegistrations), num(x.targetRssMiB?.start), num(x.targetRssMiB?.peak), num(x.targetRssMiB?.end)];
    }),
  );
}

/** Ratios as the median of per-round ratios with their min–max (a single value after one round). */
export function formatRatios(ratios: readonly Ratio[]): string {
  const cell = (r: Ratio, f: 'iops' | 'mbps' | 'p99') => (r[f] === null ? '-' : formatSpread({ median: r[f]!, min: r.min[f]!, max: r.max[f]! }, 2));
  return table(
    ['vof ÷ anchor', 'env', 'workload', 'rounds', 'IOPS', 'MB/s', 'p99'],
    ratios.map((r) => [
      `${r.system} ÷ ${r.anchor}${r.kind === 'ceiling' ? ` (${r.anchorWorkload.rw})` : ''}`,
      r.environment,
      workloadLabel(r.workload),
      String(r.rounds),
      cell(r, 'iops'),
      cell(r, 'mbps'),
      cell(r, 'p99'),
    ]),
  );
}

export function formatSkipped(skipped: readonly SkippedSystem[]): string {
  return skipped.map((s) => `SKIPPED ${s.system} (${s.environment}): ${s.reason}`).join('\n');
}
