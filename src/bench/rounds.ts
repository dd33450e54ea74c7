import { round } from './cpu.js';
import type { BenchRun, PerIoCost, RunSummary, SideCostPerIo, Spread } from './types.js';
import { workloadLabel } from './workloads.js';

/**
 * Rounds: each workload is measured `rounds` times per system, the systems interleaved (every
 * system once per round), so that a neighbour's load that comes and goes hits vof and its
 * anchors alike; a figure is then the median over rounds with its min–max, and a ratio the
 * median of per-round ratios (vof's round N against the anchor's round N, run minutes apart at
 * most), which cancels slow drifts that a ratio of medians would keep.
 */

/** The median of a non-empty list (the mean of the middle two for an even count). */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) throw new Error('median of nothing');
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** Median, min and max of a non-empty list, to four significant digits. */
export function spread(xs: readonly number[]): Spread {
  return { median: round(median(xs)), min: round(Math.min(...xs)), max: round(Math.max(...xs)) };
}

/** The median of the values that are not null, or null when none is. */
export function medianOrNull(xs: readonly (number | null)[]): number | null {
  const known = xs.filter((x): x is number => x !== null);
  return known.length ? round(median(known)) : null;
}

/**
 * The order of the systems in round `n` (1-based): the list rotated by n - 1, so that no system
 * always runs first (a cold page cache or a warming CPU clock would then favour the same one).
 */
export function roundOrder<T>(systems: readonly T[], n: number): T[] {
  if (systems.length === 0) return [];
  const k = (n - 1) % systems.length;
  return [...systems.slice(k), ...systems.slice(0, k)];
}

/** Groups items by a string key, keeping the order in which each key first appears. */
export function groupBy<T>(items: readonly T[], key: (item: T) => string): T[][] {
  const groups = new Map<string, T[]>();
  for (const item of items) {
    const k = key(item);
    const g = groups.get(k);
    if (g) g.push(item);
    else groups.set(k, [item]);
  }
  return [...groups.values()];
}

const SIDE_FIELDS = ['userUs', 'systemUs', 'syscalls', 'contextSwitches'] as const;

function medianSide(sides: readonly SideCostPerIo[]): SideCostPerIo {
  return Object.fromEntries(SIDE_FIELDS.map((f) => [f, medianOrNull(sides.map((s) => s[f]))])) as unknown as SideCostPerIo;
}

/** Each per-I/O figure's median over the rounds that have one; the reasons of every round. */
export function medianPerIo(costs: readonly PerIoCost[]): PerIoCost | null {
  if (costs.length === 0) return null;
  return {
    initiator: medianSide(costs.map((c) => c.initiator)),
    target: medianSide(costs.map((c) => c.target)),
    heapBytes: medianOrNull(costs.map((c) => c.heapBytes)),
    gcs: medianOrNull(costs.map((c) => c.gcs)),
    unavailable: Object.assign({}, ...costs.map((c) => c.unavailable)) as Record<string, string>,
  };
}

/** What makes runs rounds of the same figure: system, environment and workload. */
export const runKey = (r: BenchRun): string => `${r.system}|${r.environment}|${workloadLabel(r.workload)}`;

/** One summary per system, environment and workload, in the order they first ran. */
export function summarizeRuns(runs: readonly BenchRun[]): RunSummary[] {
  return groupBy(runs, runKey).map((g) => {
    const p99s = g.map((r) => r.latencyUs?.p99).filter((x): x is number => x !== undefined);
    return {
      system: g[0]!.system,
      environment: g[0]!.environment,
      workload: g[0]!.workload,
      rounds: g.length,
      iops: spread(g.map((r) => r.iops)),
      mbps: spread(g.map((r) => r.mbps)),
      p99Us: p99s.length ? spread(p99s) : null,
      perIo: medianPerIo(g.flatMap((r) => (r.perIo ? [r.perIo] : []))),
    };
  });
}
