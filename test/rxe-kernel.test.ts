// The soft-RoCE VM's kernel handling (scripts/rxe/lib.mjs), on the host, without booting a VM:
// the kernel series a user may pick, and the initramfs built from a kernel tree laid out like
// Debian's 6.12 (xz-compressed modules, virtio_pci built in, 9p needing netfs).
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { needs } from './helpers/deps.js';

type Lib = typeof import('../scripts/rxe/lib.mjs');

const tools = needs('test/rxe-kernel.test.ts (the soft-RoCE initramfs)', ['busybox-static', 'cpio']);

// "vof test module\n", xz-compressed (xz -9 --check=crc32): what a Debian 6.12 .ko.xz is to the builder.
const MODULE_XZ = Buffer.from('/Td6WFoAAAFpIt42AgAhARwAAAAQz1jMAQAPdm9mIHRlc3QgbW9kdWxlCgBogxFkAAEkEOlE2cyQQpkNAQAAAAABWVo=', 'base64');
const MODULE = 'vof test module\n';

let dir: string;
let lib: Lib;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vof-rxe-kernel-test-'));
  // lib.mjs reads its cache directory when it is loaded: point it here first.
  process.env['VOF_RXE_CACHE'] = join(dir, 'cache');
  mkdirSync(join(dir, 'cache'));
  lib = await import('../scripts/rxe/lib.mjs');
});
afterAll(() => {
  delete process.env['VOF_RXE_CACHE'];
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('the kernel series of the soft-RoCE VM', () => {
  it('is 6.12 unless asked; --kernel / VOF_RXE_KERNEL take major.minor only', () => {
    const saved = process.env['VOF_RXE_KERNEL'];
    try {
      delete process.env['VOF_RXE_KERNEL'];
      expect(lib.kernelSeries()).toBe('6.12');
      process.env['VOF_RXE_KERNEL'] = '6.1';
      expect(lib.kernelSeries()).toBe('6.1');
      expect(lib.kernelSeries('6.12')).toBe('6.12');
      for (const bad of ['6', '6.12.118', 'latest', '6.1;rm']) expect(() => lib.kernelSeries(bad)).toThrow(lib.RxeUnavailable);
    } finally {
      if (saved === undefined) delete process.env['VOF_RXE_KERNEL'];
      else process.env['VOF_RXE_KERNEL'] = saved;
    }
  });
});

describe.skipIf(!tools.ok)(`the initramfs of a Debian 6.12-like kernel tree${tools.skipNote}`, () => {
  it('holds the 9p modules unpacked, dependencies first, and leaves out the built-in virtio_pci', () => {
    const kver = '6.12.0-voftest-amd64';
    const kdir = join(dir, 'kernel', 'lib', 'modules', kver);
    const mods = {
      'kernel/fs/netfs/netfs.ko.xz': [],
      'kernel/net/9p/9pnet.ko.xz': [],
      'kernel/net/9p/9pnet_virtio.ko.xz': ['kernel/net/9p/9pnet.ko.xz'],
      'kernel/fs/9p/9p.ko.xz': ['kernel/fs/netfs/netfs.ko.xz', 'kernel/net/9p/9pnet.ko.xz'],
    };
    for (const file of Object.keys(mods)) {
      mkdirSync(dirname(join(kdir, file)), { recursive: true });
      writeFileSync(join(kdir, file), MODULE_XZ);
    }
    writeFileSync(join(kdir, 'modules.dep'), Object.entries(mods).map(([f, deps]) => `${f}: ${deps.join(' ')}`.trimEnd() + '\n').join(''));
    writeFileSync(join(kdir, 'modules.builtin'), 'kernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/virtio/virtio_pci_modern_dev.ko\n');

    const cpio = lib.ensureInitramfs({ kver, kdir });
    const out = join(dir, 'unpacked');
    mkdirSync(out);
    const r = spawnSync('sh', ['-c', 'cpio -i -d --quiet < "$1"', 'sh', cpio], { cwd: out, encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(readFileSync(join(out, 'mods', 'order'), 'utf8').split('\n').filter(Boolean)).toEqual(['9pnet', '9pnet_virtio', 'netfs', '9p']);
    for (const name of ['9pnet', '9pnet_virtio', 'netfs', '9p']) expect(readFileSync(join(out, 'mods', `${name}.ko`), 'utf8')).toBe(MODULE);
    expect(readFileSync(join(out, 'init'), 'utf8')).toMatch(/switch_root/);
  });
});
