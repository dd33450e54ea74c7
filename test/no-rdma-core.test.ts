import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

/**
 * A machine without rdma-core's headers: the install must still succeed, TCP must work, and
 * RDMA must fail at use saying what to install. Where the headers exist they are hidden in a
 * private mount namespace (unshare -m, which needs root), around a copy of the package; where
 * they do not (a machine without libibverbs-dev/librdmacm-dev), the condition under test
 * already holds and the commands run as they are.
 */
const root = fileURLToPath(new URL('..', import.meta.url));
const headerDirs = ['/usr/include/infiniband', '/usr/include/rdma'].filter((d) => existsSync(d));
const unshareWorks = headerDirs.length === 0 || spawnSync('unshare', ['-m', 'true']).status === 0;
if (!unshareWorks) {
  process.stderr.write('\n!!! test/no-rdma-core.test.ts CANNOT RUN HERE: `unshare -m` is not permitted (needs root) !!!\n\n');
}

describe('install and use without rdma-core headers', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vof-no-rdma-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const hide = headerDirs.map((d) => `mount -t tmpfs none ${d} && `).join('');
  const inDir = (command: string, env: Record<string, string> = {}) =>
    spawnSync(...(hide ? (['unshare', ['-m', 'sh', '-c', `${hide}${command}`]] as const) : (['sh', ['-c', command]] as const)), {
      cwd: dir,
      encoding: 'utf8',
      timeout: 120000,
      env: { ...process.env, ...env },
    });

  it.runIf(unshareWorks)('npm run install succeeds, explains what is missing, and builds nothing', () => {
    for (const f of ['package.json', 'binding.gyp', 'native', 'scripts', 'dist']) cpSync(join(root, f), join(dir, f), { recursive: true });
    symlinkSync(join(root, 'node_modules'), join(dir, 'node_modules'));
    const r = inDir('npm run install');
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/the native RDMA addon was NOT built; the TCP transport works/);
    expect(r.stderr).toMatch(/install libibverbs-dev librdmacm-dev/);
    expect(existsSync(join(dir, 'build/Release/vof_rdma.node'))).toBe(false);
  });

  it.runIf(unshareWorks)('TCP works there; rdma:// and `vof devices` fail with what to install', () => {
    const script = `
      import { writeFileSync } from 'node:fs';
      import { VofTarget, FileBlockExport, BlockDevice } from './dist/index.js';
      writeFileSync('disk.img', Buffer.alloc(1 << 20));
      const t = new VofTarget({});
      const exp = await FileBlockExport.open('disk.img');
      console.log('file io', exp.fileIoBackend);
      await FileBlockExport.open('disk.img', { fileIo: 'uring' }).catch((e) => console.log('uring', e.message));
      t.addDevice('d', exp);
      const url = await t.listen('tcp://127.0.0.1:0');
      const d = await BlockDevice.open(url + '/d', { keepaliveIntervalMs: 0 });
      await d.write(4096, Buffer.alloc(4096, 9));
      console.log('tcp', (await d.read(4096, 4096)).every((x) => x === 9));
      await d.close();
      await t.listen('rdma://127.0.0.1:0').catch((e) => console.log('rdma', e.name, e.message));
      await t.close();`;
    const r = inDir('node --input-type=module -e "$VOF_SCRIPT" && node dist/cli/main.js devices', { VOF_SCRIPT: script });
    expect(r.stdout).toMatch(/^tcp true$/m);
    // Block file I/O falls back to libuv without a word; only asking for io_uring explains.
    expect(r.stdout).toMatch(/^file io libuv$/m);
    expect(r.stdout).toMatch(/^uring io_uring file I\/O is unavailable: vof's native addon does not load/m);
    expect(r.stderr).not.toMatch(/io_uring|file I\/O/);
    expect(r.stdout).toMatch(/^rdma RdmaUnavailableError the RDMA transport needs vof's native addon and rdma-core .*libibverbs-dev librdmacm-dev/m);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^vof: RdmaUnavailableError: .*node \S*scripts\/build-addon\.mjs/m);
    // --json promises JSON on stdout, the failure included.
    const json = inDir('node dist/cli/main.js devices --json');
    expect(json.status).toBe(1);
    expect(JSON.parse(json.stdout).error).toMatch(/^RdmaUnavailableError: the RDMA transport needs vof's native addon/);
  });
});
