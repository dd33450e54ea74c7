#!/usr/bin/env node
// The first step of `npm test` (and, for the host suite only, test/global-setup.ts, so that a
// bare `npx vitest run` gets the same): installs the missing Debian packages of
// scripts/debian-deps.json that the suites need, in one `apt-get update` + one `apt-get install`
// when running as root with apt-get, then builds the native addon if it does not load (or its
// build dependencies were just installed) and rdma-core's headers are there.
//
// Not root, no apt-get, or VOF_TEST_DEPS_DRY=1: it installs nothing and says so in one line; each
// test file that cannot run then prints a banner with the exact install command and is skipped
// (or fails the run with VOF_REQUIRE_ALL=1). Exits 1 only when the addon build fails with its
// headers present.
import { fileURLToPath } from 'node:url';
import { ensureAddon } from './addon.mjs';
import { DEPS, ensurePackages, installCommand, isDry, requireAll } from './debian-deps.mjs';

/** What the host suite (vitest.config.ts) needs. */
export const HOST_GROUPS = ['addon', 'nbd-tests', 'nbd-source-tests', 'bench-anchors'];
/** What the RDMA suite needs on top (scripts/rxe/lib.mjs): rxe-vm only where the VM is used. */
export const RDMA_GROUPS = ['rdma-tests'];

export function prepareTestDeps(groups, { who = 'npm test', log = (l) => process.stderr.write(`${l}\n`) } = {}) {
  if (isDry()) {
    log(`${who}: VOF_TEST_DEPS_DRY=1: installing nothing, and every package of scripts/debian-deps.json counts as missing`);
    return;
  }
  const r = ensurePackages(groups, { who, log });
  if (r.missing.length) {
    log(
      `${who}: ${r.missing.length} Debian package(s) missing (${r.impossible ?? r.error}): the tests that need them ` +
        `${requireAll() ? 'FAIL (VOF_REQUIRE_ALL=1)' : 'are SKIPPED, each with a banner'}; to install: ${installCommand(r.missing)}`,
    );
  }
  const rebuild = r.installed.some((p) => DEPS.groups.addon.packages.includes(p));
  ensureAddon({ rebuild, log }); // throws if a build with the headers present fails
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  // The VM's packages too (one apt-get round for the whole `npm test`), unless this host has an
  // RDMA device of its own (then the RDMA suite runs here, without the VM).
  const { hostRdma } = await import('./rxe/lib.mjs');
  const groups = [...HOST_GROUPS, ...RDMA_GROUPS, ...(hostRdma().ok ? [] : ['rxe-vm'])];
  try {
    prepareTestDeps(groups);
  } catch (e) {
    process.stderr.write(`npm test: ${e.message}\n`);
    process.exit(1);
  }
}
