import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

let cached: unknown = null;

/** How to (re)build the addon, in a checkout of vof and where vof is a dependency alike. */
export const REBUILD_HINT = '`npm rebuild` (in the project vof is installed in, or in a checkout of vof)';

/**
 * vof's native addon (native/*.cc), loaded on first use only, or the loader's error. It holds
 * io_uring file I/O and, where rdma-core's headers were there at build time, the RDMA binding,
 * which loads rdma-core's libraries when the addon loads (`rdma`, `rdmaLoadError`). node-gyp-build prefers prebuilds/<platform>-<arch>/
 * and falls back to build/Release. Callers type and explain it: the RDMA transport
 * (transport/rdma/native-binding.ts) and io_uring file I/O (target/blk/uring-ring.ts).
 */
export function loadNativeAddon(): unknown {
  if (cached) return cached;
  // src/util and dist/util are both two levels below the package root.
  const root = fileURLToPath(new URL('../../', import.meta.url));
  const require = createRequire(import.meta.url);
  const load = require('node-gyp-build') as (dir: string) => unknown;
  cached = load(root);
  return cached;
}
