#!/usr/bin/env node
// The RDMA part of `npm test`: `npx vitest run -c vitest.rdma.config.ts [ARGS...]` where an rxe
// device exists, exactly like `npm run rxe -- ...`: directly on a capable host, else in the VM.
//
// If neither is possible (no rxe here, and no QEMU/kernel/packages for the VM), it prints a loud
// "RDMA TESTS DID NOT RUN: <why>" banner on stderr and exits 0, so that `npm test` stays usable
// on a laptop; with VOF_REQUIRE_RDMA=1 (set by .ci/run) it exits 1 instead. Every other outcome
// is the exit code of vitest (124 when the VM timed out: VOF_RXE_TIMEOUT, default SUITE_TIMEOUT_SEC).
//
// A leading `--kernel X.Y` (before the vitest arguments) picks the VM's kernel series, like
// run.mjs and VOF_RXE_KERNEL: 6.12 (default) or 6.1.
import { ensureAddon } from '../addon.mjs';
import { ensurePackages } from '../debian-deps.mjs';
import { DEFAULT_TIMEOUT_SEC, DIRECT_GROUPS, REPO_DIR, RxeUnavailable, VM_GROUPS, ensureHostPackages, hostRdma, log, runWithRxe } from './lib.mjs';

/** The VM's time limit for the RDMA suite (VOF_RXE_TIMEOUT overrides). */
const SUITE_TIMEOUT_SEC = 3600;

const args = process.argv.slice(2);
let kernel;
if (args[0] === '--kernel' || args[0]?.startsWith('--kernel=')) {
  kernel = args[0] === '--kernel' ? args.splice(0, 2)[1] : args.shift().slice('--kernel='.length);
  if (!/^\d+\.\d+$/.test(kernel ?? '')) {
    log('--kernel needs a kernel series major.minor (6.12 or 6.1)');
    process.exit(2);
  }
  process.env.VOF_RXE_KERNEL = kernel;
}
// --no: never try to download vitest (the VM has no network); it must be in node_modules.
const argv = ['npx', '--no', 'vitest', 'run', '-c', 'vitest.rdma.config.ts', ...args];
const required = process.env.VOF_REQUIRE_RDMA === '1';

function banner(why) {
  const line = '#'.repeat(78);
  process.stderr.write(
    `\n${line}\n##\n##  RDMA TESTS DID NOT RUN: ${why.trim().replace(/\s*\n\s*/g, " / ")}\n##\n` +
      (required
        ? '##  VOF_REQUIRE_RDMA=1: this is a failure.\n'
        : '##  (exit 0 anyway; set VOF_REQUIRE_RDMA=1 to make this a failure)\n') +
      `##\n${line}\n\n`,
  );
}

try {
  // The packages of scripts/debian-deps.json that the suite needs, installed when missing (root;
  // `npm test`'s first step normally installed them already). The VM cannot boot without its
  // own; directly on this host, test files whose tools are missing say so and are skipped.
  if (hostRdma().ok) {
    const r = ensurePackages(DIRECT_GROUPS, { who: 'vof-rxe' });
    if (r.missing.length) log(`missing Debian packages ${r.missing.join(' ')} (${r.impossible ?? r.error}): the test files that need them will say so`);
  } else ensureHostPackages(VM_GROUPS);
  // The suite needs the native addon. On a machine that had no rdma-core at `npm install`, the
  // addon was not built then: build it now. A build that fails with the packages present is a
  // real failure.
  try {
    const addon = ensureAddon({ log });
    if ('error' in addon) throw new RxeUnavailable(`vof's native addon: ${addon.error}`);
    if (!addon.rdma) throw new RxeUnavailable("rdma-core's headers are missing: the addon was built without RDMA");
  } catch (e) {
    if (e instanceof RxeUnavailable) throw e;
    log(`${e.message}: the RDMA suite cannot run`);
    process.exit(1);
  }
  // The whole suite takes about 20 minutes in the TCG VM on a quiet 2-core machine, and the
  // host's speed varies 2x from day to day: the VM gets an hour (one command: run.mjs's 30 min).
  const timeoutSec = Number(process.env.VOF_RXE_TIMEOUT || Math.max(DEFAULT_TIMEOUT_SEC, SUITE_TIMEOUT_SEC));
  process.exitCode = await runWithRxe(argv, { cwd: REPO_DIR, timeoutSec, kernel });
} catch (e) {
  if (!(e instanceof RxeUnavailable)) throw e;
  banner(e.message);
  process.exitCode = required ? 1 : 0;
}
