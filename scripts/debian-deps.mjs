// The Debian packages that the test suites, `vof bench --anchors` and scripts/rxe drive: the one
// list is scripts/debian-deps.json (what each package is for, and who needs it); this module
// checks and installs them. Used by scripts/test-deps.mjs (first step of `npm test`),
// test/global-setup.ts, test/helpers/deps.ts, src/bench/setup.ts and scripts/rxe/lib.mjs.
//
// Installing needs root and apt-get: one `apt-get update` and one `apt-get install` per process.
// Where that is impossible the callers say so with the exact command (`sudo apt-get install ...`):
// tests print a loud banner and are skipped, or fail with VOF_REQUIRE_ALL=1.
// VOF_TEST_DEPS_DRY=1 pretends, for testing this machinery, that none of the packages is present
// and that nothing can be installed.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

/** The parsed scripts/debian-deps.json: { packages: {name: {for, commands?, files?}}, groups: {name: {for, packages}} }. */
export const DEPS = JSON.parse(fs.readFileSync(new URL('./debian-deps.json', import.meta.url), 'utf8'));

/**
 * The packages of the named groups (a name may also be one package of the list), each once, in
 * list order. Throws on a name that is neither.
 */
export function groupPackages(names) {
  const out = [];
  for (const n of names) {
    const pkgs = DEPS.groups[n]?.packages ?? (DEPS.packages[n] ? [n] : null);
    if (!pkgs) throw new Error(`debian-deps: "${n}" is neither a group nor a package of scripts/debian-deps.json (groups: ${Object.keys(DEPS.groups).join(', ')})`);
    for (const p of pkgs) if (!out.includes(p)) out.push(p);
  }
  return out;
}

/** The installed package names in `dpkg-query -W -f '${Package} ${Status}\n'` output. */
export function parseDpkgStatus(stdout) {
  const installed = new Set();
  for (const line of stdout.split('\n')) {
    const m = line.trim().match(/^(\S+?)(?::\S+)? (.*)$/); // "name[:arch] want flag status"
    if (m && m[2].trim() === 'install ok installed') installed.add(m[1]);
  }
  return installed;
}

const SEARCH = () => (process.env.PATH || '/usr/bin:/bin').split(':').concat(['/usr/local/sbin', '/usr/sbin', '/sbin']);

/** The path of cmd as an executable file on PATH (or in the sbin directories, as root's PATH has them), or null. */
export function which(cmd) {
  for (const dir of SEARCH()) {
    const p = path.join(dir || '.', cmd);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      if (fs.statSync(p).isFile()) return p;
    } catch {
      /* not here */
    }
  }
  return null;
}

/** Whether cmd is an executable file on PATH (see which). */
export function hasCommand(cmd) {
  return which(cmd) !== null;
}

export const isDry = (env = process.env) => env.VOF_TEST_DEPS_DRY === '1';
export const requireAll = (env = process.env) => env.VOF_REQUIRE_ALL === '1';

/**
 * How this machine answers "is package P there": `installed` is dpkg's set for the given
 * packages (null without dpkg-query), hasCommand/hasFile the probes of debian-deps.json.
 */
export function systemProbe(pkgs, env = process.env) {
  if (isDry(env)) return { installed: new Set(), hasCommand: () => false, hasFile: () => false };
  let installed = null;
  if (hasCommand('dpkg-query')) {
    const r = spawnSync('dpkg-query', ['-W', '-f', '${Package} ${Status}\n', ...pkgs], { encoding: 'utf8' });
    installed = parseDpkgStatus(r.stdout || '');
  }
  return { installed, hasCommand, hasFile: (f) => fs.existsSync(f) };
}

/**
 * The packages of `pkgs` that are missing. A package is there when dpkg says it is installed, or
 * when it has probes (commands/files in debian-deps.json) and all of them are found. Without dpkg
 * (probe.installed null) a package without probes cannot be judged and counts as there.
 */
export function missingPackages(pkgs, probe) {
  return pkgs.filter((p) => {
    if (probe.installed?.has(p)) return false;
    const d = DEPS.packages[p] ?? {};
    const checks = [...(d.commands ?? []).map((c) => probe.hasCommand(c)), ...(d.files ?? []).map((f) => probe.hasFile(f))];
    if (checks.length === 0) return probe.installed !== null;
    return !checks.every(Boolean);
  });
}

/** Why packages cannot be installed here, or null if apt-get can be run (root, apt-get present). */
export function installImpossible(env = process.env, { uid = process.getuid?.(), apt = hasCommand('apt-get') } = {}) {
  if (isDry(env)) return 'VOF_TEST_DEPS_DRY=1 pretends that nothing can be installed';
  if (!apt) return 'no apt-get here (not Debian/Ubuntu)';
  if (uid !== 0) return 'not root';
  return null;
}

const APT_INSTALL = ['install', '-y', '--no-install-recommends'];

/** The command a person runs to install pkgs. */
export function installCommand(pkgs) {
  return `sudo apt-get ${APT_INSTALL.join(' ')} ${pkgs.join(' ')}`;
}

/** "pkg (for what)" for each package, joined. */
export function describePackages(pkgs) {
  return pkgs.map((p) => `${p} (${DEPS.packages[p]?.for ?? 'no description'})`).join('; ');
}

/** The groups' purposes that need any of pkgs, joined: the "why" of an install. */
export function purposes(pkgs, groups = Object.keys(DEPS.groups)) {
  return groups.filter((g) => DEPS.groups[g].packages.some((p) => pkgs.includes(p))).map((g) => DEPS.groups[g].for).join('; ');
}

const aptEnv = () => ({ ...process.env, DEBIAN_FRONTEND: 'noninteractive' });
const tail = (s) => (s || '').trim().split('\n').slice(-3).join(' / ');
let aptUpdated = false;

/** `apt-get update`, once per process. Throws with apt's last lines on failure. */
export function aptUpdate() {
  if (aptUpdated) return;
  const r = spawnSync('apt-get', ['update', '-qq'], { encoding: 'utf8', env: aptEnv() });
  if (r.status !== 0) throw new Error(`apt-get update failed: ${tail(r.stderr) || r.error?.message}`);
  aptUpdated = true;
}

/** `apt-get update` (once) and one `apt-get install` of pkgs. Throws with apt's last lines on failure. */
export function aptInstall(pkgs) {
  aptUpdate();
  const r = spawnSync('apt-get', [...APT_INSTALL, '-qq', ...pkgs], { encoding: 'utf8', env: aptEnv() });
  if (r.status !== 0) throw new Error(`apt-get ${APT_INSTALL.join(' ')} ${pkgs.join(' ')} failed: ${tail(r.stderr) || r.error?.message}`);
}

/**
 * Installs the missing packages of `groups` when this process can (root, apt-get), with one
 * line on `log` saying which and why. Never throws: returns { wanted, installed, missing,
 * impossible, error } where `missing` is what is still missing afterwards, `impossible` why
 * nothing was tried (null if it was), `error` apt's failure (or null).
 */
export function ensurePackages(groups, { who = 'vof', log = (l) => process.stderr.write(`${l}\n`), env = process.env } = {}) {
  const wanted = groupPackages(groups);
  const before = missingPackages(wanted, systemProbe(wanted, env));
  const result = { wanted, installed: [], missing: before, impossible: null, error: null };
  if (before.length === 0) return result;
  result.impossible = installImpossible(env);
  if (result.impossible) return result;
  log(`${who}: installing ${before.length} missing Debian package(s) with apt-get: ${before.join(' ')} (for ${purposes(before, groups)})`);
  try {
    aptInstall(before);
  } catch (e) {
    result.error = e.message;
  }
  result.missing = missingPackages(wanted, systemProbe(wanted, env));
  result.installed = before.filter((p) => !result.missing.includes(p));
  return result;
}

/** A loud block of lines: the same frame as rdma-suite.mjs's "RDMA TESTS DID NOT RUN". */
export function frame(lines) {
  const bar = '#'.repeat(78);
  return `\n${bar}\n##\n${lines.map((l) => `##  ${l}`).join('\n')}\n##\n${bar}\n\n`;
}

/**
 * The banner of a test file (or part of one) that cannot run: what, the missing packages and
 * what they are for, the exact install command, why `npm test` did not install them, and
 * whether that passes (exit 0) or fails the run (VOF_REQUIRE_ALL=1).
 */
export function skipBanner({ what, missing, problem = null, impossible = null, required = false }) {
  const lines = [`${required ? 'TESTS CANNOT RUN' : 'TESTS SKIPPED'}: ${what}`];
  if (missing.length) {
    lines.push(`missing Debian packages: ${missing.join(' ')}`);
    for (const p of missing) lines.push(`  ${p}: ${DEPS.packages[p]?.for ?? ''}`);
    lines.push(`install them:  ${installCommand(missing)}`);
    lines.push(
      impossible
        ? `(npm test installs missing packages itself when it runs as root with apt-get; here: ${impossible})`
        : '(npm test should have installed them: see the apt-get messages at the start of the run)',
    );
  }
  if (problem) lines.push(problem);
  lines.push(required ? 'VOF_REQUIRE_ALL=1: this is a FAILURE.' : 'The run passes anyway; VOF_REQUIRE_ALL=1 makes this a failure.');
  return frame(lines);
}

/**
 * For a test file: are the packages of `groups` there (and `problem()`, asked only when they are,
 * null)? If not, writes the banner to stderr and returns { ok: false, reason, skipNote }, or with
 * VOF_REQUIRE_ALL=1 throws. `skipNote` goes into the skipped describe's name so that the skip is
 * visible in vitest's report too. `probe`/`impossible` are for unit tests.
 */
export function checkTestDeps(
  what,
  groups,
  { problem = null, env = process.env, probe = null, impossible = undefined, write = (s) => process.stderr.write(s) } = {},
) {
  const wanted = groupPackages(groups);
  const missing = missingPackages(wanted, probe ?? systemProbe(wanted, env));
  const other = missing.length === 0 && problem ? problem() : null;
  if (missing.length === 0 && !other) return { ok: true, reason: null, skipNote: '' };
  const required = requireAll(env);
  const why = impossible === undefined ? installImpossible(env) : impossible;
  const reason = missing.length ? `missing ${missing.join(' ')}; ${installCommand(missing)}` : other;
  const banner = skipBanner({ what, missing, problem: other, impossible: why, required });
  if (required) throw new Error(`${what} cannot run (VOF_REQUIRE_ALL=1)${banner}`);
  write(banner);
  // For the summary at the end of the run (test/global-setup.ts).
  if (env.VOF_TEST_SKIP_LOG) fs.appendFileSync(env.VOF_TEST_SKIP_LOG, `${JSON.stringify({ what, missing, problem: other })}\n`);
  return { ok: false, reason, skipNote: ` [SKIPPED: ${reason}]` };
}

/** The end-of-run summary of the skips that checkTestDeps logged (VOF_TEST_SKIP_LOG), or ''. */
export function skipSummary(logText) {
  const skips = logText
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l));
  if (skips.length === 0) return '';
  const missing = [...new Set(skips.flatMap((s) => s.missing))];
  return frame([
    `${skips.length} PART(S) OF THE TESTS WERE SKIPPED:`,
    ...skips.map((s) => `  ${s.what}: ${s.missing.length ? `missing ${s.missing.join(' ')}` : s.problem}`),
    ...(missing.length ? [`install:  ${installCommand(missing)}`] : []),
    'The run passes anyway; VOF_REQUIRE_ALL=1 makes this a failure.',
  ]);
}
