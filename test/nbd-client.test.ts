import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NBD_PROTOCOL_ERROR, NbdClientConnection, NbdClientError, type NbdAddress } from '../src/nbd/nbd-client.js';
import { NBD_SIMPLE_REPLY_MAGIC, NbdCommand, NbdError } from '../src/nbd/nbd-protocol.js';
import { NbdSource } from '../src/nbd/nbd-source.js';
import { isNbdUri, parseNbdUri } from '../src/nbd/nbd-uri.js';
import { nbdClientStartTls } from '../src/nbd/nbd-tls.js';
import { reconnectPolicy } from '../src/util/reconnect-policy.js';
import { createLogger } from '../src/util/log.js';
import { needs } from './helpers/deps.js';
import { chunk, cookie, hostileServer, u16, u32, u64 } from './helpers/hostile-nbd.js';
import { pattern } from './helpers/pattern.js';
import { waitFor, waitForSocket } from './helpers/wait-for.js';

const nbdkitDeps = needs('test/nbd-client.test.ts (vof as an NBD client of nbdkit)', ['nbd-source-tests']);

function submit(c: NbdClientConnection, type: number, offset: number, length: number, data: Buffer | null, flags = 0): Promise<number> {
  return new Promise((resolve) => c.submit(type, flags, offset, length, data, resolve));
}

/** Writes `size` bytes of pattern `seed` at 0 and reads them back through `c`. */
async function roundTrip(c: NbdClientConnection, size: number, seed: number): Promise<void> {
  const data = pattern(size, seed);
  expect(await submit(c, NbdCommand.WRITE, 0, data.length, data)).toBe(0);
  const back = Buffer.alloc(size);
  expect(await submit(c, NbdCommand.READ, 0, back.length, back)).toBe(0);
  expect(back.equals(data)).toBe(true);
}


describe.skipIf(!nbdkitDeps.ok)(`the NBD client against nbdkit${nbdkitDeps.skipNote}`, () => {
  const dir = mkdtempSync(join(tmpdir(), 'vof-nbd-client-'));
  const sock = join(dir, 'nbdkit.sock');
  let nbdkit: ChildProcess;
  const address: NbdAddress = { kind: 'unix', path: sock };

  beforeAll(async () => {
    nbdkit = spawn('nbdkit', ['--foreground', '--exit-with-parent', '-U', sock, '--exportname=disk', 'memory', 'size=8M'], { stdio: 'inherit' });
    await waitForSocket(sock, nbdkit, 'nbdkit', 10000);
  });
  afterAll(() => {
    nbdkit.kill();
    rmSync(dir, { recursive: true, force: true });
  });

  it('negotiates fixed newstyle, structured replies and the export info', async () => {
    const c = await NbdClientConnection.connect(address, { exportName: 'disk' });
    try {
      expect(c.info.size).toBe(8 * 1024 * 1024);
      expect(c.info.structuredReplies).toBe(true);
      expect(c.info.readOnly).toBe(false);
      expect(c.info.canFlush).toBe(true);
      expect(c.info.canTrim).toBe(true);
      expect(c.info.canWriteZeroes).toBe(true);
    } finally {
      await c.close();
    }
  });

  it('large READs land in the caller buffers through onread (no data event on the socket), several in flight, bytes exact', async () => {
    const c = await NbdClientConnection.connect(address, { exportName: 'disk', maxInFlight: 8 });
    try {
      expect((c as unknown as { stream: { listenerCount(e: string): number } }).stream.listenerCount('data')).toBe(0);
      const sizes = [1024 * 1024, 128 * 1024, 4096, 2 * 1024 * 1024, 65536 + 512];
      // Above the 4 MiB the next test expects never written (it reads holes there).
      let at = 4 * 1024 * 1024;
      const parts = sizes.map((n, i) => {
        const data = Buffer.from(Array.from({ length: n }, (_, k) => (k * 29 + i * 3) & 0xff));
        const part = { at, data };
        at += n;
        return part;
      });
      for (const p of parts) expect(await submit(c, NbdCommand.WRITE, p.at, p.data.length, p.data)).toBe(0);
      const backs = parts.map((p) => Buffer.alloc(p.data.length, 0xee));
      const codes = await Promise.all(parts.map((p, i) => submit(c, NbdCommand.READ, p.at, p.data.length, backs[i]!)));
      expect(codes).toEqual(sizes.map(() => 0));
      for (let i = 0; i < parts.length; i++) expect(backs[i]!.equals(parts[i]!.data)).toBe(true);
    } finally {
      await c.close();
    }
  });

  it('writes, reads back (data and holes), flushes, trims and writes zeroes; many in flight', async () => {
    const c = await NbdClientConnection.connect(address, { exportName: 'disk', maxInFlight: 16 });
    try {
      const data = pattern(64 * 1024, 3);
      expect(await submit(c, NbdCommand.WRITE, 4096, data.length, data)).toBe(0);
      // A read over written data and a never-written hole: nbdkit answers with data and hole chunks.
      const back = Buffer.alloc(128 * 1024, 0xee);
      expect(await submit(c, NbdCommand.READ, 4096, back.length, back)).toBe(0);
      expect(back.subarray(0, data.length).equals(data)).toBe(true);
      expect(back.subarray(data.length).every((b) => b === 0)).toBe(true);
      expect(await submit(c, NbdCommand.FLUSH, 0, 0, null)).toBe(0);
      expect(await submit(c, NbdCommand.WRITE_ZEROES, 8192, 4096, null)).toBe(0);
      expect(await submit(c, NbdCommand.TRIM, 16384, 4096, null)).toBe(0);
      // (What a trimmed range reads back as is the server's choice: not checked.)
      const after = Buffer.alloc(12 * 1024);
      expect(await submit(c, NbdCommand.READ, 4096, after.length, after)).toBe(0);
      const want = Buffer.from(data.subarray(0, 12 * 1024));
      want.fill(0, 4096, 8192);
      expect(after.equals(want)).toBe(true);
      // 16 at once, then the slots serve again.
      expect(await submit(c, NbdCommand.WRITE, 4096, data.length, data)).toBe(0);
      const reads = Array.from({ length: 16 }, (_, i) => {
        const b = Buffer.alloc(4096);
        return submit(c, NbdCommand.READ, 4096 + i * 4096, 4096, b).then((e) => ({ e, b, i }));
      });
      expect(c.available).toBe(0);
      for (const { e, b, i } of await Promise.all(reads)) {
        expect(e).toBe(0);
        expect(b.equals(data.subarray(i * 4096, (i + 1) * 4096))).toBe(true);
      }
      // Past the end: the server's error, not a disconnect.
      expect(await submit(c, NbdCommand.READ, 8 * 1024 * 1024, 4096, Buffer.alloc(4096))).not.toBe(0);
      expect(c.closed).toBe(false);
    } finally {
      await c.close();
    }
  });

  it('a missing export is a clear error', async () => {
    nbdkit.kill();
    await new Promise((r) => nbdkit.once('exit', r));
    rmSync(sock, { force: true });
    nbdkit = spawn('nbdkit', ['--foreground', '--exit-with-parent', '-U', sock, '--exportname=disk', '--filter=exportname', 'memory', 'size=1M', 'exportname-strict=true', 'exportname=disk'], { stdio: 'inherit' });
    await waitForSocket(sock, nbdkit, 'nbdkit', 10000);
    const err = await NbdClientConnection.connect(address, { exportName: 'nope' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NbdClientError);
    expect((err as Error).message).toMatch(/NBD_OPT_GO refused|no export named "nope"/);
  });
});

describe('the NBD client against a hostile server', () => {
  const cases: [string, (h: Buffer) => Buffer, RegExp][] = [
    ['bad magic', (h) => Buffer.concat([u32(0xdeadbeef), u32(0), cookie(h)]), /bad magic 0xdeadbeef/],
    ['a cookie never sent', (h) => Buffer.concat([u32(NBD_SIMPLE_REPLY_MAGIC), u32(0), u64(0x0000001200000001n)]), /not in flight/],
    ['read data outside the request', (h) => chunk(h, 1, 1, Buffer.concat([u64(h.readBigUInt64BE(16) + 4096n), Buffer.alloc(512, 0x41)])), /outside the request/],
    ['a data chunk larger than the request', (h) => chunk(h, 1, 1, Buffer.concat([u64(h.readBigUInt64BE(16)), Buffer.alloc(8192, 0x41)])), /unexpected reply chunk/],
    ['a read that claims success without its data', (h) => chunk(h, 1, 0, Buffer.alloc(0)), /covers 0 of 4096 bytes/],
    ['an error message longer than its chunk', (h) => chunk(h, 1, 0x8001, Buffer.concat([u32(5), u16(200), Buffer.alloc(10)])), /message is longer/],
  ];
  for (const [what, reply, message] of cases) {
    it(`${what}: the request fails, the connection closes, nothing outside the request's buffer is written`, async () => {
      const srv = await hostileServer(reply);
      try {
        const c = await NbdClientConnection.connect({ kind: 'tcp', host: '127.0.0.1', port: srv.port }, { exportName: '' });
        const closed = new Promise<Error | null>((r) => c.onClose(r));
        const backing = Buffer.alloc(3 * 4096, 0x5a);
        const into = backing.subarray(4096, 8192);
        expect(await submit(c, NbdCommand.READ, 8192, 4096, into)).toBe(NBD_PROTOCOL_ERROR);
        const err = await closed;
        expect(err?.message).toMatch(message);
        expect(c.closed).toBe(true);
        expect(backing.subarray(0, 4096).every((b) => b === 0x5a)).toBe(true);
        expect(backing.subarray(8192).every((b) => b === 0x5a)).toBe(true);
      } finally {
        srv.close();
      }
    });
  }

  it('close() does not wait forever for a server that ignores NBD_CMD_DISC', async () => {
    const srv = await hostileServer((h) => (h.readUInt16BE(6) === NbdCommand.DISC ? Buffer.alloc(0) : Buffer.concat([u32(NBD_SIMPLE_REPLY_MAGIC), u32(0), cookie(h)])));
    try {
      const c = await NbdClientConnection.connect({ kind: 'tcp', host: '127.0.0.1', port: srv.port }, { exportName: '' });
      expect(await submit(c, NbdCommand.FLUSH, 0, 0, null)).toBe(0);
      await c.close();
      expect(c.closed).toBe(true);
    } finally {
      srv.close();
    }
  });

  it("a server's error reply is the request's status and the connection goes on", async () => {
    let n = 0;
    const srv = await hostileServer((h) =>
      n++ === 0 ? Buffer.concat([u32(NBD_SIMPLE_REPLY_MAGIC), u32(NbdError.ENOSPC), cookie(h)]) : Buffer.concat([u32(NBD_SIMPLE_REPLY_MAGIC), u32(0), cookie(h)]),
    );
    try {
      const c = await NbdClientConnection.connect({ kind: 'tcp', host: '127.0.0.1', port: srv.port }, { exportName: '' });
      expect(await submit(c, NbdCommand.WRITE, 0, 512, Buffer.alloc(512))).toBe(NbdError.ENOSPC);
      expect(await submit(c, NbdCommand.FLUSH, 0, 0, null)).toBe(0);
      expect(c.closed).toBe(false);
      c.destroy();
    } finally {
      srv.close();
    }
  });
});


describe.skipIf(!nbdkitDeps.ok)(`an NBD source that reconnects (nbdkit file plugin)${nbdkitDeps.skipNote}`, () => {
  const dir = mkdtempSync(join(tmpdir(), 'vof-nbd-source-'));
  const sock = join(dir, 'nbdkit.sock');
  const image = join(dir, 'disk.img');
  const lines: string[] = [];
  const log = createLogger('info', (_l, m) => lines.push(m));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  async function startNbdkit(extra: string[] = []): Promise<ChildProcess> {
    rmSync(sock, { force: true });
    const child = spawn('nbdkit', ['--foreground', '--exit-with-parent', '-U', sock, ...extra, 'file', image], { stdio: 'inherit' });
    await waitForSocket(sock, child, 'nbdkit', 10000);
    return child;
  }

  it('offers multi-conn with connections=4; a server killed mid-write and restarted: every acknowledged write is in the file', async () => {
    writeFileSync(image, Buffer.alloc(4 * 1024 * 1024));
    let nbdkit = await startNbdkit();
    const source = await NbdSource.open({ address: { kind: 'unix', path: sock }, exportName: '', connections: 4, depth: 4, reconnect: reconnectPolicy({ reconnectDelayMs: 50, ctrlLossTimeoutMs: 20000 }), log, label: 'test-source' });
    try {
      expect(source.info.canMultiConn).toBe(true);
      expect(source.connections).toBe(4);
      const acked = new Set<number>();
      const failed: number[] = [];
      const BLOCKS = 256;
      const writes: Promise<void>[] = [];
      for (let i = 0; i < BLOCKS; i++) {
        const data = pattern(4096, 1000 + i);
        writes.push(
          new Promise<void>((resolve) =>
            source.submit(NbdCommand.WRITE, 0, i * 4096, 4096, data, (e) => {
              if (e === 0) acked.add(i);
              else failed.push(i);
              resolve();
            }),
          ),
        );
        if (i === 64) {
          // Mid-stream: the server dies with writes in flight, and comes back a little later.
          nbdkit.kill('SIGKILL');
          await new Promise((r) => nbdkit.once('exit', r));
          await new Promise((r) => setTimeout(r, 200));
          nbdkit = await startNbdkit();
        }
      }
      await Promise.all(writes);
      const flushed = await new Promise<number>((r) => source.submit(NbdCommand.FLUSH, 0, 0, 0, null, r));
      expect(flushed).toBe(0);
      expect(failed).toEqual([]);
      expect(acked.size).toBe(BLOCKS);
      const file = readFileSync(image);
      for (const i of acked) expect(file.subarray(i * 4096, (i + 1) * 4096).equals(pattern(4096, 1000 + i)), `block ${i}`).toBe(true);
      expect(lines.some((l) => /reconnecting/.test(l))).toBe(true);
      expect(lines.some((l) => /reconnected/.test(l))).toBe(true);
    } finally {
      await source.close();
      nbdkit.kill();
    }
  });

  it('a server that stays away: after the loss timeout held and new requests fail, the state is lost; it comes back when the server does', async () => {
    writeFileSync(image, Buffer.alloc(1024 * 1024));
    let nbdkit = await startNbdkit();
    const source = await NbdSource.open({ address: { kind: 'unix', path: sock }, exportName: '', reconnect: reconnectPolicy({ reconnectDelayMs: 50, ctrlLossTimeoutMs: 300 }), log, label: 'test-source' });
    const states: string[] = [];
    source.onState((s) => states.push(s));
    try {
      nbdkit.kill('SIGKILL');
      await new Promise((r) => nbdkit.once('exit', r));
      const held = await new Promise<number>((r) => source.submit(NbdCommand.READ, 0, 0, 4096, Buffer.alloc(4096), r));
      expect(held).toBe(-1);
      expect(source.state).toBe('lost');
      expect(await new Promise<number>((r) => source.submit(NbdCommand.FLUSH, 0, 0, 0, null, r))).toBe(-1);
      nbdkit = await startNbdkit();
      await waitFor('the source to reconnect', () => source.state === 'connected', 5000, 50);
      expect(states).toEqual(['reconnecting', 'lost', 'connected']);
      expect(await new Promise<number>((r) => source.submit(NbdCommand.READ, 0, 0, 4096, Buffer.alloc(4096), r))).toBe(0);
    } finally {
      await source.close();
      nbdkit.kill();
    }
  });
});

describe.skipIf(!nbdkitDeps.ok)(`an nbds:// source: STARTTLS with a PSK against nbdkit --tls=require${nbdkitDeps.skipNote}`, () => {
  const dir = mkdtempSync(join(tmpdir(), 'vof-nbd-tls-'));
  const sock = join(dir, 'nbdkit.sock');
  const pskFile = join(dir, 'keys.psk');
  const key = Buffer.alloc(32, 7);
  let nbdkit: ChildProcess;
  beforeAll(async () => {
    writeFileSync(pskFile, `vof-target:${key.toString('hex')}\n`, { mode: 0o600 });
    nbdkit = spawn('nbdkit', ['--foreground', '--exit-with-parent', '-U', sock, '--tls=require', `--tls-psk=${pskFile}`, 'memory', 'size=1M'], { stdio: 'inherit' });
    await waitForSocket(sock, nbdkit, 'nbdkit', 10000);
  });
  afterAll(() => {
    nbdkit.kill();
    rmSync(dir, { recursive: true, force: true });
  });

  it('with the right PSK data round-trips; without TLS the server says TLS is required; a wrong key fails the handshake', async () => {
    const uri = parseNbdUri(`nbds+unix:///?socket=${sock}`);
    expect(uri.tls).toBe(true);
    const c = await NbdClientConnection.connect(uri.address, { exportName: uri.exportName, startTls: nbdClientStartTls({ psk: { identity: 'vof-target', key } }, undefined) });
    try {
      await roundTrip(c, 8192, 9);
    } finally {
      await c.close();
    }
    const plain = await NbdClientConnection.connect(uri.address, { exportName: '' }).catch((e: unknown) => e);
    expect((plain as Error).message).toMatch(/requires TLS|NBD_OPT_STRUCTURED_REPLY|refused/);
    const wrong = await NbdClientConnection.connect(uri.address, { exportName: '', startTls: nbdClientStartTls({ psk: { identity: 'vof-target', key: Buffer.alloc(32, 8) } }, undefined) }).catch((e: unknown) => e);
    expect(wrong).toBeInstanceOf(Error);
  });
});

describe('NBD source URIs', () => {
  it('parses the forms of NBD URI specification and refuses the rest with a reason', () => {
    expect(parseNbdUri('nbd://example.com/disk%201')).toMatchObject({ address: { kind: 'tcp', host: 'example.com', port: 10809 }, exportName: 'disk 1', tls: false });
    expect(parseNbdUri('nbds://[::1]:10810/')).toMatchObject({ address: { kind: 'tcp', host: '::1', port: 10810 }, exportName: '', tls: true });
    expect(parseNbdUri('nbd+unix:///exp?socket=/run/nbd.sock')).toMatchObject({ address: { kind: 'unix', path: '/run/nbd.sock' }, exportName: 'exp', tls: false });
    expect(() => parseNbdUri('nbd+unix:///exp')).toThrow(/needs \?socket=PATH/);
    expect(() => parseNbdUri('nbd://host/x?socket=/a')).toThrow(/belongs to nbd\+unix/);
    expect(() => parseNbdUri('nbd://host/x?tls-certificates=/a')).toThrow(/not supported/);
    expect(() => parseNbdUri('nbd://ho\nst/x')).toThrow(/control characters/);
    expect(() => parseNbdUri('nbd:///x')).toThrow(/no host/);
    expect(isNbdUri('/dev/sda')).toBe(false);
    expect(isNbdUri('nbds+unix:///?socket=/s')).toBe(true);
  });
});

describe.skipIf(!nbdkitDeps.ok)(`an nbds:// source with certificates against nbdkit --tls-certificates${nbdkitDeps.skipNote}`, () => {
  const FIX = join(import.meta.dirname, 'fixtures', 'tls');
  const dir = mkdtempSync(join(tmpdir(), 'vof-nbd-certs-'));
  let nbdkit: ChildProcess;
  let port = 0;
  beforeAll(async () => {
    // nbdkit's certificates directory: ca-cert.pem, server-cert.pem, server-key.pem.
    copyFileSync(join(FIX, 'ca.crt'), join(dir, 'ca-cert.pem'));
    copyFileSync(join(FIX, 'target.crt'), join(dir, 'server-cert.pem'));
    copyFileSync(join(FIX, 'target.key'), join(dir, 'server-key.pem'));
    chmodSync(join(dir, 'server-key.pem'), 0o600);
    const probe = net.createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    port = (probe.address() as net.AddressInfo).port;
    await new Promise((r) => probe.close(r));
    nbdkit = spawn('nbdkit', ['--foreground', '--exit-with-parent', '--ipaddr', '127.0.0.1', '--port', String(port), '--tls=require', `--tls-certificates=${dir}`, 'memory', 'size=1M'], { stdio: 'inherit' });
    for (let i = 0; i < 200; i++) {
      const up = await new Promise<boolean>((r) => net.connect(port, '127.0.0.1').once('connect', function (this: net.Socket) { this.destroy(); r(true); }).once('error', () => r(false)));
      if (up) break;
      await new Promise((r) => setTimeout(r, 25));
    }
  });
  afterAll(() => {
    nbdkit?.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it("the server's certificate is checked against tls-ca: the right CA round-trips data, another CA is refused", async () => {
    const address = { kind: 'tcp' as const, host: '127.0.0.1', port };
    const c = await NbdClientConnection.connect(address, { exportName: '', startTls: nbdClientStartTls({ ca: readFileSync(join(FIX, 'ca.crt')) }, '127.0.0.1') });
    try {
      await roundTrip(c, 4096, 12);
    } finally {
      c.destroy();
    }
    const rogue = await NbdClientConnection.connect(address, { exportName: '', startTls: nbdClientStartTls({ ca: readFileSync(join(FIX, 'rogue-ca.crt')) }, '127.0.0.1') }).catch((e: unknown) => e);
    expect(rogue).toBeInstanceOf(NbdClientError);
    expect((rogue as Error).message).toMatch(/certificate/i);
  });
});
