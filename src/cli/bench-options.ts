import type { CommandSpec } from './options.js';

/** vof bench's options: apart from bench-command.ts so that `vof help` needs no charting library. */
export const BENCH_COMMAND = {
  name: 'bench',
  args: '',
  summary: 'Benchmark vof over TCP and RDMA against nbdkit, the kernel\'s NVMe-oF, VDUSE, iperf3 and perftest (--anchors).',
  details:
    'Defaults: 4k randread qd1/qd32, 4k randwrite qd32, 128k read/write qd8; 5 s each after a 1 s ramp;\n' +
    '2 queues; 256m image. --rounds N (default 3; --quick: 1, a single pass with no spread): each workload\n' +
    'runs every system once per round, the order rotated each round; the table shows median (min–max)\n' +
    'and each ratio is the median (min–max) of per-round ratios. The "per I/O" table: user/system CPU µs,\n' +
    'system calls (perf stat, or n/a with the reason), context switches, and for vof\'s in-process\n' +
    'initiator the JS heap bytes allocated and GCs, per I/O, for the initiator and the target.\n' +
    'In the VM, --anchors adds vof-vduse[-rdma] (fio on the /dev/vdX of `vof vduse`), qsd-vduse\n' +
    '(qemu-storage-daemon\'s vduse-blk export of the image) and vof-nbd-kernel (fio on the /dev/nbdN\n' +
    'of nbd-client attached to `vof nbd`). --systems LIST runs only those systems.\n' +
    'docs/BENCHMARK.md describes the report.',
  options: {
    target: { type: 'string', arg: 'URL', desc: 'benchmark this running target instead of starting one' },
    rw: { type: 'string', arg: 'LIST', desc: 'workloads: randread, randwrite, read, write (comma-separated)' },
    bs: { type: 'string', arg: 'LIST', desc: 'block sizes (4k, 128k, ...)' },
    qd: { type: 'string', arg: 'LIST', desc: 'queue depths' },
    queues: { type: 'string', arg: 'N', desc: 'virtqueues (default 2)' },
    time: { type: 'string', arg: 'SEC', desc: 'seconds per workload (default 5)' },
    ramp: { type: 'string', arg: 'SEC', desc: 'ramp-up seconds (default 1)' },
    rounds: { type: 'string', arg: 'N', desc: 'interleaved rounds per workload (default 3, --quick 1)' },
    size: { type: 'string', arg: 'SIZE', desc: 'image size (default 256m)' },
    rdma: { type: 'string', arg: 'auto|vm|off', desc: 'where the RDMA part runs (vm: the soft-RoCE VM)' },
    'vm-time': { type: 'string', arg: 'SEC', desc: 'seconds per workload in the VM' },
    anchors: { type: 'boolean', desc: 'also run nbdkit, NVMe-oF, VDUSE (in the VM), iperf3 and perftest' },
    systems: { type: 'string', arg: 'LIST', desc: 'only these systems (comma-separated: vof-tcp, vof-vduse, qsd-vduse, perftest, ...)' },
    quick: { type: 'boolean', desc: 'one short round' },
    json: { type: 'string', arg: 'FILE', desc: 'write the report as JSON' },
    chart: { type: 'string', arg: 'FILE.svg', desc: 'draw the results' },
    'cpu-prof': { type: 'string', arg: 'DIR', desc: 'write CPU profiles of both sides' },
    'file-io': { type: 'string', arg: 'auto|uring|libuv', desc: 'the target\'s block file I/O' },
    'vm-part': { type: 'boolean', hidden: true, desc: 'internal: the part run inside the VM' },
  },
} as const satisfies CommandSpec;
