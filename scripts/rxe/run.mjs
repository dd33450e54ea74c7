#!/usr/bin/env node
// npm run rxe -- [OPTIONS] CMD [ARGS...]
//
// Runs CMD where a soft-RoCE (rxe) device is available, with the checkout's working directory,
// and exits with CMD's exit code: directly when this host has an ACTIVE RDMA port, usable
// /dev/infiniband and working ibv_devices; otherwise inside a throwaway QEMU VM (see lib.mjs).
//
// Options (before CMD; the first non-option word starts CMD, `--` ends the options):
//   --timeout SEC   kill the VM after SEC seconds, exit 124 (default: VOF_RXE_TIMEOUT or 1800)
//   --hosts N       VM: N rxe "hosts" rxe1..rxeN, each on its own veth with 10.177.0.I/24,
//                   instead of the single dummy0 (10.177.0.1) with rxe0 (hosts.sh says why
//                   they are not network namespaces on this kernel)
//   --kernel X.Y    VM: boot Debian's Linux X.Y: 6.12 (default) or 6.1 (Debian 12's own);
//                   also VOF_RXE_KERNEL. Each is fetched once and cached (see lib.mjs)
//   --vm            use the VM even if this host has an RDMA device
//   --verbose       show the VM's setup log and kernel messages (also VOF_RXE_VERBOSE=1)
// Exit codes: CMD's; 124 timeout; 125 the VM could not set up rxe or start CMD; 2 usage or no
// way to provide rxe here (the reason is printed).
import { DEFAULT_TIMEOUT_SEC, RxeUnavailable, log, runWithRxe } from './lib.mjs';

function usage(msg) {
  if (msg) log(msg);
  process.stderr.write('usage: npm run rxe -- [--timeout SEC] [--hosts N] [--kernel 6.12|6.1] [--vm] [--verbose] CMD [ARGS...]\n');
  process.exit(2);
}

const args = process.argv.slice(2);
const opts = { timeoutSec: Number(process.env.VOF_RXE_TIMEOUT || DEFAULT_TIMEOUT_SEC), hosts: 1, forceVm: false };
while (args.length && args[0].startsWith('-')) {
  const a = args.shift();
  if (a === '--') break;
  const num = (name) => {
    const v = Number(args.shift());
    if (!Number.isInteger(v) || v <= 0) usage(`${name} needs a positive integer`);
    return v;
  };
  if (a === '--timeout') opts.timeoutSec = num('--timeout');
  else if (a === '--hosts') opts.hosts = num('--hosts');
  else if (a === '--kernel') {
    opts.kernel = args.shift();
    if (!/^\d+\.\d+$/.test(opts.kernel ?? '')) usage('--kernel needs a kernel series major.minor (6.12 or 6.1)');
    // Children (a bench or test that starts another VM) boot the same kernel.
    process.env.VOF_RXE_KERNEL = opts.kernel;
  } else if (a === '--vm') opts.forceVm = true;
  else if (a === '--verbose') process.env.VOF_RXE_VERBOSE = '1';
  else if (a === '-h' || a === '--help') usage();
  else usage(`unknown option ${a}`);
}
if (!Number.isFinite(opts.timeoutSec) || opts.timeoutSec <= 0) usage('VOF_RXE_TIMEOUT must be a positive number of seconds');
if (args.length === 0) usage('no command given');

try {
  process.exitCode = await runWithRxe(args, opts);
} catch (e) {
  if (e instanceof RxeUnavailable) {
    log(`cannot provide an rxe device: ${e.message}`);
    process.exitCode = 2;
  } else {
    throw e;
  }
}
