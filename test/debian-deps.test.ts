import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import {
  DEPS,
  checkTestDeps,
  ensurePackages,
  groupPackages,
  installCommand,
  installImpossible,
  missingPackages,
  parseDpkgStatus,
  requireAll,
  skipBanner,
  skipSummary,
  type Probe,
} from '../scripts/debian-deps.mjs';
import { DIRECT_GROUPS, VM_GROUPS } from '../scripts/rxe/lib.mjs';
import { HOST_GROUPS, RDMA_GROUPS } from '../scripts/test-deps.mjs';

/** The pure parts of scripts/debian-deps.mjs (the one list of Debian packages) and its users. */

const root = fileURLToPath(new URL('..', import.meta.url));
const read = (p: string) => readFileSync(join(root, p), 'utf8');

/** A machine where dpkg knows `installed` and PATH has `commands` (null dpkg: not Debian). */
function fake(installed: string[] | null, commands: string[] = [], files: string[] = []): Probe {
  return { installed: installed && new Set(installed), hasCommand: (c) => commands.includes(c), hasFile: (f) => files.includes(f) };
}

describe('the list (scripts/debian-deps.json)', () => {
  it('every group names known packages, every package says what it is for and is in a group', () => {
    const grouped = new Set(Object.values(DEPS.groups).flatMap((g) => g.packages));
    for (const [name, g] of Object.entries(DEPS.groups)) {
      expect(g.for, name).toBeTruthy();
      for (const p of g.packages) expect(DEPS.packages[p], `${name}: ${p}`).toBeDefined();
    }
    for (const [p, d] of Object.entries(DEPS.packages)) {
      expect(d.for, p).toBeTruthy();
      expect(grouped.has(p), `${p} is in no group`).toBe(true);
    }
  });

  it("covers everything .ci/run used to install, plus procps (sysctl), and what each suite runs", () => {
    const oldCiNeed = `libibverbs-dev librdmacm-dev ibverbs-providers ibverbs-utils rdmacm-utils perftest python3 make g++
      rdma-core iproute2 kmod cpio busybox-static qemu-system-x86 util-linux
      qemu-utils libnbd-bin fio nbd-client e2fsprogs nbdkit iperf3 nvme-cli`.split(/\s+/);
    const all = groupPackages([...HOST_GROUPS, ...RDMA_GROUPS, 'rxe-vm']);
    expect(oldCiNeed.filter((p) => !all.includes(p))).toEqual([]);
    expect(all).toContain('procps');
    // The VM's packages (scripts/rxe/lib.mjs) include the tools that the RDMA tests and scripts spawn.
    const vm = groupPackages(VM_GROUPS);
    const provides = (cmd: string) => vm.some((p) => DEPS.packages[p].commands?.includes(cmd));
    for (const cmd of ['sysctl', 'nbd-client', 'nvme', 'mkfs.ext4', 'fio', 'ib_write_bw', 'ibv_devices', 'ip', 'rdma', 'modprobe', 'qemu-system-x86_64', 'taskset']) {
      expect(provides(cmd), cmd).toBe(true);
    }
    expect(groupPackages(DIRECT_GROUPS)).not.toContain('qemu-system-x86');
  });

  it('groupPackages: each package once, in order; a package name is accepted; an unknown name throws', () => {
    expect(groupPackages(['nbd-tests', 'bench-anchors'])).toEqual(['qemu-utils', 'libnbd-bin', 'fio', 'nbdkit', 'iperf3']);
    expect(groupPackages(['libnbd-bin', 'nbd-tests'])).toEqual(['libnbd-bin', 'qemu-utils', 'fio']);
    expect(() => groupPackages(['nbd'])).toThrow(/"nbd" is neither a group nor a package/);
  });
});

describe('which packages are missing', () => {
  it('parses dpkg-query output: only "install ok installed" counts', () => {
    const out = [
      'fio install ok installed',
      'nbdkit deinstall ok config-files',
      'iperf3 install ok half-configured',
      'libibverbs-dev install ok installed',
      '',
    ].join('\n');
    expect([...parseDpkgStatus(out)]).toEqual(['fio', 'libibverbs-dev']);
  });

  it('dpkg, or all probes found; without dpkg a package without probes cannot be judged', () => {
    const pkgs = ['fio', 'nbdkit', 'libnbd-bin', 'libibverbs-dev', 'busybox-static'];
    expect(missingPackages(pkgs, fake(['fio']))).toEqual(['nbdkit', 'libnbd-bin', 'libibverbs-dev', 'busybox-static']);
    // nbdkit built by hand is on PATH; libnbd-bin needs both nbdinfo and nbdcopy; headers count as the -dev package.
    expect(missingPackages(pkgs, fake(['fio'], ['nbdkit', 'nbdinfo'], ['/usr/include/infiniband/verbs.h']))).toEqual(['libnbd-bin', 'busybox-static']);
    expect(missingPackages(pkgs, fake(null, ['fio']))).toEqual(['nbdkit', 'libnbd-bin', 'libibverbs-dev']);
    expect(missingPackages(pkgs, fake([...pkgs]))).toEqual([]);
  });

  it('installing is possible only as root with apt-get, and never with VOF_TEST_DEPS_DRY=1', () => {
    expect(installImpossible({}, { uid: 0, apt: true })).toBeNull();
    expect(installImpossible({}, { uid: 1000, apt: true })).toBe('not root');
    expect(installImpossible({}, { uid: 0, apt: false })).toMatch(/no apt-get/);
    expect(installImpossible({ VOF_TEST_DEPS_DRY: '1' }, { uid: 0, apt: true })).toMatch(/VOF_TEST_DEPS_DRY=1/);
  });

  it('VOF_TEST_DEPS_DRY=1: everything is missing and nothing is installed', () => {
    const r = ensurePackages(['nbd-tests'], { env: { ...process.env, VOF_TEST_DEPS_DRY: '1' }, log: () => expect.unreachable() });
    expect(r).toEqual({ wanted: ['qemu-utils', 'libnbd-bin', 'fio'], installed: [], missing: ['qemu-utils', 'libnbd-bin', 'fio'], impossible: expect.stringMatching(/DRY/), error: null });
  });
});

describe('what a test file that cannot run says', () => {
  it('the banner: what, the packages and their purpose, the exact command, why not installed, the outcome', () => {
    const b = skipBanner({ what: 'test/nbd.test.ts', missing: ['libnbd-bin', 'fio'], impossible: 'not root' });
    expect(installCommand(['libnbd-bin', 'fio'])).toBe('sudo apt-get install -y --no-install-recommends libnbd-bin fio');
    expect(b).toContain('##  TESTS SKIPPED: test/nbd.test.ts\n');
    expect(b).toContain('missing Debian packages: libnbd-bin fio');
    expect(b).toContain(`libnbd-bin: ${DEPS.packages['libnbd-bin'].for}`);
    expect(b).toContain('install them:  sudo apt-get install -y --no-install-recommends libnbd-bin fio\n');
    expect(b).toContain('runs as root with apt-get; here: not root)');
    expect(b).toContain('The run passes anyway; VOF_REQUIRE_ALL=1 makes this a failure.');
    expect(b.split('\n').filter((l) => l === '#'.repeat(78))).toHaveLength(2);
    const req = skipBanner({ what: 'x', missing: ['fio'], required: true });
    expect(req).toContain('TESTS CANNOT RUN: x');
    expect(req).toContain('VOF_REQUIRE_ALL=1: this is a FAILURE.');
  });

  it('checkTestDeps: ok when present; else banner + skip note; with VOF_REQUIRE_ALL=1 it throws', () => {
    const written: string[] = [];
    const write = (s: string) => void written.push(s);
    const env = {};
    expect(checkTestDeps('t', ['nbd-tests'], { env, write, probe: fake(['qemu-utils', 'libnbd-bin', 'fio']), impossible: 'not root' })).toEqual({ ok: true, reason: null, skipNote: '' });
    expect(written).toEqual([]);

    const r = checkTestDeps('t', ['nbd-tests'], { env, write, probe: fake(['qemu-utils']), impossible: 'not root' });
    expect(r.ok).toBe(false);
    expect(r.skipNote).toBe(' [SKIPPED: missing libnbd-bin fio; sudo apt-get install -y --no-install-recommends libnbd-bin fio]');
    expect(written.join('')).toContain('TESTS SKIPPED: t');

    expect(requireAll({ VOF_REQUIRE_ALL: '1' })).toBe(true);
    expect(requireAll({})).toBe(false);
    expect(() => checkTestDeps('t', ['nbd-tests'], { env: { VOF_REQUIRE_ALL: '1' }, write, probe: fake([]) })).toThrow(/t cannot run \(VOF_REQUIRE_ALL=1\)[^]*TESTS CANNOT RUN/);
  });

  it('a further problem is asked only when the packages are there, and is reported the same way', () => {
    let asked = 0;
    const problem = () => (asked++, 'the native addon does not load (boom)');
    const write = () => {};
    expect(checkTestDeps('a', ['addon'], { env: {}, write, probe: fake([]), problem }).reason).toMatch(/^missing libibverbs-dev/);
    expect(asked).toBe(0);
    const r = checkTestDeps('a', ['addon'], { env: {}, write, probe: fake(groupPackages(['addon'])), problem });
    expect([asked, r.ok, r.reason]).toEqual([1, false, 'the native addon does not load (boom)']);
  });

  it('skips are logged for the summary at the end of the run', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vof-deps-test-'));
    try {
      const env = { VOF_TEST_SKIP_LOG: join(dir, 'log') };
      checkTestDeps('one', ['libnbd-bin'], { env, write: () => {}, probe: fake([]) });
      checkTestDeps('two', ['nbd-tests'], { env, write: () => {}, probe: fake([]) });
      const s = skipSummary(readFileSync(env.VOF_TEST_SKIP_LOG, 'utf8'));
      expect(s).toContain('2 PART(S) OF THE TESTS WERE SKIPPED:');
      expect(s).toContain('  one: missing libnbd-bin\n');
      expect(s).toContain('install:  sudo apt-get install -y --no-install-recommends libnbd-bin qemu-utils fio\n');
      expect(skipSummary('')).toBe('');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('.ci/run and the README agree, and CI installs nothing itself', () => {
  it('.ci/run runs the quick start with VOF_REQUIRE_ALL=1 VOF_REQUIRE_RDMA=1 and no apt-get', () => {
    const ci = read('.ci/run');
    const commands = ci.split('\n').filter((l) => /^npm /.test(l));
    expect(commands.slice(0, 3)).toEqual(['npm install', 'npm run demo', 'npm test']);
    expect(ci).toMatch(/^export VOF_REQUIRE_ALL=1 VOF_REQUIRE_RDMA=1$/m);
    expect(ci).toMatch(/^set -euo pipefail$/m);
    expect(ci).not.toMatch(/apt-get|dpkg/);
    // ... and it runs them on a fresh machine: itself again, inside a clean Debian root.
    expect(ci).toMatch(/^if \[ "\$\{VOF_IN_FRESH_ROOT:-\}" != 1 \]; then\n  exec scripts\/fresh-root\/run\.sh \.ci\/run\nfi$/m);
    expect(read('scripts/fresh-root/run.sh')).toMatch(/--setenv VOF_IN_FRESH_ROOT 1/);
    const quick = read('README.md').split('## Quick start')[1]!.split('```sh\n')[1]!.split('```')[0]!;
    expect(quick).toMatch(/^npm install && npm run demo\s/m);
    expect(quick).toMatch(/^npm test\s/m);
    expect(JSON.parse(read('package.json')).scripts.test).toMatch(/^node scripts\/test-deps\.mjs && /);
  });
});
