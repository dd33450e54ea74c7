#!/usr/bin/env node
// The RDMA part of `npm test`: `npx vitest run -c vitest.rdma.config.ts [ARGS...]` where an rxe
// device exists, exactly like `npm run rxe -- ...`: directly on a capable host, else in the VM.
//
// If neither is possible (no rxe here, and no QEMU/kernel/packages for the VM), it prints a loud
// "RDMA TESTS DID NOT RUN: <why>" banner on stderr and exits 0, so that `npm test` stays usable
// on a laptop; with VOF_REQUIRE_RDMA=1 (set by .ci/run) it exits 1 instead. Every other outcome
// is the exit code of vitest (124 when the VM timed out: VOF_RXE_TIMEOUT, default 1800 s).
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';
import { DEFAULT_TIMEOUT_SEC, REPO_DIR, RxeUnavailable, ensureHostPackages, hostRdma, log, runWithRxe } from './lib.mjs';

// --no: never try to download vitest (the VM has no network); it must be in node_modules.
const argv = ['npx', '--no', 'vitest', 'run', '-c', 'vitest.rdma.config.ts', ...process.argv.slice(2)];
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

/**
 * The suite needs the native addon. On a machine that had no rdma-core at `npm install`, the
 * addon was not built then; the harness has just installed the dev packages (VM mode, as
 * root), so build it now. A build that fails with the packages present is a real failure.
 */
function ensureAddon() {
  const require = createRequire(import.meta.url);
  try {
    require('node-gyp-build')(REPO_DIR);
    return;
  } catch (e) {
    log(`the RDMA addon does not load (${String(e.message).split('\n')[0]}); building it with node-gyp`);
  }
  const nodeGyp = path.join(REPO_DIR, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  const r = spawnSync(process.execPath, [nodeGyp, 'rebuild'], { cwd: REPO_DIR, stdio: ['ignore', 'inherit', 'inherit'] });
  if (r.status !== 0) {
    log(`node-gyp rebuild failed (exit ${r.status ?? r.signal}): the RDMA suite cannot run`);
    process.exit(1);
  }
  require('node-gyp-build')(REPO_DIR); // throws if the fresh build still does not load
}

try {
  // Direct mode uses the host's rdma-core as it is; the VM mode installs what it needs first.
  if (!hostRdma().ok) ensureHostPackages();
  ensureAddon();
  const timeoutSec = Number(process.env.VOF_RXE_TIMEOUT || DEFAULT_TIMEOUT_SEC);
  process.exitCode = await runWithRxe(argv, { cwd: REPO_DIR, timeoutSec });
} catch (e) {
  if (!(e instanceof RxeUnavailable)) throw e;
  banner(e.message);
  process.exitCode = required ? 1 : 0;
}
