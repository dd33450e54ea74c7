import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { loadNativeAddon } from '../src/util/native-addon.js';

/**
 * A machine without rdma-core: the install must still succeed and build the addon's io_uring
 * file I/O, TCP must work, and RDMA must fail at use saying what to install. Two cases:
 * - no rdma-core headers at build time (the addon is built without RDMA): where the headers
 *   exist they are hidden in a private mount namespace (unshare -m, which needs root), around a
 *   copy of the package; where they do not, the condition under test already holds;
 * - an addon built with RDMA (a prebuild) on a machine without rdma-core's libraries: here
 *   libibverbs.so.1 is hidden the same way (a bind mount of an empty file over it).
 */
const root = fileURLToPath(new URL('..', import.meta.url));
// rdma-core's headers are there when verbs.h is: /usr/include/rdma alone is the kernel's own
// (linux-libc-dev), present on every machine with a C toolchain.
const rdmaCoreHeaders = existsSync('/usr/include/infiniband/verbs.h');
const headerDirs = rdmaCoreHeaders ? ['/usr/include/infiniband', '/usr/include/rdma'].filter((d) => existsSync(d)) : [];
const unshareWorks = spawnSync('unshare', ['-m', 'true']).status === 0;
const toolchain = ['g++', 'make', 'python3'].every((c) => spawnSync('sh', ['-c', `command -v ${c}`]).status === 0);
const canRun = (headerDirs.length === 0 || unshareWorks) && toolchain;
if (!canRun) {
  process.stderr.write(
    `\n!!! test/no-rdma-core.test.ts CANNOT RUN HERE: ${toolchain ? '`unshare -m` is not permitted (needs root)' : 'no C++ toolchain (g++ make python3) to build the addon'} !!!\n\n`,
  );
}

// The TCP round trip, io_uring's presence and what rdma:// says, in a child process.
const SCRIPT = `
  import { writeFileSync } from 'node:fs';
  import { VofTarget, FileBlockExport, BlockDevice } from './dist/index.js';
  writeFileSync('disk.img', Buffer.alloc(1 << 20));
  const t = new VofTarget({});
  const exp = await FileBlockExport.open('disk.img');
  console.log('file io', exp.fileIoBackend);
  t.addExport('d', exp);
  const url = await t.listen('tcp://127.0.0.1:0');
  const d = await BlockDevice.open(url + '/d', { keepaliveIntervalMs: 0 });
  await d.write(4096, Buffer.alloc(4096, 9));
  console.log('tcp', (await d.read(4096, 4096)).every((x) => x === 9));
  await d.close();
  await t.listen('rdma://127.0.0.1:0').catch((e) => console.log('rdma', e.name, e.message));
  await t.close();`;

describe('install and use without rdma-core headers', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vof-no-rdma-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const hide = headerDirs.map((d) => `mount -t tmpfs none ${d} && `).join('');
  const inDir = (command: string, env: Record<string, string> = {}) =>
    spawnSync(...(hide ? (['unshare', ['-m', 'sh', '-c', `${hide}${command}`]] as const) : (['sh', ['-c', command]] as const)), {
      cwd: dir,
      encoding: 'utf8',
      timeout: 900000,
      env: { ...process.env, ...env },
    });

  it.runIf(canRun)('npm run install builds the addon with io_uring and without RDMA, and says how to get RDMA', () => {
    for (const f of ['package.json', 'binding.gyp', 'native', 'scripts', 'dist']) cpSync(join(root, f), join(dir, f), { recursive: true });
    symlinkSync(join(root, 'node_modules'), join(dir, 'node_modules'));
    const r = inDir('npm run install');
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/vof: native addon built with io_uring file I\/O but without RDMA \(rdma-core's headers are missing\)/);
    expect(r.stderr).toMatch(/install libibverbs-dev librdmacm-dev .*then run `npm rebuild` \(in the project vof is installed in, or in a checkout of vof\)/);
    expect(existsSync(join(dir, 'build/Release/vof_rdma.node'))).toBe(true);
    // Nothing of rdma-core is linked or referenced: the addon loads on any Linux machine.
    const nm = spawnSync('nm', ['-D', '--undefined-only', join(dir, 'build/Release/vof_rdma.node')], { encoding: 'utf8' });
    expect(nm.stdout).not.toMatch(/\b(ibv|rdma)_/);
  }, 900000);

  it.runIf(canRun)('TCP works there with io_uring file I/O; rdma:// and `vof devices` say what to install', () => {
    const r = inDir('node --input-type=module -e "$VOF_SCRIPT" && node dist/cli/main.js devices', { VOF_SCRIPT: SCRIPT });
    expect(r.stdout).toMatch(/^tcp true$/m);
    expect(r.stdout).toMatch(/^file io uring$/m);
    expect(r.stdout).toMatch(/^rdma RdmaUnavailableError the RDMA transport was not compiled into vof's native addon: .*libibverbs-dev librdmacm-dev, then run `npm rebuild`/m);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^vof: RdmaUnavailableError: .*then run `npm rebuild` \(in the project vof is installed in, or in a checkout of vof\)/m);
    // --json promises JSON on stdout, the failure included.
    const json = inDir('node dist/cli/main.js devices --json');
    expect(json.status).toBe(1);
    expect(JSON.parse(json.stdout).error).toMatch(/^RdmaUnavailableError: the RDMA transport was not compiled into vof's native addon/);
  });
});

describe('an addon built with RDMA on a machine without rdma-core libraries', () => {
  const lib = ['/usr/lib/x86_64-linux-gnu/libibverbs.so.1', '/usr/lib/aarch64-linux-gnu/libibverbs.so.1'].find((f) => existsSync(f));
  let rdmaBuilt = false;
  try {
    rdmaBuilt = (loadNativeAddon() as { rdma?: boolean }).rdma === true;
  } catch {
    /* not loaded: the first suite covers that */
  }
  const can = unshareWorks && lib !== undefined && rdmaBuilt;
  if (!can) {
    process.stderr.write(
      `\n!!! test/no-rdma-core.test.ts (prebuild case) CANNOT RUN HERE: ${!rdmaBuilt ? 'the addon here is not built with RDMA' : !lib ? 'libibverbs.so.1 is not installed' : '`unshare -m` is not permitted'} !!!\n\n`,
    );
  }
  it.runIf(rdmaBuilt)('the addon references no rdma-core symbol and needs no rdma-core library: it loads them itself', () => {
    const addonFile = join(root, 'build/Release/vof_rdma.node');
    const nm = spawnSync('nm', ['-D', '--undefined-only', addonFile], { encoding: 'utf8' });
    expect(nm.status).toBe(0);
    expect(nm.stdout).not.toMatch(/\b(ibv|rdma)_/);
    const elf = spawnSync('readelf', ['-d', addonFile], { encoding: 'utf8' });
    expect(elf.stdout).toMatch(/NEEDED/);
    expect(elf.stdout).not.toMatch(/libibverbs|librdmacm/);
  });

  it.runIf(can)('io_uring and TCP work; rdma:// names the libraries to install', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vof-no-libs-'));
    try {
      symlinkSync(join(root, 'dist'), join(dir, 'dist'));
      symlinkSync(join(root, 'node_modules'), join(dir, 'node_modules'));
      symlinkSync(join(root, 'build'), join(dir, 'build'));
      symlinkSync(join(root, 'package.json'), join(dir, 'package.json'));
      const r = spawnSync('unshare', ['-m', 'sh', '-c', `mount --bind /dev/null ${lib} && node --input-type=module -e "$VOF_SCRIPT"`], {
        cwd: dir,
        encoding: 'utf8',
        timeout: 120000,
        env: { ...process.env, VOF_SCRIPT: SCRIPT },
      });
      expect(r.stdout, r.stderr).toMatch(/^tcp true$/m);
      expect(r.stdout).toMatch(/^file io uring$/m);
      expect(r.stdout).toMatch(/^rdma RdmaUnavailableError the RDMA transport needs rdma-core's libraries \(.*libibverbs\.so\.1.*\): install the Debian\/Ubuntu packages libibverbs1 librdmacm1 ibverbs-providers/m);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
