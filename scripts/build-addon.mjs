#!/usr/bin/env node
// Runs at `npm install`. Makes the native RDMA addon available when it can: a prebuilt binary
// from prebuilds/ if one loads here, else a node-gyp build against rdma-core. It never fails the
// install: without rdma-core the TCP transport works, and the RDMA transport says at use what to
// install (src/transport/rdma/native-binding.ts).
import { fileURLToPath } from 'node:url';
import { addonHeadersPresent, addonLoadError, nodeGypRebuild } from './addon.mjs';

if (process.env.VOF_SKIP_ADDON === '1') {
  console.log('vof: VOF_SKIP_ADDON=1: the RDMA addon was not built (TCP only)');
  process.exit(0);
}

if (addonLoadError() === null) {
  console.log('vof: RDMA addon ready');
  process.exit(0);
}
// nothing usable yet: build it

const HEADERS_MISSING =
  'vof: rdma-core development files are missing: install libibverbs-dev librdmacm-dev (Debian/Ubuntu) or rdma-core-devel (Fedora/RHEL), ' +
  // This script by its path: `npm rebuild vof` does nothing in a checkout, where vof is the root package.
  `then \`node ${fileURLToPath(import.meta.url)}\`.`;

// Without rdma-core's headers a build cannot succeed, and on a fresh machine without a compiler
// node-gyp would only complain about the compiler: name the real missing piece first.
if (!addonHeadersPresent()) {
  console.warn(['', 'vof: the native RDMA addon was NOT built; the TCP transport works, rdma:// URLs will not.', HEADERS_MISSING, ''].join('\n'));
  process.exit(0);
}

const r = nodeGypRebuild();
if (r.status === 0) {
  console.log('vof: RDMA addon built');
  process.exit(0);
}
const output = `${r.stdout ?? ''}${r.stderr ?? ''}`;
const noHeaders = /infiniband\/verbs\.h|rdma\/rdma_cma\.h|-libverbs|-lrdmacm/.test(output);
const tail = output.trim().split('\n').slice(-6).join('\n');
console.warn(
  [
    '',
    'vof: the native RDMA addon was NOT built; the TCP transport works, rdma:// URLs will not.',
    noHeaders
      ? HEADERS_MISSING
      : `vof: node-gyp failed${r.error ? ` (${r.error.message})` : ''}; it needs python3, make and a C++ compiler:\n${tail}`,
    '',
  ].join('\n'),
);
