/** The benchmark's report: what `vof bench --json FILE` writes (documented in the README). */

/** fio's names: randread, randwrite, read (sequential), write (sequential). */
export type BlockRw = 'randread' | 'randwrite' | 'read' | 'write';

export interface Workload {
  /** A BlockRw for block systems; ceilings use their own words (e.g. `rdma-write`, `tcp-stream`). */
  readonly rw: string;
  /** Bytes per I/O (or per message for the ceilings). */
  readonly bs: number;
  /** Queue depth: I/Os in flight at once. */
  readonly qd: number;
}

/** Where a run happened: on this host, or inside the soft-RoCE QEMU VM (TCG, ~19x slower). */
export type Environment = 'host' | 'vm';

/** What every measured run is: which system, in which round and environment, for how long. */
export interface MeasuredRun {
  readonly system: string;
  readonly round: number;
  readonly environment: Environment;
  readonly workload: Workload;
  readonly rampSec: number;
  readonly timeSec: number;
}

export interface CpuCost {
  /** CPU seconds (user + system) spent by the initiator side during the measurement; null if unknown. */
  readonly initiatorSec: number | null;
  /** CPU seconds spent by the target during the measurement; null if not measurable (remote target). */
  readonly targetSec: number | null;
  readonly initiatorSecPerGB: number | null;
  readonly targetSecPerGB: number | null;
  readonly initiatorSecPerMillionIos: number | null;
  readonly targetSecPerMillionIos: number | null;
}

export interface BenchRun {
  readonly system: string;
  /** Which round (1 to settings.rounds) this pass belongs to: each round runs every system once per workload. */
  readonly round: number;
  readonly environment: Environment;
  readonly workload: Workload;
  /** Length of the measurement (after the ramp), seconds. */
  readonly seconds: number;
  readonly ios: number;
  readonly iops: number;
  /** Megabytes (10^6 bytes) per second. */
  readonly mbps: number;
  /** Per-I/O latency percentiles in microseconds; null where the tool gives none. */
  readonly latencyUs: { readonly p50: number; readonly p99: number; readonly p999: number } | null;
  readonly cpu: CpuCost;
  /** How the figures were obtained, where that is not obvious. */
  readonly note?: string;
  /** vof runs: memory registrations and target memory during the measurement. */
  readonly resources?: ResourceUse;
  /** Block workloads: what one I/O cost each side (absent for the raw-transport ceilings). */
  readonly perIo?: PerIoCost;
}

/** What one I/O cost one side (a set of processes) over the measurement window; null = not measured. */
export interface SideCostPerIo {
  /** User and system CPU, microseconds per I/O. */
  readonly userUs: number | null;
  readonly systemUs: number | null;
  /** System calls entered per I/O (perf's raw_syscalls:sys_enter tracepoint). */
  readonly syscalls: number | null;
  /** Voluntary + involuntary context switches per I/O. */
  readonly contextSwitches: number | null;
}

export interface PerIoCost {
  readonly initiator: SideCostPerIo;
  readonly target: SideCostPerIo;
  /** vof runs (the initiator is the bench process itself): JS heap bytes allocated per I/O, and GCs per I/O. */
  readonly heapBytes: number | null;
  readonly gcs: number | null;
  /** Why a figure is null, keyed by its path (e.g. "target.syscalls", "heapBytes"). */
  readonly unavailable: Readonly<Record<string, string>>;
}

/** A figure over the rounds of one system and workload. */
export interface Spread {
  readonly median: number;
  readonly min: number;
  readonly max: number;
}

/** One system on one workload over all its rounds: the figures the text table and the chart show. */
export interface RunSummary {
  readonly system: string;
  readonly environment: Environment;
  readonly workload: Workload;
  readonly rounds: number;
  readonly iops: Spread;
  readonly mbps: Spread;
  readonly p99Us: Spread | null;
  /** The median over rounds of each per-I/O figure (null where no round measured it; the reasons of every round). */
  readonly perIo: PerIoCost | null;
}

/** What a vof run cost in registered memory and target RSS, over its measurement window. */
export interface ResourceUse {
  /**
   * ibv_reg_mr calls during the measurement (the addon's cumulative counter): by the target
   * (read through its control socket) and by this process; null where not known (no RDMA in
   * that process, or a target the bench did not start).
   */
  readonly targetRegistrations: number | null;
  readonly initiatorRegistrations: number | null;
  /** The target's resident set size in MiB at the start, the highest sampled (4 Hz) and at the end. */
  readonly targetRssMiB: { readonly start: number; readonly peak: number; readonly end: number } | null;
}

export interface SkippedSystem {
  readonly system: string;
  readonly environment: Environment;
  readonly reason: string;
}

export interface Ratio {
  /** `same-workload`: vof against an anchor running the same workload; `ceiling`: vof's MB/s
   *  against a raw transport's (iperf3, perftest). */
  readonly kind: 'same-workload' | 'ceiling';
  readonly system: string;
  readonly anchor: string;
  readonly environment: Environment;
  readonly workload: Workload;
  readonly anchorWorkload: Workload;
  /** vof ÷ anchor, the median of the per-round ratios: above 1 means vof did more I/Os or bytes per second. */
  readonly iops: number | null;
  readonly mbps: number;
  /** vof ÷ anchor (median of the per-round ratios): above 1 means vof's p99 latency is higher (worse). */
  readonly p99: number | null;
  /** The lowest and highest per-round ratio. */
  readonly min: RatioFigures;
  readonly max: RatioFigures;
  /** How many rounds were paired (vof's round N against the anchor's round N). */
  readonly rounds: number;
  readonly perRound: readonly (RatioFigures & { readonly round: number })[];
}

export interface RatioFigures {
  readonly iops: number | null;
  readonly mbps: number;
  readonly p99: number | null;
}

export interface MachineInfo {
  readonly hostname: string;
  readonly cpus: number;
  readonly cpuModel: string;
  readonly memoryBytes: number;
  readonly kernel: string;
  readonly node: string;
  readonly loadAverage: readonly number[];
  /** What the VM part ran on, when there was one. */
  readonly vm?: { readonly kernel: string; readonly cpus: number; readonly rdmaDevice: string | null };
}

export interface BenchReport {
  /** 2: runs hold one entry per round (with `round`), summaries and ratios give medians with min–max. */
  readonly version: 2;
  readonly startedAt: string;
  readonly finishedAt: string;
  readonly command: string;
  readonly machine: MachineInfo;
  readonly settings: { readonly timeSec: number; readonly rampSec: number; readonly sizeBytes: number; readonly queues: number; readonly vmTimeSec: number | null; readonly rounds: number };
  /** Every pass in the order it ran (round by round within each workload). */
  readonly runs: BenchRun[];
  readonly summaries: RunSummary[];
  readonly skipped: SkippedSystem[];
  readonly ratios: Ratio[];
}
