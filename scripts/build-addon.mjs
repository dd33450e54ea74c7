#!/usr/bin/env node
// Runs at `npm install`. Makes the native addon available when it can: a prebuilt binary from
// prebuilds/ if one loads here, else a node-gyp build. The addon holds io_uring file I/O (built
// with any C++ toolchain) and, where rdma-core's headers exist, the RDMA transport (rdma-core's
// libraries are loaded at run time, so the same binary serves machines without them). It never
// fails the install: without the addon, TCP works with libuv's thread pool for file I/O, and
// rdma:// says at use what to install (src/transport/rdma/native-binding.ts).
import { REBUILD_HINT, addonHeadersPresent, addonState, nodeGypRebuild } from './addon.mjs';

const RDMA_HEADERS =
  'install libibverbs-dev librdmacm-dev (Debian/Ubuntu) or rdma-core-devel (Fedora/RHEL), then run ' + REBUILD_HINT;

if (process.env.VOF_SKIP_ADDON === '1') {
  console.log('vof: VOF_SKIP_ADDON=1: the native addon was not built (TCP only, file I/O through libuv)');
  process.exit(0);
}

function ready(state, how) {
  if (state.rdma) console.log(`vof: native addon ${how} (io_uring file I/O, RDMA)`);
  else console.warn(`vof: native addon ${how} with io_uring file I/O but without RDMA (rdma-core's headers are missing): rdma:// URLs will not work; for RDMA, ${RDMA_HEADERS}.`);
}

const before = addonState();
// A usable addon stays, unless it lacks RDMA that could now be built in.
if (!('error' in before) && (before.rdma || !addonHeadersPresent())) {
  ready(before, 'ready');
  process.exit(0);
}

const r = nodeGypRebuild();
const after = r.status === 0 ? addonState() : null;
if (after && !('error' in after)) {
  ready(after, 'built');
  process.exit(0);
}
const output = `${r.stdout ?? ''}${r.stderr ?? ''}`;
const tail = output.trim().split('\n').slice(-6).join('\n');
console.warn(
  [
    '',
    "vof: the native addon was NOT built: the TCP transport works, with file I/O through libuv's thread pool (about half the IOPS of io_uring); rdma:// URLs will not work.",
    after
      ? `vof: the build does not load: ${after.error}`
      : `vof: node-gyp failed${r.error ? ` (${r.error.message})` : ''}; it needs python3, make and a C++ compiler (Debian/Ubuntu: g++ make python3), then run ${REBUILD_HINT}:\n${tail}`,
    '',
  ].join('\n'),
);
