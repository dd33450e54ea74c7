import { mkdtempSync, rmSync, writeFileSync, openSync, closeSync, ftruncateSync, writeSync } from 'node:fs';
import { cpus, hostname, loadavg, release, tmpdir, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { renderChart } from '../bench/chart.js';
import { measureEnvironment, SYSTEM_NAMES } from '../bench/measure.js';
import { ProgressLine } from '../bench/progress-line.js';
import { computeRatios, formatPerIo, formatRatios, formatResources, formatRuns, formatSkipped } from '../bench/report.js';
import { summarizeRuns } from '../bench/rounds.js';
import { ANCHOR_GROUPS, ensureTools } from '../bench/setup.js';
import type { BenchReport, BenchRun, MachineInfo, SkippedSystem } from '../bench/types.js';
import { runInVm } from '../bench/vm-part.js';
import { formatSize, parseSize, workloadMatrix } from '../bench/workloads.js';
import { parseFileIoMode } from '../target/blk/file-io.js';
import { listRdmaDevices } from '../transport/rdma/rdma-devices.js';
import { CliError, parseIntOption } from './cli-error.js';
import { parseCommand } from './options.js';
import { BENCH_COMMAND } from './bench-options.js';

function machineInfo(): MachineInfo {
  const c = cpus();
  return { hostname: hostname(), cpus: c.length, cpuModel: c[0]?.model.trim() ?? 'unknown', memoryBytes: totalmem(), kernel: release(), node: process.version, loadAverage: loadavg().map((x) => Number(x.toFixed(2))) };
}

/** A scratch image of `bytes`, filled with a pattern so that reads move real data (not holes). */
function makeImage(dir: string, bytes: number): string {
  const path = join(dir, 'disk.img');
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, bytes);
    const chunk = Buffer.alloc(1 << 20, 0x5a);
    for (let off = 0; off < bytes; off += chunk.length) writeSync(fd, chunk, 0, Math.min(chunk.length, bytes - off), off);
  } finally {
    closeSync(fd);
  }
  return path;
}

function positive(value: string | undefined, name: string, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0) throw new CliError(`--${name} must be a non-negative number of seconds, got "${value}"`);
  return n;
}

/** Which local RDMA device and address the keyed part can use here, or why not. */
function localRdma(): { addr: string; device: string } | string {
  let devices;
  try {
    devices = listRdmaDevices();
  } catch (err) {
    return `RDMA unavailable here (${(err as Error).message.split('\n')[0]})`;
  }
  const active = devices.find((d) => d.ports.some((p) => p.state === 'ACTIVE'));
  if (!active) return 'this host has no RDMA device with an ACTIVE port; --rdma vm runs the keyed part in the soft-RoCE VM';
  const addr = process.env.VOF_RDMA_ADDR;
  if (!addr) return `RDMA device ${active.name} found, but no address: set VOF_RDMA_ADDR to an IPv4 address on its netdev`;
  return { addr, device: process.env.VOF_RDMA_DEV ?? active.name };
}

export async function runBench(argv: string[]): Promise<number> {
  const parsed = parseCommand(BENCH_COMMAND, argv);
  if (!parsed) return 0;
  const { values } = parsed;
  const startedAt = new Date().toISOString();
  const vmPart = values['vm-part'];
  const quick = values.quick;
  let workloads;
  let sizeBytes;
  try {
    workloads = workloadMatrix(values.rw, values.bs, values.qd);
    sizeBytes = parseSize(values.size ?? (quick ? '64m' : vmPart ? '64m' : '256m'));
  } catch (err) {
    throw new CliError((err as Error).message);
  }
  if (sizeBytes < 1 << 20) throw new CliError('--size must be at least 1m');
  const queues = parseIntOption(values.queues, 'queues', 1, 64) ?? 2;
  // Three rounds by default: the median then ignores one disturbed pass. --quick trades that
  // for time, and says so wherever a figure is printed.
  const rounds = parseIntOption(values.rounds, 'rounds', 1, 100) ?? (quick ? 1 : 3);
  const timeSec = positive(values.time, 'time', quick ? 1 : 5);
  const rampSec = positive(values.ramp, 'ramp', quick ? 0.5 : 1);
  const vmTimeSec = positive(values['vm-time'], 'vm-time', quick ? 1 : 3);
  if (timeSec <= 0) throw new CliError('--time must be positive');
  const rdmaMode = values.rdma ?? 'auto';
  if (!['auto', 'vm', 'off'].includes(rdmaMode)) throw new CliError(`--rdma must be auto, vm or off, not "${rdmaMode}"`);
  let fileIo: string | null = null;
  try {
    if (values['file-io'] !== undefined) fileIo = parseFileIoMode(values['file-io'], '--file-io');
  } catch (err) {
    throw new CliError((err as Error).message);
  }
  let only: Set<string> | null = null;
  if (values.systems !== undefined) {
    only = new Set(values.systems.split(',').map((x) => x.trim()).filter(Boolean));
    const unknown = [...only].filter((x) => !(SYSTEM_NAMES as readonly string[]).includes(x));
    if (unknown.length || only.size === 0) throw new CliError(`--systems takes a comma-separated list of ${SYSTEM_NAMES.join(', ')}${unknown.length ? `; unknown: ${unknown.join(', ')}` : ''}`);
  }
  const progress = new ProgressLine();
  const log = (line: string) => progress.log(line);
  const cpuProfDir = values['cpu-prof'] ? resolve(values['cpu-prof']) : null;

  const skipped: SkippedSystem[] = [];
  let rdma: { addr: string; device: string } | null = null;
  // The keyed part runs in the soft-RoCE VM when asked (--rdma vm), or by default (auto) when this
  // host has no RDMA device; --quick never starts the VM (it takes minutes).
  let inVm = rdmaMode === 'vm' && !vmPart;
  let vmIsFallback = false;
  if (rdmaMode === 'auto' || vmPart) {
    const found = localRdma();
    if (typeof found === 'string') {
      if (vmPart) throw new Error(`inside the VM: ${found}`);
      if (!quick) {
        inVm = true;
        vmIsFallback = true;
        log(`bench: no RDMA device on this host (${found}): the keyed part runs in the soft-RoCE VM`);
      } else {
        const reason = `${found}; --quick does not start the soft-RoCE VM (use --rdma vm)`;
        skipped.push({ system: 'vof-rdma', environment: 'host', reason });
        log(`bench: SKIPPED vof-rdma (host): ${reason}`);
      }
    } else rdma = found;
  }
  if (values.anchors && !vmPart) ensureTools([ANCHOR_GROUPS.stream, ...(rdma || inVm ? [ANCHOR_GROUPS.keyed] : [])], log);

  // In the VM, /tmp is the host's (9p, slow): the image lives in the guest's own /dev/shm.
  const dir = mkdtempSync(join(vmPart ? '/dev/shm' : tmpdir(), 'vof-bench-'));
  const runs: BenchRun[] = [];
  let failures = 0;
  let vmMachine: MachineInfo['vm'];
  try {
    const image = makeImage(dir, sizeBytes);
    const measured = await measureEnvironment({
      environment: vmPart ? 'vm' : 'host',
      workloads,
      timeSec,
      rampSec,
      rounds,
      sizeBytes,
      queues,
      image,
      targetUrl: values.target ?? null,
      rdma,
      anchors: values.anchors === true,
      nbd: values.anchors === true,
      // The kernel's virtio-blk on VDUSE needs root and Linux >= 5.15: where the kernel anchors
      // (nvmet) run, in the VM or on a host with RDMA.
      vduse: values.anchors === true && (vmPart || rdma !== null),
      // The kernel's nbd client likewise (root, the nbd module).
      nbdKernel: values.anchors === true && (vmPart || rdma !== null),
      only,
      cpuProfDir,
      fileIo,
      progress,
    });
    runs.push(...measured.runs);
    skipped.push(...measured.skipped);
    failures += measured.failures;

    if (inVm) {
      log(`bench: the keyed part in the soft-RoCE VM (TCG, ~19x slower: ${vmTimeSec} s per workload) …`);
      const pass = [
        ...(values.rw ? ['--rw', values.rw] : []),
        ...(values.bs ? ['--bs', values.bs] : []),
        ...(values.qd ? ['--qd', values.qd] : []),
        '--queues', String(queues), '--rounds', String(rounds), '--time', String(vmTimeSec), '--ramp', String(Math.min(rampSec, 1)), '--size', '64m',
        ...(values.anchors ? ['--anchors'] : []),
        ...(values.systems !== undefined ? ['--systems', values.systems] : []),
        ...(cpuProfDir ? ['--cpu-prof', cpuProfDir] : []),
      ];
      // vof-rdma, vof-tcp, vof-null, vof-null-rdma; with anchors vof-nbdsrc, vof-nbd,
      // vof-nbd-kernel, nvmeof-{rdma,tcp}[-null], vof-vduse[-rdma] and qsd-vduse; or those of --systems.
      const systems = only ? only.size : values.anchors ? 14 : 4;
      const timeout = 300 + systems * workloads.length * rounds * (vmTimeSec + 1 + 30);
      try {
        const vm = await runInVm(pass, timeout);
        runs.push(...vm.runs);
        skipped.push(...vm.skipped);
        failures += vm.skipped.filter((s) => s.reason.startsWith('FAILED')).length;
        vmMachine = { kernel: vm.machine.kernel, cpus: vm.machine.cpus, rdmaDevice: process.env.VOF_RDMA_DEV ?? 'rxe0' };
      } catch (err) {
        // Asked for explicitly, a VM that cannot run is a failure; as the default's fallback it
        // is a loud skip (this machine cannot provide soft-RoCE), not a failed benchmark.
        if (!vmIsFallback) failures++;
        const why = `${vmIsFallback ? '' : 'FAILED: '}${(err as Error).message}`;
        for (const system of ['vof-rdma', 'vof-null-rdma', ...(values.anchors ? ['perftest', 'nvmeof-rdma', 'nvmeof-tcp', 'nvmeof-rdma-null', 'nvmeof-tcp-null', 'vof-vduse', 'vof-vduse-rdma', 'qsd-vduse', 'vof-nbd-kernel'] : [])].filter((x) => !only || only.has(x))) skipped.push({ system, environment: 'vm', reason: why });
        log(`bench: SKIPPED the VM part: ${(err as Error).message}`);
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }

  const report: BenchReport = {
    version: 2,
    startedAt,
    finishedAt: new Date().toISOString(),
    command: `vof bench ${argv.join(' ')}`.trim(),
    machine: { ...machineInfo(), ...(vmMachine ? { vm: vmMachine } : {}) },
    settings: { timeSec, rampSec, sizeBytes, queues, vmTimeSec: inVm ? vmTimeSec : null, rounds },
    runs,
    summaries: summarizeRuns(runs),
    skipped,
    ratios: computeRatios(runs),
  };
  if (values.json) writeFileSync(values.json, `${JSON.stringify(report, null, 2)}\n`);
  if (vmPart) return failures ? 1 : 0;
  if (values.chart) writeFileSync(values.chart, await renderChart(report));

  const out = [
    `vof bench: ${runs.length} runs, ${formatSize(sizeBytes)} image, ${queues} queues, ${rampSec} s ramp + ${timeSec} s per workload${report.settings.vmTimeSec !== null ? ` (VM: ${vmTimeSec} s)` : ''}`,
    rounds > 1
      ? `${rounds} rounds per workload, the systems interleaved: IOPS and MB/s are median (min–max) over rounds, latency and CPU medians; a ratio is the median (min–max) of per-round ratios`
      : 'a single pass per system and workload (--rounds 1): every figure and ratio is one measurement, with no spread; a neighbour\'s load can move it 2x (--rounds 3 or more to see)',
    '',
    formatRuns(runs),
    '',
    report.ratios.length ? formatRatios(report.ratios) : 'no ratios (no anchor ran: --anchors adds them)',
  ];
  const perIo = formatPerIo(report.summaries);
  if (perIo) out.push('', `per I/O (median over rounds; ini = initiator, tgt = target; CPU µs user/system):`, perIo);
  const resources = formatResources(runs);
  if (resources) out.push('', 'registered memory and target RSS during each measurement:', resources);
  if (skipped.length) out.push('', formatSkipped(skipped));
  if (values.json) out.push('', `report: ${values.json}`);
  if (values.chart) out.push(`chart: ${values.chart}`);
  process.stdout.write(`${out.join('\n')}\n`);
  return failures ? 1 : 0;
}
