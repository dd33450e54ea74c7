import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

let cached: unknown = null;

/**
 * The command that (re)builds the addon, in a checkout (where vof is the root package and
 * `npm rebuild vof` finds nothing to rebuild) as in an installed node_modules/vof alike: the
 * install script itself, by its absolute path (it works from any directory).
 */
export function addonBuildCommand(): string {
  const script = fileURLToPath(new URL('../../scripts/build-addon.mjs', import.meta.url));
  return `node ${/^[\w./-]+$/.test(script) ? script : JSON.stringify(script)}`;
}

/**
 * vof's native addon (native/*.cc), loaded on first use only, or the loader's error: a TCP-only
 * user never needs it (it links rdma-core). node-gyp-build prefers prebuilds/<platform>-<arch>/
 * and falls back to build/Release. Callers type and explain it: the RDMA transport
 * (transport/rdma/native-binding.ts) and io_uring file I/O (devices/blk/uring-ring.ts).
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
