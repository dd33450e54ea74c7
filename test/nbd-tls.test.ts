import { execFile, spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTarget, type StartedTarget } from '../scripts/start-target.mjs';
import { NbdCommand, NbdInfo, NbdOption, NbdReply, encodeInfoRequest } from '../src/nbd/nbd-protocol.js';
import { needs } from './helpers/deps.js';
import { socketOf, startBridge, type Bridge } from './helpers/nbd-bridge.js';
import { RawNbdClient } from './helpers/raw-nbd.js';
import { pattern } from './helpers/pattern.js';

/**
 * NBD's STARTTLS on `vof nbd` (issue 17, finding 7): TLS with client certificates and with PSKs,
 * against libnbd's nbdcopy/nbdinfo (GnuTLS: nobody here wrote either side's TLS) and a raw client;
 * a plain client against a TLS-required bridge learns nothing but NBD_REP_ERR_TLS_REQD.
 */

const clients = needs('test/nbd-tls.test.ts (vof nbd with TLS, against libnbd)', ['libnbd-bin']);

const MiB = 1024 * 1024;
const SLOW = 240000;
const DISK = 8 * MiB;
const FIX = join(import.meta.dirname, 'fixtures', 'tls');
const fixture = (f: string) => join(FIX, f);

// libnbd clients are asynchronous children: the bridges run in other processes anyway.
const execFileP = promisify(execFile);
async function run(cmd: string, args: string[]): Promise<{ status: number; out: string; stdout: string }> {
  try {
    const r = await execFileP(cmd, args, { encoding: 'utf8', timeout: 120000 });
    return { status: 0, out: r.stdout + r.stderr, stdout: r.stdout };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { status: typeof e.code === 'number' ? e.code : -1, out: `${e.stdout ?? ''}${e.stderr ?? ''}`, stdout: e.stdout ?? '' };
  }
}

/** A GnuTLS certificates directory as libnbd wants it (tls-certificates=DIR). */
function certDir(root: string, name: string, client: { cert: string; key: string } | null): string {
  const dir = join(root, name);
  mkdirSync(dir);
  copyFileSync(fixture('ca.crt'), join(dir, 'ca-cert.pem'));
  if (client) {
    copyFileSync(fixture(client.cert), join(dir, 'client-cert.pem'));
    copyFileSync(fixture(client.key), join(dir, 'client-key.pem'));
    chmodSync(join(dir, 'client-key.pem'), 0o600);
  }
  return dir;
}

describe.skipIf(!clients.ok)(`vof nbd with NBD TLS (STARTTLS)${clients.skipNote}`, { timeout: SLOW }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'vof-nbdtls-'));
  const disk = join(dir, 'disk.img');
  let target: StartedTarget;
  let certBridge: Bridge;
  let pskBridge: Bridge;
  let url: string;
  const raws: RawNbdClient[] = [];

  beforeAll(async () => {
    writeFileSync(disk, pattern(DISK, 3));
    target = await startTarget(['--listen', 'tcp://127.0.0.1:0', '--blk', `tlsdisk=${disk}`], { lines: 1 });
    url = `${target.urls[0]}/tlsdisk`;
    [certBridge, pskBridge] = await Promise.all([
      startBridge([url, '--socket', join(dir, 'cert.sock'), '--nbd-tls-cert', fixture('target.crt'), '--nbd-tls-key', fixture('target.key'), '--nbd-tls-ca', fixture('ca.crt'), '--log', 'debug']),
      startBridge([url, '--socket', join(dir, 'psk.sock'), '--nbd-tls-psk', fixture('psk.txt'), '--log', 'debug']),
    ]);
  }, SLOW);

  afterAll(async () => {
    raws.forEach((c) => c.close());
    await Promise.all([certBridge, pskBridge].filter(Boolean).map((b) => b.stop()));
    await target?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const raw = async (b: Bridge) => {
    const c = await RawNbdClient.connect(socketOf(b.uri));
    raws.push(c);
    return c;
  };

  it('with TLS required the printed URI is nbds+unix://', () => {
    expect(certBridge.uri).toBe(`nbds+unix:///tlsdisk?socket=${join(dir, 'cert.sock')}`);
    expect(pskBridge.stdout()).toBe(`nbds+unix:///tlsdisk?socket=${join(dir, 'psk.sock')}\n`);
  });

  it('nbdcopy writes through TLS with a client certificate, reads back through TLS with a PSK: the bytes reach the disk', async () => {
    const certs = certDir(dir, 'certs-a', { cert: 'host-a.crt', key: 'host-a.key' });
    const src = join(dir, 'src.img');
    writeFileSync(src, pattern(DISK, 99));
    const w = await run('nbdcopy', [src, `${certBridge.uri}&tls-certificates=${certs}`]);
    expect(w.status, w.out).toBe(0);
    expect(readFileSync(disk).equals(readFileSync(src))).toBe(true);
    // libnbd takes the PSK identity from the URI's user part.
    const back = join(dir, 'back.img');
    const pskUri = pskBridge.uri.replace('nbds+unix://', 'nbds+unix://id-b@');
    const r = await run('nbdcopy', [`${pskUri}&tls-psk-file=${fixture('psk.txt')}`, back]);
    expect(r.status, r.out).toBe(0);
    expect(readFileSync(back).equals(readFileSync(src))).toBe(true);
    const info = await run('nbdinfo', ['--json', `${pskUri}&tls-psk-file=${fixture('psk.txt')}`]);
    expect(info.status, info.out).toBe(0);
    expect(JSON.parse(info.stdout)).toMatchObject({ TLS: true, exports: [{ 'export-name': 'tlsdisk', 'export-size': DISK }] });
    expect(certBridge.stderr()).toMatch(/TLS TLSv1\.3 on, client "host-a"/);
    expect(pskBridge.stderr()).toMatch(/TLS TLSv1\.3 on, client "id-b"/);
  }, SLOW);

  it('a wrong PSK, a certificate from another CA and no certificate at all are refused; plain nbdinfo gets nothing', async () => {
    const badPsk = join(dir, 'bad-psk.txt');
    writeFileSync(badPsk, 'id-b:00112233445566778899aabbccddeeff\n');
    const pskUri = pskBridge.uri.replace('nbds+unix://', 'nbds+unix://id-b@');
    const wrongKey = await run('nbdinfo', [`${pskUri}&tls-psk-file=${badPsk}`]);
    expect(wrongKey.status).not.toBe(0);
    expect(wrongKey.out).not.toMatch(/export-size/);
    const otherPsk = join(dir, 'other-psk.txt');
    writeFileSync(otherPsk, `id-zz:${'ab'.repeat(32)}\n`);
    const unknownId = await run('nbdinfo', [`${pskBridge.uri.replace('nbds+unix://', 'nbds+unix://id-zz@')}&tls-psk-file=${otherPsk}`]);
    expect(unknownId.status).not.toBe(0);
    expect(pskBridge.stderr()).toMatch(/unknown PSK identity "id-zz"/);

    const rogue = certDir(dir, 'certs-rogue', { cert: 'rogue-host-a.crt', key: 'rogue-host-a.key' });
    const r = await run('nbdinfo', [`${certBridge.uri}&tls-certificates=${rogue}`]);
    expect(r.status).not.toBe(0);
    const none = certDir(dir, 'certs-none', null);
    const n = await run('nbdinfo', [`${certBridge.uri}&tls-certificates=${none}`]);
    expect(n.status).not.toBe(0);
    expect(certBridge.stderr()).toMatch(/TLS handshake failed: client refused: /);

    const plain = await run('nbdinfo', ['--list', certBridge.uri.replace('nbds+unix://', 'nbd+unix://')]);
    expect(plain.status).not.toBe(0);
    expect(plain.out).not.toMatch(/tlsdisk"|export-size/);
  }, SLOW);

  it('raw plain client: every option but STARTTLS and ABORT gets NBD_REP_ERR_TLS_REQD, never the export list; EXPORT_NAME closes', async () => {
    const c = await raw(certBridge);
    c.sendClientFlags(3);
    const seen: Buffer[] = [];
    for (const [opt, data] of [
      [NbdOption.LIST, Buffer.alloc(0)],
      [NbdOption.INFO, encodeInfoRequest('tlsdisk', [NbdInfo.NAME, NbdInfo.DESCRIPTION])],
      [NbdOption.GO, encodeInfoRequest('', [])],
      [NbdOption.STRUCTURED_REPLY, Buffer.alloc(0)],
      [0x4242, Buffer.alloc(0)],
    ] as const) {
      c.sendOption(opt, data);
      const r = await c.readOptionReply();
      expect([r.option, r.type]).toEqual([opt, NbdReply.ERR_TLS_REQD]);
      seen.push(r.data);
    }
    // Oversized option data before TLS: still TLS_REQD (skipped unread).
    c.sendOption(NbdOption.LIST, Buffer.alloc(100000));
    expect((await c.readOptionReply()).type).toBe(NbdReply.ERR_TLS_REQD);
    // STARTTLS with data is malformed.
    c.sendOption(NbdOption.STARTTLS, Buffer.from('x'));
    expect((await c.readOptionReply()).type).toBe(NbdReply.ERR_INVALID);
    expect(Buffer.concat(seen).toString()).not.toMatch(/tlsdisk|vof disk/);
    c.sendOption(NbdOption.EXPORT_NAME, Buffer.from('tlsdisk'));
    expect(await c.closedByServer()).toBe(true);

    // ABORT is still answered.
    const a = await raw(certBridge);
    a.sendClientFlags(3);
    a.sendOption(NbdOption.ABORT);
    expect((await a.readOptionReply()).type).toBe(NbdReply.ACK);
    expect(await a.closedByServer()).toBe(true);
    // A client without fixed newstyle can never use TLS: closed at its flags.
    const old = await raw(certBridge);
    old.sendClientFlags(0);
    expect(await old.closedByServer()).toBe(true);
  });

  it('raw client: STARTTLS, then TLS 1.2 (which NBD requires servers to support); options restart inside TLS and I/O works; a second STARTTLS is invalid', async () => {
    const c = await raw(certBridge);
    c.sendClientFlags(3);
    const ack = await c.startTls({
      ca: readFileSync(fixture('ca.crt')),
      cert: readFileSync(fixture('host-b.crt')),
      key: readFileSync(fixture('host-b.key')),
      servername: 'localhost',
      maxVersion: 'TLSv1.2',
    });
    expect(ack.type).toBe(NbdReply.ACK);
    c.sendOption(NbdOption.STARTTLS);
    expect((await c.readOptionReply()).type).toBe(NbdReply.ERR_INVALID);
    c.sendOption(NbdOption.LIST);
    const list = await c.readOptionReplies();
    expect(list.map((r) => r.type)).toEqual([NbdReply.SERVER, NbdReply.ACK]);
    const go = await c.go('tlsdisk', [NbdInfo.BLOCK_SIZE]);
    expect(go.size).toBe(BigInt(DISK));
    const data = pattern(64 * 1024, 5);
    expect((await c.call(NbdCommand.WRITE, MiB, data.length, 0, data)).error).toBe(0);
    expect((await c.call(NbdCommand.FLUSH, 0, 0)).error).toBe(0);
    expect((await c.call(NbdCommand.READ, MiB, data.length)).data!.equals(data)).toBe(true);
    expect(readFileSync(disk).subarray(MiB, MiB + data.length).equals(data)).toBe(true);
    expect(certBridge.stderr()).toMatch(/TLS TLSv1\.2 on, client "host-b"/);
    // NBD_CMD_DISC: the TLS session is closed down, then the connection.
    c.request(NbdCommand.DISC, 0, 0);
    expect(await c.closedByServer()).toBe(true);
  });

  it('--nbd-tls on: plain clients still work, and a client may upgrade', async () => {
    const b = await startBridge([url, '--socket', join(dir, 'on.sock'), '--nbd-tls', 'on', '--nbd-tls-cert', fixture('target.crt'), '--nbd-tls-key', fixture('target.key')]);
    try {
      expect(b.uri).toBe(`nbd+unix:///tlsdisk?socket=${join(dir, 'on.sock')}`);
      const plain = await run('nbdinfo', [b.uri]);
      expect(plain.status, plain.out).toBe(0);
      expect(plain.out).toMatch(/without TLS/);
      const certs = certDir(dir, 'certs-on', null);
      const tls = await run('nbdinfo', [`${b.uri.replace('nbd+unix://', 'nbds+unix://')}&tls-certificates=${certs}`]);
      expect(tls.status, tls.out).toBe(0);
      expect(tls.out).toMatch(/with TLS/);
    } finally {
      await b.stop();
    }
  }, SLOW);

  it('--listen beyond loopback: allowed with TLS that authenticates clients, refused with TLS that does not', async () => {
    const cli = (args: string[]) => spawnSync(process.execPath, ['dist/cli/main.js', 'nbd', url, ...args], { encoding: 'utf8', timeout: 20000 });
    const certOnly = cli(['--listen', '0.0.0.0:0', '--nbd-tls-cert', fixture('target.crt'), '--nbd-tls-key', fixture('target.key')]);
    expect([certOnly.status, certOnly.stderr]).toEqual([2, expect.stringMatching(/NBD clients are not authenticated.*--nbd-tls-ca/)]);
    const optional = cli(['--listen', '0.0.0.0:0', '--nbd-tls', 'on', '--nbd-tls-psk', fixture('psk.txt')]);
    expect(optional.status).toBe(2);
    const bad = cli(['--socket', join(dir, 'x.sock'), '--nbd-tls', 'maybe', '--nbd-tls-psk', fixture('psk.txt')]);
    expect([bad.status, bad.stderr]).toEqual([2, expect.stringMatching(/--nbd-tls expects require or on/)]);
    const noCreds = cli(['--socket', join(dir, 'x.sock'), '--nbd-tls', 'require']);
    expect([noCreds.status, noCreds.stderr]).toEqual([2, expect.stringMatching(/needs credentials/)]);
    const caOnly = cli(['--socket', join(dir, 'x.sock'), '--nbd-tls-ca', fixture('ca.crt')]);
    expect([caOnly.status, caOnly.stderr]).toEqual([2, expect.stringMatching(/--nbd-tls-ca .* needs the bridge's own --nbd-tls-cert/)]);

    const b = await startBridge([url, '--listen', '0.0.0.0:0', '--nbd-tls-psk', fixture('psk.txt')]);
    try {
      expect(b.uri).toMatch(/^nbds:\/\/0\.0\.0\.0:\d+\/tlsdisk$/);
      const port = /:(\d+)\//.exec(b.uri)![1];
      const r = await run('nbdinfo', [`nbds://id-a@127.0.0.1:${port}/tlsdisk?tls-psk-file=${fixture('psk.txt')}`]);
      expect(r.status, r.out).toBe(0);
    } finally {
      await b.stop();
    }
  }, SLOW);
});
