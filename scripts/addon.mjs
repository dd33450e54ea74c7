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
  try {
    require('node-gyp-build')(root);
    return null;
  } catch (e) {
    return String(e?.message ?? e).split('\n')[0];
  }
}

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
 * Makes the addon load for the test suites: builds it when it does not load (or when `rebuild`,
 * e.g. because its build dependencies were just installed) and rdma-core's headers are there.
 * Returns 'loaded', 'built' or 'no-headers' (nothing could be done: the tests that need it say
 * so); throws when a build with the headers present fails, or its result does not load.
 */
export function ensureAddon({ log = (l) => process.stderr.write(`${l}\n`), rebuild = false, root = REPO_DIR } = {}) {
  const err = addonLoadError(root);
  if (err === null && !rebuild) return 'loaded';
  if (!addonHeadersPresent()) return 'no-headers';
  log(err === null ? 'vof: rebuilding the native addon (its build dependencies were just installed)' : `vof: the native addon does not load (${err}); building it with node-gyp`);
  const r = nodeGypRebuild(root, { stdio: 'inherit' });
  if (r.status !== 0) throw new Error(`node-gyp rebuild failed (exit ${r.status ?? r.signal}${r.error ? `, ${r.error.message}` : ''}) although rdma-core's headers are installed`);
  // A fresh process would load the new build; this one may hold the old one: check in a child.
  const check = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(require.resolve('node-gyp-build'))})(${JSON.stringify(root)})`], { encoding: 'utf8' });
  if (check.status !== 0) throw new Error(`the freshly built addon does not load: ${(check.stderr || '').trim().split('\n').slice(-3).join(' / ')}`);
  return 'built';
}
