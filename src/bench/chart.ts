import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import type { BenchReport } from './types.js';
import { isBlockRw, workloadLabel } from './workloads.js';

/** Systems in the order they stand side by side: vof keyed, vof stream, then the anchors. */
const ORDER = ['vof-rdma', 'vof-tcp', 'vof-nbd', 'nbdkit', 'nvmeof-rdma', 'nvmeof-tcp'];

/**
 * The chart as SVG (Vega-Lite compiled to Vega, rendered headless by Vega's SVG renderer):
 * throughput (MB/s) and p99 latency (µs) per workload, one bar per system side by side, one row
 * per environment (host, soft-RoCE VM) with its own log scale, since the VM runs ~19x slower.
 */
export async function renderChart(report: BenchReport): Promise<string> {
  const values = report.runs
    .filter((r) => isBlockRw(r.workload.rw))
    .map((r) => ({
      environment: r.environment === 'vm' ? 'soft-RoCE VM (TCG)' : 'host',
      workload: workloadLabel(r.workload),
      system: r.system,
      mbps: r.mbps,
      p99: r.latencyUs?.p99 ?? null,
    }));
  const systems = [...ORDER.filter((s) => values.some((v) => v.system === s)), ...new Set(values.map((v) => v.system).filter((s) => !ORDER.includes(s)))];
  const workloads = [...new Set(values.map((v) => v.workload))];
  const panel = (field: 'mbps' | 'p99', title: string) => ({
    facet: { row: { field: 'environment', type: 'nominal' as const, title: null, header: { labelFontWeight: 'bold', labelFontSize: 12 } } },
    resolve: { scale: { y: 'independent' as const } },
    spec: {
      title,
      width: 120 * Math.max(1, workloads.length),
      height: 180,
      mark: { type: 'bar' as const, tooltip: true },
      transform: [{ filter: `isValid(datum.${field}) && datum.${field} > 0` }],
      encoding: {
        x: { field: 'workload', type: 'nominal' as const, sort: workloads, title: null, axis: { labelAngle: 0 } },
        xOffset: { field: 'system', type: 'nominal' as const, sort: systems },
        y: { field, type: 'quantitative' as const, scale: { type: 'log' as const }, title: field === 'mbps' ? 'MB/s (log)' : 'p99 µs (log, lower is better)' },
        color: { field: 'system', type: 'nominal' as const, sort: systems, scale: { scheme: 'tableau10' }, legend: { title: 'system', orient: 'top' as const } },
      },
    },
  });
  const spec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: 'vof bench: keyed (RDMA) beside stream (TCP) beside each anchor', subtitle: `${report.machine.cpus} CPUs, ${report.machine.cpuModel}; ${report.startedAt}` },
    data: { values },
    config: { font: 'DejaVu Sans, Helvetica, Arial, sans-serif' },
    vconcat: [panel('mbps', 'Throughput'), panel('p99', 'p99 latency')],
  } as unknown as TopLevelSpec;
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}
