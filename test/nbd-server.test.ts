import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { NbdServer, silentLogger, type NbdBlockDevice, type NbdServerOptions } from '../src/index.js';
import { NbdCommand, NbdError, NbdInfo, NbdOption, NbdReply, TransmissionFlag } from '../src/nbd/nbd-protocol.js';
import { needs } from './helpers/deps.js';
import { RawNbdClient } from './helpers/raw-nbd.js';
import { waitFor } from './helpers/wait-for.js';

/** One test asks libnbd's nbdinfo (libnbd-bin); the others speak NBD with a raw client. */
const nbdinfo = needs('test/nbd-server.test.ts: the nbdinfo test', ['libnbd-bin']);

/**
 * NbdServer as a library over a disk that is not a vof BlockDevice: an in-memory disk whose
 * calls the test can hold, fail and count.
 */
class MemoryDisk implements NbdBlockDevice {
  readonly data: Buffer;
  readOnly = false;
  canFlush = true;
  canDiscard = false;
  canWriteZeroes = true;
  /** Calls currently inside the disk, and the most seen at once. */
  active = 0;
  maxActive = 0;
  flushes = 0;
  /** READs that reached the disk. */
  reads = 0;
  failWrites = false;
  private gate: Promise<void> | null = null;
  private openGate: (() => void) | null = null;

  constructor(
    readonly capacity: number,
    readonly blockSize: number,
  ) {
    this.data = Buffer.alloc(capacity);
  }

  hold(): void {
    this.gate = new Promise((r) => (this.openGate = r));
  }

  release(): void {
    this.openGate?.();
    this.gate = null;
  }

  private async enter<T>(f: () => T): Promise<T> {
    this.active++;
    this.maxActive = Math.max(this.maxActive, this.active);
    try {
      if (this.gate) await this.gate;
      await new Promise((r) => setImmediate(r));
      return f();
    } finally {
      this.active--;
    }
  }

  private check(offset: number, length: number): void {
    if (offset % this.blockSize || length % this.blockSize || offset + length > this.capacity) throw new RangeError(`bad range ${offset}+${length}`);
  }

  read(offset: number, into: Buffer): Promise<Buffer> {
    this.check(offset, into.length);
    this.reads++;
    return this.enter(() => (this.data.copy(into, 0, offset, offset + into.length), into));
  }

  write(offset: number, data: Buffer): Promise<void> {
    this.check(offset, data.length);
    return this.enter(() => {
      if (this.failWrites) throw new Error('medium error');
      data.copy(this.data, offset);
    });
  }

  flush(): Promise<void> {
    return this.enter(() => void this.flushes++);
  }

  discard(): Promise<void> {
    throw new Error('not offered');
  }

  writeZeroes(offset: number, length: number): Promise<void> {
    this.check(offset, length);
    return this.enter(() => void this.data.fill(0, offset, offset + length));
  }
}

/** The same disk with the callback entry points (as BlockDevice has): counts which form was used. */
class CallbackDisk extends MemoryDisk {
  promiseCalls = 0;
  callbackCalls = 0;

  override read(offset: number, into: Buffer): Promise<Buffer> {
    this.promiseCalls++;
    return super.read(offset, into);
  }

  override write(offset: number, data: Buffer): Promise<void> {
    this.promiseCalls++;
    return super.write(offset, data);
  }

  submitRead(offset: number, into: Buffer, callback: (err: Error | null) => void): void {
    this.callbackCalls++;
    super.read(offset, into).then(() => callback(null), callback);
  }

  submitWrite(offset: number, data: Buffer, callback: (err: Error | null) => void): void {
    this.callbackCalls++;
    super.write(offset, data).then(() => callback(null), callback);
  }
}

const MiB = 1024 * 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('NbdServer over any NbdBlockDevice', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vof-nbd-lib-'));
  let server: NbdServer | null = null;
  const clients: RawNbdClient[] = [];

  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  afterEach(async () => {
    clients.splice(0).forEach((c) => c.close());
    await server?.close();
    server = null;
  });

  async function serve(disk: MemoryDisk, options: Partial<NbdServerOptions> = {}): Promise<{ uri: string; sock: string }> {
    const sock = join(dir, `s${Math.random().toString(36).slice(2)}.sock`);
    server = new NbdServer(disk, { name: 'mem', log: silentLogger, ...options });
    return { uri: await server.listen({ socket: sock }), sock };
  }

  async function client(sock: string, infos: number[] = [NbdInfo.BLOCK_SIZE]) {
    const c = await RawNbdClient.connect(sock);
    clients.push(c);
    c.sendClientFlags(3);
    return { c, go: await c.go('mem', infos) };
  }

  it('flags and block sizes follow the disk: 4 KiB blocks, no discard', async () => {
    const { sock } = await serve(new MemoryDisk(1 << 20, 4096));
    const { go } = await client(sock);
    expect(go.size).toBe(1n << 20n);
    const F = TransmissionFlag;
    expect(go.flags).toBe(F.HAS_FLAGS | F.SEND_FLUSH | F.SEND_FUA | F.SEND_WRITE_ZEROES | F.CAN_MULTI_CONN);
    const bs = go.infos.get(NbdInfo.BLOCK_SIZE)!;
    expect([bs.readUInt32BE(2), bs.readUInt32BE(6), bs.readUInt32BE(10)]).toEqual([4096, 4096, 32 << 20]);
  });

  it.skipIf(!nbdinfo.ok)(`nbdinfo (libnbd) sees the same flags and block sizes${nbdinfo.skipNote}`, async () => {
    const { uri } = await serve(new MemoryDisk(1 << 20, 4096));
    // Asynchronously: the server runs in this process.
    const info = await promisify(execFile)('nbdinfo', ['--json', uri], { encoding: 'utf8', timeout: 60000 });
    const e = JSON.parse(info.stdout).exports[0];
    expect([e.can_trim, e.can_flush, e.block_size_minimum]).toEqual([false, true, 4096]);
  });

  it('read-modify-write happens at the disk block size; TRIM not offered is EINVAL', async () => {
    const disk = new MemoryDisk(1 << 20, 4096);
    disk.data.fill(0x11);
    const { sock } = await serve(disk);
    const { c } = await client(sock, []); // no block sizes agreed: unaligned is served
    expect((await c.call(NbdCommand.WRITE, 4000, 200, 0, Buffer.alloc(200, 0x22))).error).toBe(0);
    const expected = Buffer.alloc(1 << 20, 0x11).fill(0x22, 4000, 4200);
    expect(disk.data.equals(expected)).toBe(true);
    expect((await c.call(NbdCommand.READ, 3999, 202)).data!.equals(expected.subarray(3999, 4201))).toBe(true);
    expect((await c.call(NbdCommand.TRIM, 0, 4096)).error).toBe(NbdError.EINVAL);
  });

  it('aligned READ and WRITE use the callback entry points; an unaligned write over a block such a write holds waits for it', async () => {
    const disk = new CallbackDisk(1 << 20, 4096);
    disk.data.fill(0x11);
    const { sock } = await serve(disk);
    const { c } = await client(sock, []); // no block sizes agreed: unaligned is served
    // Pipelined aligned requests, each reply with its own cookie and bytes.
    const writes = [0, 1, 2, 3].map((i) => c.request(NbdCommand.WRITE, 8192 + i * 4096, 4096, 0, Buffer.alloc(4096, 0x20 + i)));
    for (const cookie of writes) expect(await c.readReply()).toMatchObject({ error: 0, cookie });
    const reads = [3, 2, 1, 0].map((i) => ({ i, cookie: c.request(NbdCommand.READ, 8192 + i * 4096, 4096) }));
    for (const { i, cookie } of reads) {
      const r = await c.readReply();
      expect(r.cookie).toBe(cookie);
      expect(r.data!.equals(Buffer.alloc(4096, 0x20 + i))).toBe(true);
    }
    expect([disk.callbackCalls, disk.promiseCalls]).toEqual([8, 0]);

    // An aligned write of block 0 held in the disk; an unaligned write into block 0 (read-
    // modify-write) must not read the block before that write lands, or it writes 0x11 back.
    disk.hold();
    const aligned = c.request(NbdCommand.WRITE, 0, 4096, 0, Buffer.alloc(4096, 0x33));
    const unaligned = c.request(NbdCommand.WRITE, 100, 100, 0, Buffer.alloc(100, 0x44));
    await sleep(100);
    expect(disk.active).toBe(1); // the read-modify-write waits for the range
    disk.release();
    const got = [await c.readReply(), await c.readReply()];
    expect(got.map((r) => r.error)).toEqual([0, 0]);
    expect(got.map((r) => r.cookie).sort()).toEqual([aligned, unaligned].sort());
    expect(disk.data.subarray(0, 4096).equals(Buffer.alloc(4096, 0x33).fill(0x44, 100, 200))).toBe(true);

    // A failed callback write is EIO; the connection and the request's reuse go on.
    disk.failWrites = true;
    expect((await c.call(NbdCommand.WRITE, 4096, 4096, 0, Buffer.alloc(4096, 0x55))).error).toBe(NbdError.EIO);
    disk.failWrites = false;
    expect((await c.call(NbdCommand.READ, 8192, 4096)).data!.equals(Buffer.alloc(4096, 0x20))).toBe(true);
  });

  it('WRITE payloads cut into random pieces land whole, read straight into the request (no data event, no Buffer per read)', async () => {
    const disk = new CallbackDisk(4 << 20, 4096);
    const { sock } = await serve(disk);
    const { c } = await client(sock, []);
    const conn = [...(server as unknown as { connections: Set<{ socket: { listenerCount(e: string): number } }> }).connections][0]!;
    expect(conn.socket.listenerCount('data')).toBe(0);
    const sizes = [4096, 128 * 1024, 8192, 1 << 20, 4096, 256 * 1024];
    let offset = 0;
    const expected: Array<{ offset: number; data: Buffer }> = [];
    // The raw client writes whole requests; cut the bytes it sends into random pieces instead.
    const sent: Buffer[] = [];
    const raw = c as unknown as { write(b: Buffer): void };
    const original = raw.write.bind(c);
    raw.write = (b: Buffer) => void sent.push(Buffer.from(b));
    const cookies = sizes.map((n, i) => {
      const data = Buffer.from(Array.from({ length: n }, (_, k) => (k * 13 + i * 7) & 0xff));
      expected.push({ offset, data });
      const cookie = c.request(NbdCommand.WRITE, offset, n, 0, data);
      offset += n;
      return cookie;
    });
    raw.write = original;
    const all = Buffer.concat(sent);
    let seed = 5;
    for (let at = 0; at < all.length; ) {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      const n = Math.min(all.length - at, 1 + (seed % 200_000));
      original(all.subarray(at, at + n));
      at += n;
    }
    for (const cookie of cookies) expect(await c.readReply()).toMatchObject({ error: 0, cookie });
    for (const e of expected) expect(disk.data.subarray(e.offset, e.offset + e.data.length).equals(e.data)).toBe(true);
  });

  it('a failing disk gives EIO, FUA flushes, and the connection keeps working', async () => {
    const disk = new MemoryDisk(1 << 20, 512);
    const { sock } = await serve(disk);
    const { c } = await client(sock);
    disk.failWrites = true;
    expect((await c.call(NbdCommand.WRITE, 0, 512, 0, Buffer.alloc(512, 1))).error).toBe(NbdError.EIO);
    disk.failWrites = false;
    expect((await c.call(NbdCommand.WRITE, 0, 512, 1 /* FUA */, Buffer.alloc(512, 1))).error).toBe(0);
    expect(disk.flushes).toBe(1);
    expect((await c.call(NbdCommand.WRITE_ZEROES, 0, 512, 2 /* NO_HOLE */)).error).toBe(0);
    // Zero-length requests: unspecified by the protocol, answered without error or disconnect.
    expect((await c.call(NbdCommand.WRITE, 512, 0)).error).toBe(0);
    expect((await c.call(NbdCommand.READ, 512, 0)).error).toBe(0);
    expect(disk.data.subarray(0, 512).every((b) => b === 0)).toBe(true);
  });

  it('in-flight requests and payload bytes per connection are capped', async () => {
    const disk = new MemoryDisk(1 << 20, 512);
    const { sock } = await serve(disk, { maxRequestsPerConnection: 4, maxBlockBytes: 64 * 1024, maxBytesPerConnection: 128 * 1024 });
    const { c } = await client(sock);
    disk.hold();
    for (let i = 0; i < 20; i++) c.request(NbdCommand.READ, i * 512, 512);
    await new Promise((r) => setTimeout(r, 300));
    expect(disk.active).toBe(4);
    disk.release();
    for (let i = 0; i < 20; i++) expect((await c.readReply()).error).toBe(0);
    expect(disk.maxActive).toBe(4);

    // Bytes: 64 KiB reads, at most two (128 KiB) admitted at once.
    disk.maxActive = 0;
    disk.hold();
    for (let i = 0; i < 6; i++) c.request(NbdCommand.READ, i * 65536, 65536);
    await new Promise((r) => setTimeout(r, 300));
    expect(disk.active).toBe(2);
    disk.release();
    for (let i = 0; i < 6; i++) expect((await c.readReply()).data!.length).toBe(65536);
    expect(disk.maxActive).toBe(2);
  });

  it('close(): requests in flight finish, new ones get ESHUTDOWN, the disk is flushed, clients are disconnected', async () => {
    const disk = new MemoryDisk(1 << 20, 512);
    const { sock } = await serve(disk);
    const { c } = await client(sock);
    disk.hold();
    c.request(NbdCommand.WRITE, 0, 512, 0, Buffer.alloc(512, 7));
    await new Promise((r) => setTimeout(r, 100));
    const closing = server!.close();
    c.request(NbdCommand.READ, 0, 512);
    const refused = await c.readReply();
    expect(refused.error).toBe(NbdError.ESHUTDOWN);
    disk.release();
    expect((await c.readReply()).error).toBe(0);
    await closing;
    expect(disk.flushes).toBe(1);
    expect(disk.data[0]).toBe(7);
    expect(await c.closedByServer()).toBe(true);
    server = null;
  });

  it('several connections at once share the disk (CAN_MULTI_CONN): a write on one is read on another', async () => {
    const disk = new MemoryDisk(1 << 20, 512);
    const { sock } = await serve(disk);
    const a = (await client(sock)).c;
    const b = (await client(sock)).c;
    expect((await a.call(NbdCommand.WRITE, 8192, 512, 0, Buffer.alloc(512, 0x3c))).error).toBe(0);
    expect((await a.call(NbdCommand.FLUSH, 0, 0)).error).toBe(0);
    expect((await b.call(NbdCommand.READ, 8192, 512)).data!.equals(Buffer.alloc(512, 0x3c))).toBe(true);
    expect(server!.connectionCount).toBe(2);
  });

  // The security issue's finding 7: the bridge is closed by default and bounded.
  it('the Unix socket is created 0600 (or the mode asked for), and the process umask is left as it was', async () => {
    const before = process.umask();
    expect(statSync((await serve(new MemoryDisk(1 << 20, 512))).sock).mode & 0o777).toBe(0o600);
    await server!.close();
    expect(statSync((await serve(new MemoryDisk(1 << 20, 512), { socketMode: 0o660 })).sock).mode & 0o777).toBe(0o660);
    expect(process.umask()).toBe(before);
  });

  it('a client that never finishes the handshake is disconnected; one beyond the connection limit is refused', async () => {
    const { sock } = await serve(new MemoryDisk(1 << 20, 512), { handshakeTimeoutMs: 300, maxConnections: 2 });
    const silent = await RawNbdClient.connect(sock);
    clients.push(silent);
    const other = await RawNbdClient.connect(sock);
    clients.push(other);
    // Both slots taken: a third is closed at once (before: it got a greeting and was kept).
    const third = await RawNbdClient.connect(sock).then(
      (c) => (clients.push(c), 'greeted'),
      () => 'refused',
    );
    expect(third).toBe('refused');
    await new Promise((r) => setTimeout(r, 800));
    expect([silent.closed, other.closed]).toEqual([true, true]);
    // Slots free again: a proper client gets in and through.
    const { go } = await client(sock, []);
    expect(go.size).toBe(1n << 20n);
  });

  // The security issue's finding 7: "clients that never read their replies grew RSS by +253 MiB
  // with 4 of them, linearly". One budget now bounds what all connections together hold.
  it('clients that never read their replies hold at most the bridge-wide memory budget; a client that reads still gets its I/O done', async () => {
    const budget = 8 * MiB;
    const disk = new MemoryDisk(1 << 20, 512);
    disk.data.fill(0x6b);
    const { sock } = await serve(disk, { memoryBudgetBytes: budget, sendTimeoutMs: 2000 });
    const before = process.memoryUsage().arrayBuffers;
    const stalled: RawNbdClient[] = [];
    for (let i = 0; i < 4; i++) {
      const { c } = await client(sock);
      c.socket.pause(); // reads nothing more: replies pile up in the bridge
      for (let k = 0; k < 32; k++) c.request(NbdCommand.READ, 0, MiB);
      stalled.push(c);
    }
    // Let the bridge take all it will: until the disk has seen no new READ for a while (bounded).
    let reads = -1;
    for (let i = 0; i < 40 && disk.reads !== reads; i++) {
      reads = disk.reads;
      await sleep(250);
    }
    // Before: 4 x 32 MiB of read data held for clients that do not read (per-connection limits only).
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(budget + 16 * MiB);
    expect(disk.reads).toBeLessThanOrEqual(budget / MiB + 4);
    expect(server!.memory.used).toBeLessThanOrEqual(budget);

    // A client that reads: its requests wait for room, which the stalled clients give back when
    // they are disconnected after the send timeout without progress.
    const { c: good } = await client(sock);
    expect((await good.call(NbdCommand.WRITE, 4096, 4096, 0, Buffer.alloc(4096, 0x21))).error).toBe(0);
    const r = await good.call(NbdCommand.READ, 0, 8192);
    expect(r.data!.equals(Buffer.concat([Buffer.alloc(4096, 0x6b), Buffer.alloc(4096, 0x21)]))).toBe(true);
    // The good client's I/O needed only the first stalled client's drop. The others are dropped
    // in turn, each once its own replies have sat unread for the send timeout; resumed before
    // that, a client would read them and rightly stay. So: wait (bounded) until the bridge has
    // dropped all four while they still read nothing, then see each one's end.
    await waitFor('the bridge to drop the four stalled clients', () => server!.connectionCount === 1, 15000, 100);
    for (const c of stalled) {
      c.socket.resume(); // to see the end the bridge gave them
      expect(await c.closedByServer()).toBe(true);
    }
    await waitFor('the budget to be all given back', () => server!.memory.used === 0, 4000, 100);
    expect(server!.memory.used).toBe(0);
  }, 60_000);

  it('the budget is served in turn: a connection that keeps it full does not starve another', async () => {
    const disk = new MemoryDisk(1 << 20, 512);
    const piece = 256 * 1024; // replies well under the output high-water mark: the heavy client never pauses on its own
    const { sock } = await serve(disk, { memoryBudgetBytes: 4 * piece });
    const { c: heavy } = await client(sock);
    const { c: light } = await client(sock);
    disk.hold();
    const n = 48;
    for (let k = 0; k < n; k++) heavy.request(NbdCommand.READ, 0, piece);
    let heavyDone = 0;
    const heavyReading = (async () => {
      for (let k = 0; k < n; k++) {
        expect((await heavy.readReply()).error).toBe(0);
        heavyDone++;
      }
    })();
    await waitFor('four READs at the disk', () => disk.active >= 4, 2000, 50);
    expect(disk.active).toBe(4); // the budget is full
    light.request(NbdCommand.READ, 0, piece);
    await sleep(100);
    disk.release();
    // Served as soon as its turn comes, not after the heavy connection's whole pipeline.
    expect((await light.readReply()).error).toBe(0);
    expect(heavyDone).toBeLessThan(n / 2);
    await heavyReading;
  });


  // Issue 18: at 128 KiB QD8 the bridge stopped reading requests whenever 8 replies waited at
  // once (over a fixed 1 MiB of output), until every one of them had left: the pipeline stalled.
  it('replies waiting to be read do not stop a pipelining client while its limits allow more', async () => {
    const disk = new MemoryDisk(4 * MiB, 512);
    for (let i = 0; i < disk.data.length; i += 4) disk.data.writeUInt32LE(i, i);
    const { sock } = await serve(disk);
    const { c } = await client(sock);
    const size = 128 * 1024;
    const offsets = new Map<bigint, number>();
    c.socket.pause(); // reads nothing for now: 2 MiB of replies wait in the bridge
    for (let k = 0; k < 16; k++) offsets.set(c.request(NbdCommand.READ, k * size, size), k * size);
    await waitFor('16 READs at the disk', () => disk.reads >= 16, 2000, 50);
    expect(disk.reads).toBe(16);
    await sleep(100); // the replies have been handed over as far as the socket takes them
    offsets.set(c.request(NbdCommand.READ, 16 * size, size), 16 * size);
    await waitFor('the 17th READ at the disk', () => disk.reads >= 17, 2000, 50);
    expect(disk.reads).toBe(17); // before: 16, the 17th unread until the client had read everything
    c.socket.resume();
    for (let k = 0; k < 17; k++) {
      const r = await c.readReply();
      expect(offsets.has(r.cookie)).toBe(true);
      expect(r.error).toBe(0);
      expect(r.data!.readUInt32LE(0)).toBe(offsets.get(r.cookie)); // the block's own bytes
      expect(r.data!.readUInt32LE(size - 4)).toBe(offsets.get(r.cookie)! + size - 4);
    }
  });

  it('a WRITE whose payload never arrives in full gives its bytes back when the client goes', async () => {
    const { sock } = await serve(new MemoryDisk(8 << 20, 512), { memoryBudgetBytes: 16 * MiB });
    for (let i = 0; i < 3; i++) {
      const { c } = await client(sock);
      c.request(NbdCommand.WRITE, 0, 4 * MiB, 0, Buffer.alloc(MiB, 1)); // a quarter of the payload
      await waitFor('the WRITE to take its bytes', () => server!.memory.used !== 0, 1000, 25);
      expect(server!.memory.used).toBe(4 * MiB);
      c.close();
      await waitFor('the bytes to come back', () => server!.memory.used === 0, 1000, 25);
      expect(server!.memory.used).toBe(0);
    }
  });

  it('NBD TLS: the TLS handshake counts against the handshake timeout; STARTTLS without TLS settings is NBD_REP_ERR_UNSUP', async () => {
    const fixture = (f: string) => readFileSync(join(import.meta.dirname, 'fixtures', 'tls', f));
    const { sock } = await serve(new MemoryDisk(1 << 20, 512), { handshakeTimeoutMs: 300, tls: { cert: fixture('target.crt'), key: fixture('target.key') } });
    const c = await RawNbdClient.connect(sock);
    clients.push(c);
    c.sendClientFlags(3);
    c.sendOption(NbdOption.STARTTLS);
    expect((await c.readOptionReply()).type).toBe(NbdReply.ACK);
    // ...and then no ClientHello.
    expect(await c.closedByServer(5000)).toBe(true);
    await server!.close();
    const plain = await serve(new MemoryDisk(1 << 20, 512));
    const p = await RawNbdClient.connect(plain.sock);
    clients.push(p);
    p.sendClientFlags(3);
    p.sendOption(NbdOption.STARTTLS);
    expect((await p.readOptionReply()).type).toBe(NbdReply.ERR_UNSUP);
    expect((await p.go('mem')).size).toBe(1n << 20n);
  });
});

