#!/usr/bin/env node
import { BENCH_USAGE, runBench } from './bench-command.js';
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
${BENCH_USAGE}  vof help
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
      return runBench(rest);
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
