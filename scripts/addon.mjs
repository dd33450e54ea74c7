// The native addon's state and its build, shared by scripts/build-addon.mjs (`npm install`),
// scripts/test-deps.mjs and test/global-setup.ts (`npm test`) and scripts/rxe/rdma-suite.mjs.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_DIR = fileURLToPath(new URL('..', import.meta.url));
const require = createRequire(import.meta.url);

/** null when the addon (prebuilds/ or build/Release) loads in this process, else why not. */
export function addonLoadError(root = REPO_DIR) {
  const s = addonState(root);
  return 'error' in s ? s.error : null;
}

/**
 * What the addon holds, checked in a child process (this one may hold an older build):
 * { rdma: whether the RDMA part is compiled in, rdmaLoadError: why rdma-core's libraries do not
 * load (undefined when they do) } or { error } when the addon does not load at all.
 */
export function addonState(root = REPO_DIR) {
  const script = `const a = require(${JSON.stringify(require.resolve('node-gyp-build'))})(${JSON.stringify(root)});
    process.stdout.write(JSON.stringify({ rdma: a.rdma === true, rdmaLoadError: a.rdmaLoadError }));`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
  if (r.status === 0) return JSON.parse(r.stdout);
  const lines = (r.stderr || '').split('\n');
  return { error: (lines.find((l) => /^Error: /.test(l)) ?? lines.find((l) => l.trim()) ?? `exit ${r.status}`).replace(/^Error: /, '') };
}

/** How to (re)build the addon, in a checkout of vof and where vof is a dependency alike. */
export const REBUILD_HINT = '`npm rebuild` (in the project vof is installed in, or in a checkout of vof)';

/** Whether rdma-core's headers, without which no build can succeed, are installed. */
export function addonHeadersPresent() {
  const dirs = ['/usr/include', '/usr/local/include'];
  const has = (h) => dirs.some((d) => existsSync(`${d}/${h}`));
  return has('infiniband/verbs.h') && has('rdma/rdma_cma.h');
}

/**
 * `node-gyp rebuild` in root: node_modules' node-gyp when there is one (a checkout), else the
 * one on PATH (npm puts its own there for install scripts). Returns spawnSync's result.
 */
export function nodeGypRebuild(root = REPO_DIR, { stdio = 'pipe' } = {}) {
  let script = null;
  try {
    script = createRequire(path.join(root, 'package.json')).resolve('node-gyp/bin/node-gyp.js');
  } catch {
    /* not installed here: use PATH */
  }
  const [cmd, args] = script ? [process.execPath, [script, 'rebuild']] : ['node-gyp', ['rebuild']];
  return spawnSync(cmd, args, { cwd: root, encoding: 'utf8', stdio: stdio === 'inherit' ? ['ignore', 'inherit', 'inherit'] : 'pipe' });
}

/**
 * Makes the addon load for the test suites: builds it when it does not load, when it lacks the
 * RDMA part although rdma-core's headers are now installed, or when `rebuild` (its build
 * dependencies were just installed). Returns the addon's state after that (see addonState; an
 * `error` when it neither loads nor can be built: no toolchain); throws when a build fails or its
 * result does not load.
 */
export function ensureAddon({ log = (l) => process.stderr.write(`${l}\n`), rebuild = false, root = REPO_DIR } = {}) {
  const before = addonState(root);
  const stale = !('error' in before) && !before.rdma && addonHeadersPresent();
  if (!('error' in before) && !rebuild && !stale) return before;
  const missing = ['python3', 'make', 'g++'].filter((c) => spawnSync('sh', ['-c', `command -v ${c}`]).status !== 0);
  if (missing.length) return 'error' in before ? { error: `${before.error}; it cannot be built here: no ${missing.join(', ')}` } : before;
  log(
    'error' in before
      ? `vof: the native addon does not load (${before.error}); building it with node-gyp`
      : stale
        ? "vof: rebuilding the native addon with RDMA (rdma-core's headers are installed now)"
        : 'vof: rebuilding the native addon (its build dependencies were just installed)',
  );
  const r = nodeGypRebuild(root, { stdio: 'inherit' });
  if (r.status !== 0) throw new Error(`node-gyp rebuild failed (exit ${r.status ?? r.signal}${r.error ? `, ${r.error.message}` : ''})`);
  const after = addonState(root);
  if ('error' in after) throw new Error(`the freshly built addon does not load: ${after.error}`);
  return after;
}
