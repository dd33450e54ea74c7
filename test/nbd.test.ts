import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTarget, type StartedTarget } from '../scripts/start-target.mjs';
import { NbdCommand, NbdCommandFlag, NbdError, NbdInfo, NbdOption, NbdReply, TransmissionFlag, encodeInfoRequest } from '../src/nbd/nbd-protocol.js';
import { needs } from './helpers/deps.js';
import { socketOf, startBridge, type Bridge } from './helpers/nbd-bridge.js';
import { RawNbdClient } from './helpers/raw-nbd.js';
import { pattern } from './helpers/pattern.js';

/**
 * The NBD bridge against real NBD clients nobody here wrote (libnbd's nbdinfo and nbdcopy,
 * qemu-img, fio's nbd engine) and against a raw-socket client sending bad input.
 */

// The clients are the point of this file (and the raw-client tests use them in passing): without
// them it is skipped as a whole, with a banner (or fails with VOF_REQUIRE_ALL=1).
const clients = needs('test/nbd.test.ts (vof nbd with real NBD clients)', ['nbd-tests']);

const MiB = 1024 * 1024;
/** Per-test budget: real client processes on a shared, loaded 2-core machine. */
const SLOW = 240000;
const DISK = 32 * MiB;

function run(cmd: string, args: string[], timeout = 120000, cwd?: string) {
  // cwd: fio leaves verify state files in its working directory.
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout, ...(cwd && { cwd }) });
  return { status: r.status, out: `${r.stdout ?? ''}${r.stderr ?? ''}`, stdout: r.stdout ?? '' };
}

describe.skipIf(!clients.ok)(`vof nbd with real NBD clients${clients.skipNote}`, { timeout: SLOW }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'vof-nbd-'));
  let target: StartedTarget;
  let rw: Bridge;
  let ro: Bridge;
  let roFlag: Bridge;
  const rwDisk = join(dir, 'rw.img');
  const roDisk = join(dir, 'ro.img');

  beforeAll(async () => {
    writeFileSync(rwDisk, pattern(DISK, 7)); // not zeros, so a copy that does nothing would show
    writeFileSync(roDisk, pattern(4 * MiB, 9));
    target = await startTarget(['--listen', 'tcp://127.0.0.1:0', '--blk', `nbd-rw=${rwDisk}`, '--blk', `nbd-ro=${roDisk},ro`], { lines: 1 });
    const url = target.urls[0]!;
    [rw, ro, roFlag] = await Promise.all([
      startBridge([`${url}/nbd-rw`, '--socket', join(dir, 'rw.sock'), '--log', 'debug']),
      startBridge([`${url}/nbd-ro`, '--socket', join(dir, 'ro.sock'), '--name', 'ro disk']),
      startBridge([`${url}/nbd-rw`, '--socket', join(dir, 'ro-flag.sock'), '--read-only']),
    ]);
  }, SLOW);

  afterAll(async () => {
    await Promise.all([rw, ro, roFlag].filter(Boolean).map((b) => b.stop()));
    await target?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('prints exactly one line, the nbd+unix URI per the NBD URI spec', () => {
    expect(rw.stdout()).toBe(`nbd+unix:///nbd-rw?socket=${join(dir, 'rw.sock')}\n`);
    expect(ro.uri).toBe(`nbd+unix:///ro%20disk?socket=${join(dir, 'ro.sock')}`);
  });

  it('nbdinfo shows the export with its size, flags and block sizes', () => {
    const r = run('nbdinfo', ['--json', rw.uri]);
    expect(r.status, r.out).toBe(0);
    const info = JSON.parse(r.stdout) as { protocol: string; exports: Array<Record<string, unknown>> };
    expect(info.protocol).toBe('newstyle-fixed');
    const e = info.exports[0]!;
    expect(e['export-name']).toBe('nbd-rw');
    expect(e['export-size']).toBe(DISK);
    expect(e['is_read_only']).toBe(false);
    expect(e['can_flush']).toBe(true);
    expect(e['can_fua']).toBe(true);
    expect(e['can_trim']).toBe(true);
    expect(e['can_zero']).toBe(true);
    expect(e['can_multi_conn']).toBe(true);
    expect(e['block_size_minimum']).toBe(512);
    expect(e['block_size_preferred']).toBe(4096);
    expect(e['block_size_maximum']).toBe(32 * MiB);

    const r2 = run('nbdinfo', ['--json', ro.uri]);
    expect(r2.status, r2.out).toBe(0);
    const e2 = (JSON.parse(r2.stdout) as { exports: Array<Record<string, unknown>> }).exports[0]!;
    expect(e2['export-name']).toBe('ro disk');
    expect(e2['export-size']).toBe(4 * MiB);
    expect(e2['is_read_only']).toBe(true);
    expect(e2['can_trim']).toBe(false);
    expect(e2['can_zero']).toBe(false);

    const list = run('nbdinfo', ['--list', '--json', rw.uri]);
    expect(list.status, list.out).toBe(0);
    expect((JSON.parse(list.stdout) as { exports: Array<{ 'export-name': string }> }).exports.map((x) => x['export-name'])).toEqual(['nbd-rw']);
    // NBD clients are never shown the upstream vof URL (NBD_OPT_LIST, NBD_INFO_DESCRIPTION).
    expect(list.stdout).not.toMatch(/tcp:\/\/|127\.0\.0\.1/);
    expect(r.stdout).not.toMatch(/tcp:\/\/|127\.0\.0\.1/);
  }, SLOW);

  it('qemu-img convert copies a random 32 MiB image in; qemu-img compare and nbdcopy + cmp prove it identical', () => {
    const src = join(dir, 'random.img');
    writeFileSync(src, pattern(DISK, 12345));
    const conv = run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, rw.uri]);
    expect(conv.status, conv.out).toBe(0);
    const cmp = run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, rw.uri]);
    expect(cmp.status, cmp.out).toBe(0);
    expect(cmp.out).toMatch(/Images are identical/);
    const back = join(dir, 'back.img');
    const copy = run('nbdcopy', [rw.uri, back]);
    expect(copy.status, copy.out).toBe(0);
    expect(readFileSync(back).equals(readFileSync(src))).toBe(true);
    // And the bytes really reached the target's backing file.
    expect(readFileSync(rwDisk).equals(readFileSync(src))).toBe(true);
  }, SLOW);

  it('fio nbd engine: random writes with verify=crc32c, then a verify pass, no errors', () => {
    const common = ['--ioengine=nbd', `--uri=${rw.uri}`, '--bs=4k', '--size=16M', '--offset=8M', '--verify=crc32c', '--verify_fatal=1', '--verify_state_save=0', '--output-format=json'];
    const w = run('fio', ['--name=write', '--rw=randwrite', '--iodepth=16', '--do_verify=0', ...common], 120000, dir);
    expect(w.status, w.out).toBe(0);
    const v = run('fio', ['--name=write', '--rw=randwrite', '--iodepth=16', '--verify_only', ...common], 120000, dir);
    expect(v.status, v.out).toBe(0);
    const job = (JSON.parse(v.stdout.slice(v.stdout.indexOf('{'))) as { jobs: Array<{ error: number; read: { io_bytes: number } }> }).jobs[0]!;
    expect(job.error).toBe(0);
    expect(job.read.io_bytes).toBe(16 * MiB); // every written block was read back and checked
    const inline = run('fio', ['--name=inline', '--rw=randwrite', '--iodepth=32', '--do_verify=1', ...common], 120000, dir);
    expect(inline.status, inline.out).toBe(0);
    expect(inline.out).not.toMatch(/verify: bad|crc32c: verify failed/);
  }, SLOW);

  describe('raw NBD clients', () => {
    const clients: RawNbdClient[] = [];
    const connect = async (sock: string) => {
      const c = await RawNbdClient.connect(sock);
      clients.push(c);
      return c;
    };
    afterAll(() => clients.forEach((c) => c.close()));

    it('handshake: fixed newstyle with NO_ZEROES; unknown and unsupported options get ERR_UNSUP and haggling goes on', async () => {
      const c = await connect(socketOf(rw.uri));
      expect(c.handshakeFlags).toBe(3);
      c.sendClientFlags(1);
      for (const opt of [0x4242, NbdOption.STRUCTURED_REPLY, NbdOption.STARTTLS, NbdOption.SET_META_CONTEXT, NbdOption.EXTENDED_HEADERS]) {
        c.sendOption(opt);
        const r = await c.readOptionReply();
        expect([r.option, r.type]).toEqual([opt, NbdReply.ERR_UNSUP]);
      }
      c.sendOption(NbdOption.LIST, Buffer.from('x'));
      expect((await c.readOptionReply()).type).toBe(NbdReply.ERR_INVALID);
      c.sendOption(NbdOption.GO, Buffer.from([0, 0, 0, 9, 1])); // name longer than the data
      expect((await c.readOptionReply()).type).toBe(NbdReply.ERR_INVALID);
      c.sendOption(NbdOption.INFO, encodeInfoRequest('no-such-export', []));
      expect((await c.readOptionReply()).type).toBe(NbdReply.ERR_UNKNOWN);
      // Option data past the limit is skipped as it streams in and refused.
      c.sendOption(0x4243, Buffer.alloc(200000, 1));
      expect((await c.readOptionReply()).type).toBe(NbdReply.ERR_TOO_BIG);
      c.sendOption(NbdOption.LIST);
      const list = await c.readOptionReplies();
      expect(list.map((r) => r.type)).toEqual([NbdReply.SERVER, NbdReply.ACK]);
      expect(list[0]!.data.toString('utf8', 4, 4 + list[0]!.data.readUInt32BE(0))).toBe('nbd-rw');
      const go = await c.go('nbd-rw', [NbdInfo.BLOCK_SIZE, NbdInfo.NAME]);
      expect(go.size).toBe(BigInt(DISK));
      expect(go.infos.get(NbdInfo.NAME)!.toString('utf8', 2)).toBe('nbd-rw');
      const bs = go.infos.get(NbdInfo.BLOCK_SIZE)!;
      expect([bs.readUInt32BE(2), bs.readUInt32BE(6), bs.readUInt32BE(10)]).toEqual([512, 4096, 32 * MiB]);
      const r = await c.call(NbdCommand.READ, 0, 4096);
      expect(r.error).toBe(0);
      expect(r.data!.length).toBe(4096);
    });

    it('NBD_OPT_ABORT is acknowledged and the connection closed; unknown client flags and bad magic close it', async () => {
      const a = await connect(socketOf(rw.uri));
      a.sendClientFlags(1);
      a.sendOption(NbdOption.ABORT);
      expect((await a.readOptionReply()).type).toBe(NbdReply.ACK);
      expect(await a.closedByServer()).toBe(true);

      const b = await connect(socketOf(rw.uri));
      b.sendClientFlags(0x80);
      expect(await b.closedByServer()).toBe(true);

      const d = await connect(socketOf(rw.uri));
      d.sendClientFlags(3);
      d.write(Buffer.alloc(16, 0x55)); // not IHAVEOPT
      expect(await d.closedByServer()).toBe(true);

      const e = await connect(socketOf(rw.uri));
      e.sendClientFlags(3);
      await e.go('nbd-rw');
      e.request(NbdCommand.READ, 0, 512, 0, undefined, 0x12345678);
      expect(await e.closedByServer()).toBe(true);
      // NBD_OPT_EXPORT_NAME for an unknown export can only end the session.
      const f = await connect(socketOf(rw.uri));
      f.sendClientFlags(3);
      f.sendOption(NbdOption.EXPORT_NAME, Buffer.from('nope'));
      expect(await f.closedByServer()).toBe(true);
      // The bridge itself is unharmed.
      expect(run('nbdinfo', [rw.uri]).status).toBe(0);
    });

    it('oversized requests, requests past the end, unknown commands and flags get NBD errors; the connection keeps working', async () => {
      const c = await connect(socketOf(rw.uri));
      c.sendClientFlags(3);
      await c.go('nbd-rw', [NbdInfo.BLOCK_SIZE]);
      expect((await c.call(NbdCommand.READ, 0, 64 * MiB)).error).toBe(NbdError.EINVAL);
      // An oversized write's payload is skipped as it arrives, never buffered whole.
      expect((await c.call(NbdCommand.WRITE, 0, 40 * MiB, 0, Buffer.alloc(40 * MiB, 0xee))).error).toBe(NbdError.EINVAL);
      expect((await c.call(NbdCommand.READ, DISK - 512, 1024)).error).toBe(NbdError.EINVAL);
      expect((await c.call(NbdCommand.WRITE, DISK, 512, 0, Buffer.alloc(512))).error).toBe(NbdError.ENOSPC);
      expect((await c.call(NbdCommand.WRITE_ZEROES, DISK - 512, 4096)).error).toBe(NbdError.ENOSPC);
      expect((await c.call(NbdCommand.TRIM, DISK, 512)).error).toBe(NbdError.EINVAL);
      expect((await c.call(NbdCommand.READ, 0xffffffffffffff00n, 512)).error).toBe(NbdError.EINVAL);
      expect((await c.call(NbdCommand.BLOCK_STATUS, 0, 512)).error).toBe(NbdError.EINVAL);
      expect((await c.call(99, 0, 512)).error).toBe(NbdError.EINVAL);
      expect((await c.call(NbdCommand.READ, 0, 512, NbdCommandFlag.DF)).error).toBe(NbdError.EINVAL);
      expect((await c.call(NbdCommand.WRITE_ZEROES, 0, 512, NbdCommandFlag.FAST_ZERO)).error).toBe(NbdError.EINVAL);
      // This client agreed to the block sizes, so unaligned requests are its mistake.
      expect((await c.call(NbdCommand.READ, 100, 512)).error).toBe(NbdError.EINVAL);
      // Nothing reached the disk outside it, and the connection still serves.
      const ok = await c.call(NbdCommand.WRITE, 4096, 4096, NbdCommandFlag.FUA, Buffer.alloc(4096, 0xab));
      expect(ok.error).toBe(0);
      expect((await c.call(NbdCommand.FLUSH, 0, 0)).error).toBe(0);
      expect((await c.call(NbdCommand.READ, 4096, 4096)).data!.equals(Buffer.alloc(4096, 0xab))).toBe(true);
      expect(readFileSync(rwDisk).length).toBe(DISK);
    });

    it('pipelined requests beyond the in-flight cap are all answered, each with its own cookie', async () => {
      const c = await connect(socketOf(rw.uri));
      c.sendClientFlags(3);
      await c.go('nbd-rw');
      const expected = new Map<bigint, Buffer>();
      for (let i = 0; i < 300; i++) {
        const data = Buffer.alloc(4096, i & 0xff);
        c.request(NbdCommand.WRITE, 12 * MiB + i * 4096, 4096, 0, data);
        expected.set(c.request(NbdCommand.READ, 12 * MiB + i * 4096, 4096), data);
      }
      let reads = 0;
      for (let i = 0; i < 600; i++) {
        const r = await c.readReply();
        expect(r.error).toBe(0);
        if (r.data) reads++;
      }
      expect(reads).toBe(300);
      for (const [, data] of expected) expect(data.length).toBe(4096);
      // A serial re-read sees every write.
      for (let i = 0; i < 300; i += 37) {
        const r = await c.call(NbdCommand.READ, 12 * MiB + i * 4096, 4096);
        expect(r.data!.equals(Buffer.alloc(4096, i & 0xff))).toBe(true);
      }
    });

    it('unaligned requests from a client without block size constraints are read-modify-written, concurrent ones without losing bytes', async () => {
      const c = await connect(socketOf(rw.uri));
      c.sendClientFlags(3);
      c.sendOption(NbdOption.EXPORT_NAME, Buffer.from('nbd-rw')); // old-style entry: no constraints agreed
      const reply = await c.read(10); // NO_ZEROES negotiated: size + flags only
      expect(reply.readBigUInt64BE(0)).toBe(BigInt(DISK));
      const base = 20 * MiB;
      const before = (await c.call(NbdCommand.READ, base, 8192)).data!;
      // 128 pipelined 7-byte writes covering [base+100, base+996), crossing a sector boundary.
      const expected = Buffer.from(before);
      for (let i = 0; i < 128; i++) {
        const piece = Buffer.alloc(7, i + 1);
        piece.copy(expected, 100 + i * 7);
        c.request(NbdCommand.WRITE, base + 100 + i * 7, 7, 0, piece);
      }
      // And an unaligned write-zeroes spanning whole sectors and two partial ones.
      c.request(NbdCommand.WRITE_ZEROES, base + 3000, 3000);
      expected.fill(0, 3000, 6000);
      for (let i = 0; i < 129; i++) expect((await c.readReply()).error).toBe(0);
      const r = await c.call(NbdCommand.READ, base + 1, 8190);
      expect(r.data!.equals(expected.subarray(1, 8191))).toBe(true);
      expect(readFileSync(rwDisk).subarray(base, base + 8192).equals(expected)).toBe(true);
    });

    it('a read-only export refuses WRITE, TRIM and WRITE_ZEROES with EPERM, reads work', async () => {
      for (const b of [ro, roFlag]) {
        const c = await connect(socketOf(b.uri));
        c.sendClientFlags(3);
        const go = await c.go(b === ro ? 'ro disk' : 'nbd-rw');
        expect(go.flags & TransmissionFlag.READ_ONLY).toBe(TransmissionFlag.READ_ONLY);
        expect((await c.call(NbdCommand.WRITE, 0, 512, 0, Buffer.alloc(512, 1))).error).toBe(NbdError.EPERM);
        expect((await c.call(NbdCommand.TRIM, 0, 512)).error).toBe(NbdError.EPERM);
        expect((await c.call(NbdCommand.WRITE_ZEROES, 0, 512)).error).toBe(NbdError.EPERM);
        const r = await c.call(NbdCommand.READ, 0, 512);
        expect(r.error).toBe(0);
        expect(r.data!.equals(readFileSync(b === ro ? roDisk : rwDisk).subarray(0, 512))).toBe(true);
      }
      expect(readFileSync(roDisk).equals(pattern(4 * MiB, 9))).toBe(true);
      // What qemu-img sees too.
      const w = run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', join(dir, 'random.img'), ro.uri]);
      expect(w.status).not.toBe(0);
    });

    it('NBD_CMD_DISC: requests in flight are answered, then the server closes', async () => {
      const c = await connect(socketOf(rw.uri));
      c.sendClientFlags(3);
      await c.go('nbd-rw');
      c.request(NbdCommand.READ, 0, 1 * MiB);
      c.request(NbdCommand.DISC, 0, 0);
      const r = await c.readReply();
      expect([r.error, r.data!.length]).toEqual([0, MiB]);
      expect(await c.closedByServer()).toBe(true);
    });
  });

  it('TCP: --listen prints nbd://HOST:PORT/EXPORT; SIGTERM exits 0 and removes the Unix socket', async () => {
    const b = await startBridge([`${target.urls[0]}/nbd-rw`, '--listen', '127.0.0.1:0']);
    expect(b.uri).toMatch(/^nbd:\/\/127\.0\.0\.1:\d+\/nbd-rw$/);
    expect(run('nbdinfo', [b.uri]).status).toBe(0);
    expect(await b.stop()).toBe(0);
    expect(b.stdout()).toBe(`${b.uri}\n`);

    const sock = join(dir, 'stop.sock');
    writeFileSync(join(dir, 'stale'), '');
    const u = await startBridge([`${target.urls[0]}/nbd-rw`, '--socket', sock]);
    const c = await RawNbdClient.connect(sock);
    c.sendClientFlags(3);
    await c.go('nbd-rw');
    c.request(NbdCommand.WRITE, 0, 4096, 0, Buffer.alloc(4096, 0x5a));
    expect((await c.readReply()).error).toBe(0);
    expect(await u.stop()).toBe(0);
    expect(await c.closedByServer()).toBe(true);
    expect(existsSync(sock)).toBe(false);
    expect(u.stderr()).toMatch(/SIGTERM: shutting down/);
  }, SLOW);

  it('exits with code 1 when the vof disk is lost (target killed, not back within --ctrl-loss-tmo), saying so', async () => {
    const own = await startTarget(['--listen', 'tcp://127.0.0.1:0', '--blk', `lost=${roDisk},ro`], { lines: 1 });
    const b = await startBridge([`${own.urls[0]}/lost`, '--socket', join(dir, 'lost.sock'), '--reconnect-delay', '0.2', '--ctrl-loss-tmo', '1']);
    const exited = new Promise<number | null>((resolve) => b.child.once('exit', (code) => resolve(code)));
    own.child.kill('SIGKILL');
    expect(await exited).toBe(1);
    expect(b.stderr()).toMatch(/vof disk tcp:\/\/.* lost: .*not reconnected within the loss timeout of 1000 ms/);
  }, SLOW);

  it('refuses a socket path that is not a socket, and both --socket and --listen', () => {
    const notSock = join(dir, 'stale');
    const r = spawnSync(process.execPath, ['dist/cli/main.js', 'nbd', `${target.urls[0]}/nbd-rw`, '--socket', notSock], { encoding: 'utf8', timeout: 20000 });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/exists and is not a socket/);
    expect(r.stdout).toBe('');
    const both = spawnSync(process.execPath, ['dist/cli/main.js', 'nbd', `${target.urls[0]}/nbd-rw`, '--socket', 'x', '--listen', 'localhost:0'], {
      encoding: 'utf8',
    });
    expect(both.status).toBe(2);
    // Without NBD TLS there is no authentication: a non-loopback address needs the user's
    // explicit word, and is refused before the vof disk is even opened.
    const open = spawnSync(process.execPath, ['dist/cli/main.js', 'nbd', `${target.urls[0]}/nbd-rw`, '--listen', '0.0.0.0:0'], { encoding: 'utf8', timeout: 20000 });
    expect(open.status).toBe(2);
    expect(open.stderr).toMatch(/--listen 0\.0\.0\.0:0: NBD clients are not authenticated .* pass --allow-unauthenticated/);
    const mode = spawnSync(process.execPath, ['dist/cli/main.js', 'nbd', `${target.urls[0]}/nbd-rw`, '--socket', join(dir, 'm.sock'), '--socket-mode', 'rw'], { encoding: 'utf8', timeout: 20000 });
    expect([mode.status, mode.stderr]).toEqual([2, expect.stringMatching(/--socket-mode expects an octal mode/)]);
  }, SLOW);
});
