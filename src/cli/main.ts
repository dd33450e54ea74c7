#!/usr/bin/env node
import { runCp } from './cp-command.js';
import { runDevices } from './devices-command.js';
import { runInfo } from './info-command.js';
import { runTarget } from './target-command.js';
import { CliError } from './cli-error.js';

const USAGE = `vof — Virtio over Fabrics

Usage:
  vof target --listen URL [--listen URL]... --blk TVQN=PATH[,ro] [--blk ...]
             [--allow IVQN]... [--config FILE] [--queues N] [--queue-size N]
             [--keepalive-interval MS] [--keepalive-timeout MS] [--log LEVEL]
      Export block devices. URL is tcp://HOST[:PORT] or rdma://ADDR[:PORT] (port 15771).
      Prints "listening on URL" per address when ready; SIGINT/SIGTERM shut it down.
  vof info URL/TVQN [--ivqn IVQN] [--json]
      Connect and print instance id, features, queue sizes and config space.
  vof cp SRC DST [--ivqn IVQN] [--json]
      Copy a remote disk (tcp:// or rdma://HOST[:PORT]/TVQN) to a local file or back.
  vof devices [--json]
      List RDMA devices with port state, MTU and GIDs.
  vof bench [--target URL] [--rw LIST] [--bs LIST] [--qd LIST] [--queues N] [--time SEC]
            [--ramp SEC] [--size SIZE] [--rdma auto|vm|off] [--vm-time SEC] [--anchors] [--quick]
            [--json FILE] [--chart FILE.svg] [--cpu-prof DIR]
      Benchmark vof over TCP and RDMA (or in the soft-RoCE VM: --rdma vm) against nbdkit,
      the kernel's NVMe-oF, iperf3 and perftest (--anchors). Defaults: 4k randread qd1/qd32,
      4k randwrite qd32, 128k read/write qd8; 5 s each after a 1 s ramp; 2 queues; 256m image.
  vof help
`;

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'target':
      return runTarget(rest);
    case 'info':
      return runInfo(rest);
    case 'cp':
      return runCp(rest);
    case 'devices':
      return runDevices(rest);
    case 'bench':
      // Loaded on demand: the benchmark brings the charting library, which no other command needs.
      return (await import('./bench-command.js')).runBench(rest);
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE);
      return cmd === undefined ? 2 : 0;
    default:
      throw new CliError(`unknown command "${cmd}"\n\n${USAGE}`);
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    const e = err as Error;
    process.stderr.write(`vof: ${e instanceof CliError ? e.message : `${e.name}: ${e.message}`}\n`);
    process.exitCode = e instanceof CliError ? e.exitCode : 1;
  },
);
