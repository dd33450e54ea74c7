import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { vofSync as vof } from './helpers/vof-cli.js';
import { VOF_CLI, startTarget } from '../scripts/start-target.mjs';
import { spawnSync } from 'node:child_process';

const COMMANDS = ['target', 'info', 'cp', 'admin', 'nbd', 'vduse', 'drain', 'revalidate', 'devices', 'bench'];

describe('vof CLI usage: help, unknown flags, usage errors', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vof-cli-usage-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it.each(COMMANDS)('vof %s --help and -h print the usage on stdout, exit 0', (cmd) => {
    for (const flag of ['--help', '-h']) {
      const r = vof([cmd, flag]);
      expect([r.status, r.stderr]).toEqual([0, '']);
      expect(r.stdout).toMatch(new RegExp(`^usage: vof ${cmd}\\b`));
      expect(r.stdout).toMatch(/^options:$/m);
    }
  });

  it('every option a --help lists is one its parser knows, and the other way round (one source)', async () => {
    // In-process: running each flag for real would start targets and benchmarks.
    const { parseCommand, commandHelp } = await import('../dist/cli/options.js');
    const specs = [
      (await import('../dist/cli/target-command.js')).TARGET_COMMAND,
      (await import('../dist/cli/info-command.js')).INFO_COMMAND,
      (await import('../dist/cli/cp-command.js')).CP_COMMAND,
      (await import('../dist/cli/admin-command.js')).ADMIN_COMMAND,
      (await import('../dist/cli/nbd-command.js')).NBD_COMMAND,
      (await import('../dist/cli/vduse-command.js')).VDUSE_COMMAND,
      (await import('../dist/cli/drain-command.js')).DRAIN_COMMAND,
      (await import('../dist/cli/revalidate-command.js')).REVALIDATE_COMMAND,
      (await import('../dist/cli/devices-command.js')).DEVICES_COMMAND,
      (await import('../dist/cli/bench-options.js')).BENCH_COMMAND,
    ];
    expect(specs.map((s) => s.name)).toEqual(COMMANDS);
    for (const spec of specs) {
      const help = commandHelp(spec);
      const listed = [...help.matchAll(/^ {2}(?:-\w, | {4})--([\w-]+)/gm)].map((m) => m[1]!).filter((f) => f !== 'help');
      const hidden = Object.entries(spec.options as Record<string, { hidden?: boolean }>).filter(([, d]) => d.hidden).map(([n]) => n);
      expect(new Set(listed), spec.name).toEqual(new Set(Object.keys(spec.options).filter((n) => !hidden.includes(n))));
      for (const f of listed) {
        const d = (spec.options as Record<string, { type: string }>)[f]!;
        const r = parseCommand(spec, d.type === 'string' ? [`--${f}`, 'x'] : [`--${f}`]);
        expect(r && Object.keys(r.values), `${spec.name} --${f}`).toContain(f);
      }
    }
  });

  it('the synopsis has what used to be missing: target --connect-timeout, info --max-redirects, cp TLS', () => {
    expect(vof(['help']).stdout).toMatch(/--connect-timeout MS/);
    expect(vof(['info', '--help']).stdout).toMatch(/--max-redirects N/);
    expect(vof(['cp', '--help']).stdout).toMatch(/--tls-psk FILE/);
    expect(vof(['cp', '--help']).stdout).toMatch(/--ivqn IVQN .*default: vof-initiator/);
  });

  it.each([
    [['info', 'tcp://127.0.0.1:1/x', '--jsn'], '--jsn', '--json'],
    [['target', '--lisen', 'tcp://127.0.0.1:0'], '--lisen', '--listen'],
    [['nbd', 'tcp://127.0.0.1:1/x', '--sockt', '/tmp/s'], '--sockt', '--socket'],
    [['admin', 'tcp://127.0.0.1:1/x', 'queues', '--jason'], '--jason', '--json'],
    [['drain', '--controll', '/tmp/c'], '--controll', '--control'],
  ])('an unknown flag is a usage error naming it and the closest valid one: %j', (args, bad, near) => {
    const r = vof(args);
    expect(r.status).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain(`unknown option ${bad} (did you mean ${near}?)`);
    expect(r.stderr).not.toMatch(/TypeError/);
  });

  it('vof alone: usage on stderr, exit 2; vof help: usage on stdout, exit 0; a typo of a command names the closest', () => {
    const bare = vof([]);
    expect([bare.status, bare.stdout]).toEqual([2, '']);
    expect(bare.stderr).toMatch(/Usage:/);
    const help = vof(['help']);
    expect([help.status, help.stderr]).toEqual([0, '']);
    expect(help.stdout).toMatch(/^ {2}vof info URL\/TVQN/m);
    const typo = vof(['infoo']);
    expect([typo.status, typo.stdout]).toEqual([2, '']);
    expect(typo.stderr).toMatch(/unknown command "infoo" \(did you mean info\?\)/);
  });

  it('--log takes only real levels, and lists them', () => {
    for (const args of [
      ['target', '--listen', 'tcp://127.0.0.1:0', '--blk', `d=${dir}/none.img`, '--log', 'verbose'],
      ['nbd', 'tcp://127.0.0.1:1/x', '--log', 'verbose'],
    ]) {
      const r = vof(args);
      expect(r.status).toBe(2);
      expect(r.stderr).toMatch(/--log must be one of debug, info, warn, error, silent, got "verbose"/);
    }
  });

  it('--listen without a scheme, or http://, is a usage error before any disk is opened', () => {
    for (const url of ['127.0.0.1:15779', 'http://127.0.0.1:15779']) {
      // The disk does not exist: today's code found that first (exit 1).
      const r = vof(['target', '--listen', url, '--blk', `d=${dir}/missing.img`]);
      expect(r.status).toBe(2);
      expect(r.stderr).toMatch(new RegExp(`--listen ${url.replace(/[.:/]/g, '\\$&')}: .*not a Virtio-oF address`));
      expect(r.stderr).not.toMatch(/cannot open/);
    }
  });

  it('--blk rejects unknown options instead of opening "x.img,bogus", and knows ro, rw, serial=, direct', () => {
    writeFileSync(join(dir, 'x.img,bogus'), Buffer.alloc(4096)); // what the old parser opened
    writeFileSync(join(dir, 'x.img'), Buffer.alloc(4096));
    const r = vof(['target', '--listen', 'tcp://127.0.0.1:0', '--blk', `d=${dir}/x.img,bogus`]);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/--blk ".*x\.img,bogus": unknown option "bogus"; options: ,ro ,rw ,serial= ,direct/);
    const typo = vof(['target', '--listen', 'tcp://127.0.0.1:0', '--blk', `d=${dir}/x.img,r0`]);
    expect(typo.stderr).toMatch(/unknown option "r0" \(did you mean ro\?\)/);
  });

  it('--blk NAME=PATH,direct,ro,serial=S is accepted', async () => {
    const t = await startTarget(['--listen', 'tcp://127.0.0.1:0', '--blk', `d=${dir}/x.img,direct,ro,serial=S1`], { lines: 1 });
    try {
      expect(t.urls).toHaveLength(1);
      expect(t.stderr()).toMatch(/exporting .* as "d"/);
      // Which file I/O, and why, in one info line.
      expect(t.stderr()).toMatch(/ info +file I\/O: (io_uring|libuv thread pool) \(.+\); mode (auto|uring|libuv) from (the default|VOF_FILE_IO)$/m);
    } finally {
      await t.stop();
    }
  });

  it('an empty file is refused; a size not a multiple of 512 is warned about with what is exported', async () => {
    writeFileSync(join(dir, 'empty.img'), '');
    const r = vof(['target', '--listen', 'tcp://127.0.0.1:0', '--blk', `e=${dir}/empty.img`]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/empty\.img is 0 bytes: a disk needs at least one 512-byte sector/);
    writeFileSync(join(dir, 'odd.img'), Buffer.alloc(1_000_001));
    const t = await startTarget(['--listen', 'tcp://127.0.0.1:0', '--blk', `o=${dir}/odd.img`], { lines: 1 });
    try {
      expect(t.stderr()).toMatch(/warn .*odd\.img is 1000001 bytes, not a multiple of 512: "o" exports 999936 bytes; the last 65 are not reachable/);
    } finally {
      await t.stop();
    }
  });

  it('a file the target may not write, exported without ,ro: the error suggests ,ro', () => {
    const ro = join(dir, 'ro.img');
    writeFileSync(ro, Buffer.alloc(4096));
    chmodSync(ro, 0o444);
    const args = ['target', '--listen', 'tcp://127.0.0.1:0', '--blk', `d=${ro}`];
    // root writes any file, whatever its mode: there, the file's directory is mounted read-only
    // in a private mount namespace (EROFS; running as nobody instead needs a checkout that
    // nobody may read, which /root is not).
    const r =
      process.getuid?.() === 0
        ? spawnSync('unshare', ['-m', 'sh', '-c', `mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"`, 'sh', dir, process.execPath, VOF_CLI, ...args], {
            encoding: 'utf8',
            timeout: 20000,
          })
        : vof(args);
    expect(r.status, r.stderr).toBe(1);
    expect(r.stderr).toMatch(/(EACCES|EROFS).*\(to export it read-only: --blk d=.*ro\.img,ro/);
  });

  it('vof nbd --socket in a missing directory: said once, and not as EACCES, before connecting', () => {
    const r = vof(['nbd', 'tcp://127.0.0.1:1/x', '--socket', '/nonexistent/dir/x.sock']);
    expect(r.status).toBe(1);
    expect(r.stderr).toBe('vof: cannot listen on /nonexistent/dir/x.sock: /nonexistent/dir is not an existing directory\n');
  });

  it('vof admin URL bogus says the command is unknown without connecting (exit 2)', () => {
    // Port 1 refuses: a connection attempt would fail with ECONNREFUSED (exit 1) first.
    const r = vof(['admin', 'tcp://127.0.0.1:1/x', 'queus']);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/unknown admin command "queus" \(did you mean queues\?\)/);
    expect(r.stderr).not.toMatch(/ECONNREFUSED/);
  });

  it('docs/CLI.md shows `vof help` verbatim', () => {
    const doc = readFileSync(new URL('../docs/CLI.md', import.meta.url), 'utf8');
    expect(doc).toContain(`\`\`\`\n${vof(['help']).stdout}\`\`\``);
  });

  it('the library exports what docs/LIBRARY.md and docs/RDMA.md use', async () => {
    const lib = await import('../dist/index.js');
    expect(typeof lib.VofRedirectError).toBe('function');
    expect(typeof lib.nativeBinding).toBe('function');
  });
});
