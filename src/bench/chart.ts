import type { TopLevelSpec } from 'vega-lite';
import { CliError } from '../cli/cli-error.js';
import type { BenchReport } from './types.js';
import { isBlockRw, workloadLabel } from './workloads.js';

/** Systems in the order they stand side by side: vof keyed, vof stream, then the anchors. */
const ORDER = ['vof-rdma', 'vof-tcp', 'vof-nbd', 'vof-nbdsrc', 'vof-null', 'vof-null-rdma', 'vof-vduse', 'vof-vduse-rdma', 'nbdkit', 'nvmeof-rdma', 'nvmeof-tcp', 'nvmeof-rdma-null', 'nvmeof-tcp-null', 'qsd-vduse'];

/**
 * The chart as SVG (Vega-Lite compiled to Vega, rendered headless by Vega's SVG renderer):
 * throughput (MB/s) and p99 latency (µs) per workload (medians over rounds), one bar per system side by side, the raw
 * transports' ceilings (iperf3, perftest) as dashed lines, and one pair of panels per
 * environment (host, soft-RoCE VM), each with its own log scale since the VM runs ~19x slower.
 */
export async function renderChart(report: BenchReport): Promise<string> {
  // One bar per system and workload: the median over rounds.
  const values = report.summaries
    .filter((r) => isBlockRw(r.workload.rw))
    .map((r) => ({
      environment: r.environment === 'vm' ? 'soft-RoCE VM (TCG)' : 'host',
      workload: workloadLabel(r.workload),
      system: r.system,
      mbps: r.mbps.median,
      p99: r.p99Us?.median ?? null,
    }));
  // Raw-transport ceilings (iperf3, perftest bandwidth) as dashed lines on the throughput panels.
  const ceilings = report.summaries
    .filter((r) => !isBlockRw(r.workload.rw) && r.workload.rw !== 'send-lat' && r.mbps.median > 0)
    .map((r) => ({ environment: r.environment === 'vm' ? 'soft-RoCE VM (TCG)' : 'host', label: `${r.system} ${r.workload.rw}: ${r.mbps.median} MB/s`, mbps: r.mbps.median }));
  const systems = [...ORDER.filter((s) => values.some((v) => v.system === s)), ...new Set(values.map((v) => v.system).filter((s) => !ORDER.includes(s)))];
  const workloads = [...new Set(values.map((v) => v.workload))];
  const environments = [...new Set(values.map((v) => v.environment))];
  // One panel per metric and environment (not a facet: each needs its own log scale).
  // Log scales need explicit bounds here: Vega-Lite otherwise bases log bars on a degenerate domain.
  const bounds = (field: 'mbps' | 'p99', environment: string): [number, number] => {
    const xs = [...values, ...(field === 'mbps' ? ceilings.map((c) => ({ ...c, p99: null })) : [])]
      .filter((v) => v.environment === environment)
      .map((v) => v[field])
      .filter((x): x is number => x !== null && x > 0);
    if (xs.length === 0) return [1, 10];
    return [10 ** Math.floor(Math.log10(Math.min(...xs))), 10 ** Math.ceil(Math.log10(Math.max(...xs) * 1.01))];
  };
  const width = 120 * Math.max(1, workloads.length);
  // The bars of one metric in one environment, side by side per workload.
  const bars = (field: 'mbps' | 'p99', environment: string) => ({
    mark: { type: 'bar' as const, tooltip: true },
    transform: [{ filter: { field: 'environment', equal: environment } }, { filter: `isValid(datum.${field}) && datum.${field} > 0` }],
    encoding: {
      x: { field: 'workload', type: 'nominal' as const, sort: workloads, title: null, axis: { labelAngle: 0 } },
      xOffset: { field: 'system', type: 'nominal' as const, scale: { domain: systems.filter((sy) => values.some((v) => v.environment === environment && v.system === sy)) } },
      y: { field, type: 'quantitative' as const, scale: { type: 'log' as const, domain: bounds(field, environment) }, title: field === 'mbps' ? 'MB/s (log)' : 'p99 µs (log, lower is better)' },
      y2: { datum: bounds(field, environment)[0] },
      color: { field: 'system', type: 'nominal' as const, sort: systems, scale: { scheme: 'tableau10' }, legend: { title: 'system', orient: 'top' as const } },
    },
  });
  const panel = (field: 'mbps' | 'p99', environment: string) => {
    const lines = field === 'mbps' ? ceilings.filter((c) => c.environment === environment) : [];
    const title = `${field === 'mbps' ? 'Throughput' : 'p99 latency'}: ${environment}${lines.length ? ' (dashed: raw transport ceiling)' : ''}`;
    if (lines.length === 0) return { title, width, height: 180, ...bars(field, environment) };
    const y = { field: 'mbps', type: 'quantitative' as const };
    return {
      title,
      width,
      height: 180,
      layer: [
        bars(field, environment),
        { data: { values: lines }, mark: { type: 'rule' as const, strokeDash: [4, 3], color: '#555' }, encoding: { y } },
        { data: { values: lines }, mark: { type: 'text' as const, align: 'right' as const, dy: -5, fontSize: 10, color: '#333' }, encoding: { y, x: { value: width - 2 }, text: { field: 'label' } } },
      ],
    };
  };
  const spec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: 'vof bench: keyed (RDMA) beside stream (TCP) beside each anchor', subtitle: `${report.machine.cpus} CPUs, ${report.machine.cpuModel}; ${report.startedAt}` },
    data: { values },
    config: { font: 'DejaVu Sans, Helvetica, Arial, sans-serif' },
    vconcat: environments.flatMap((env) => [panel('mbps', env), panel('p99', env)]),
    resolve: { scale: { y: 'independent', xOffset: 'independent' } },
  } as unknown as TopLevelSpec;
  const { vega, compile } = await loadVega();
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/**
 * vega and vega-lite (~11 MB) serve `vof bench --chart` alone, so they are optional peer
 * dependencies: a library user does not carry them, and the chart asks for them when wanted.
 */
async function loadVega(): Promise<{ vega: typeof import('vega'); compile: typeof import('vega-lite').compile }> {
  try {
    const [vega, lite] = await Promise.all([import('vega'), import('vega-lite')]);
    return { vega, compile: lite.compile };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ERR_MODULE_NOT_FOUND') throw err;
    throw new CliError('--chart needs the optional packages vega and vega-lite: npm install vega vega-lite (in the directory vof is installed in)', 1);
  }
}
