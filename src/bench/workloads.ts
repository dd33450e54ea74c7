import type { BlockRw, Workload } from './types.js';

export const DEFAULT_WORKLOADS: readonly Workload[] = [
  { rw: 'randread', bs: 4096, qd: 1 },
  { rw: 'randread', bs: 4096, qd: 32 },
  { rw: 'randwrite', bs: 4096, qd: 32 },
  { rw: 'read', bs: 131072, qd: 8 },
  { rw: 'write', bs: 131072, qd: 8 },
];

const RW: readonly BlockRw[] = ['randread', 'randwrite', 'read', 'write'];

export function isBlockRw(rw: string): rw is BlockRw {
  return (RW as readonly string[]).includes(rw);
}

/** "4k", "128K", "1m", "512" → bytes. */
export function parseSize(text: string): number {
  const m = /^(\d+)([kmg]?)i?b?$/i.exec(text.trim());
  if (!m) throw new Error(`not a size: "${text}" (examples: 4k, 128k, 1m, 256m)`);
  const unit = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g'];
  return Number(m[1]) * unit;
}

export function formatSize(bytes: number): string {
  for (const [unit, n] of [['g', 1024 ** 3], ['m', 1024 ** 2], ['k', 1024]] as const) if (bytes >= n && bytes % n === 0) return `${bytes / n}${unit}`;
  return String(bytes);
}

export function workloadLabel(w: Workload): string {
  return `${w.rw} ${formatSize(w.bs)} qd${w.qd}`;
}

export function sameWorkload(a: Workload, b: Workload): boolean {
  return a.rw === b.rw && a.bs === b.bs && a.qd === b.qd;
}

/**
 * The matrix: the default five workloads, or, when any of --rw/--bs/--qd is given, every
 * combination of the given lists (randread, 4k and 1 standing in for a list not given).
 */
export function workloadMatrix(rw?: string, bs?: string, qd?: string): Workload[] {
  if (rw === undefined && bs === undefined && qd === undefined) return [...DEFAULT_WORKLOADS];
  const rws = (rw ?? 'randread').split(',').map((s) => s.trim());
  for (const r of rws) if (!isBlockRw(r)) throw new Error(`--rw: "${r}" is not one of ${RW.join(', ')}`);
  const sizes = (bs ?? '4k').split(',').map(parseSize);
  for (const s of sizes) if (s < 512 || s % 512 !== 0) throw new Error(`--bs: ${s} is not a positive multiple of 512`);
  const depths = (qd ?? '1').split(',').map(Number);
  for (const d of depths) if (!Number.isInteger(d) || d < 1 || d > 1024) throw new Error(`--qd: "${d}" is not an integer from 1 to 1024`);
  return rws.flatMap((r) => sizes.flatMap((s) => depths.map((d) => ({ rw: r, bs: s, qd: d }))));
}
