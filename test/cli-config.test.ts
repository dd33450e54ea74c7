import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { vofSync as vof } from './helpers/vof-cli.js';

/** `vof target --config FILE` is validated against a schema before anything is opened. */
describe('vof target --config validation', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vof-cli-config-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const disk = join(dir, 'disk.img');
  writeFileSync(disk, Buffer.alloc(65536));
  let n = 0;
  const withConfig = (cfg: unknown, extra: string[] = []) => {
    const file = join(dir, `c${n++}.json`);
    writeFileSync(file, JSON.stringify(cfg));
    return vof(['target', '--config', file, ...extra]);
  };

  it.each([
    // [config, the line expected on stderr]
    [{ listen: 'tcp://127.0.0.1:0', blk: [{ tvqn: 'd', path: disk }] }, 'listen: expected a list, got "tcp://127.0.0.1:0"'],
    [{ listen: ['tcp://127.0.0.1:0'], blk: [{ tvqn: 'd', file: disk }] }, 'blk[0].path: expected a string, got nothing'],
    [{ listen: ['tcp://127.0.0.1:0'], blk: [{ tvqn: 'd', file: disk }] }, 'blk[0].file: unknown key (did you mean "path"?)'],
    [{ listen: ['tcp://127.0.0.1:0'], blk: [{ tvqn: 'd', path: disk }], keepaliveIntervalMs: '5s' }, 'keepaliveIntervalMs: expected a number, got "5s"'],
    [{ listen: ['tcp://127.0.0.1:0'], blk: [{ tvqn: 'd', path: disk }], lisen: ['x'] }, 'lisen: unknown key (did you mean "listen"?)'],
    [{ listen: ['tcp://127.0.0.1:0'], blk: [{ tvqn: 'd', path: disk }], quotas: { unboundPerHost: 0 } }, 'quotas.unboundPerHost: expected at least 1, got 0'],
    [{ listen: ['tcp://127.0.0.1:0'], blk: [{ tvqn: 'd', path: disk }], log: 'verbose' }, 'log: expected one of "debug", "info", "warn", "error", "silent", got "verbose"'],
    [{ listen: ['tcp://127.0.0.1:0'], blk: [{ tvqn: 'd', path: disk, allow: [] }] }, 'blk[0].allow is empty; remove it to export to every initiator'],
    [{ listen: ['tcp://127.0.0.1:0'], blk: [{ tvqn: 'd', path: disk }], auth: { 'host-a': 42 } }, 'auth["host-a"]: expected a secret string or { "file": PATH }, got 42'],
    [{ listen: ['tcp://127.0.0.1:0'], blk: [{ tvqn: 'd', path: disk, admin: 'ops' }] }, 'blk[0].admin: expected a list, got "ops"'],
  ])('%j is refused naming the key and what was expected', (cfg, line) => {
    const r = withConfig(cfg);
    expect(r.status, r.stderr).toBe(2);
    expect(r.stderr).toContain(line);
    expect(r.stderr).not.toMatch(/cannot listen on t\b|cannot open undefined|RangeError/);
  });

  it('admin grants, auth secrets and direct are accepted (their consumers come from other branches)', () => {
    // Valid config, then a usage error that comes after validation: proves the config passed.
    const r = withConfig({
      blk: [{ tvqn: 'd', path: disk, direct: true, admin: ['ops@ops-cert'] }],
      rng: [{ tvqn: 'r', admin: ['ops'] }],
      admin: ['root-ivqn'],
      auth: { 'host-a': 'secret', 'host-b': { file: join(dir, 'secret.txt') } },
    });
    expect(r.stderr).toMatch(/needs at least one --listen/);
    expect(r.status).toBe(2);
  });

  it('docs/CONFIG.md is the schema\'s document (node scripts/config-doc.mjs rewrites it)', async () => {
    const { configDoc } = await import('../dist/cli/config-doc.js');
    const doc = readFileSync(new URL('../docs/CONFIG.md', import.meta.url), 'utf8');
    expect(doc).toBe(configDoc());
    for (const key of ['listen', 'blk[].path', 'blk[].direct', 'blk[].admin', 'admin', 'auth', 'keepaliveIntervalMs', 'quotas.unboundPerHost', 'tls.pskFile', 'fileIo']) {
      expect(doc).toContain(`| \`${key}\` |`);
    }
  });
});
