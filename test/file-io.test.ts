import { spawnSync } from 'node:child_process';
import { fstat, mkdirSync, promises as fsp, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, describe, expect, it, onTestFinished } from 'vitest';
import { BlkRequestType, BlkStatus, FileBlockExport, chooseFileIo, encodeRequestHeader, type FileIoBackend } from '../src/index.js';
import { openFileIo, type FileIo } from '../src/target/blk/file-io.js';
import { sharedUringRing } from '../src/target/blk/uring-ring.js';
import { loadNativeAddon } from '../src/util/native-addon.js';
import { needs } from './helpers/deps.js';
import { TargetFixture } from './helpers/target-fixture.js';
import { vofAsync } from './helpers/vof-cli.js';
import { startTarget } from '../scripts/start-target.mjs';
import { pattern } from './helpers/pattern.js';

/**
 * The two file I/O backends of block exports (src/target/blk/file-io.ts): io_uring in the
 * native addon and libuv's thread pool. Every test runs with both. The io_uring ones need the
 * addon (built by `npm install` wherever a C++ toolchain is; io_uring needs nothing else): without
 * it they are skipped with a banner (or fail with VOF_REQUIRE_ALL=1); where the kernel refuses
 * io_uring they say so loudly.
 */
const root = fileURLToPath(new URL('..', import.meta.url));

/** Where io_uring must be chosen: the addon loads (it always holds io_uring). */
function uringExpected(): string | null {
  try {
    loadNativeAddon();
  } catch (err) {
    return `the native addon does not load (${(err as Error).message.split('\n')[0]})`;
  }
  return null;
}
const addon = needs('test/file-io.test.ts: the io_uring backend (native addon)', ['addon'], uringExpected);
const uring = addon.ok ? sharedUringRing() : null;
const uringMissing = addon.ok ? (uring instanceof Error ? uring.message : null) : addon.reason;
if (addon.ok && uringMissing) process.stderr.write(`\n!!! test/file-io.test.ts: io_uring tests CANNOT RUN HERE: ${uringMissing} !!!\n\n`);

const fx = new TargetFixture(); // for its temp dir
afterAll(() => fx.close());
let fileNo = 0;
function scratch(bytes: Buffer): string {
  const path = join(fx.dir, `f${fileNo++}.img`);
  writeFileSync(path, bytes);
  return path;
}
describe('file I/O backend choice', () => {
  it.skipIf(!addon.ok)(`auto picks io_uring where the addon has it, and an export uses it${addon.skipNote}`, async () => {
    expect(uringMissing).toBeNull();
    expect(chooseFileIo('auto').backend).toBe('uring');
    expect(chooseFileIo('auto').description).toMatch(/^file I\/O: io_uring \(\d+ slots/);
    const exp = await FileBlockExport.open(scratch(Buffer.alloc(4096)), { fileIo: 'auto' });
    expect(exp.fileIoBackend).toBe('uring');
    await exp.close();
  });

  it('libuv is used when asked for, and VOF_FILE_IO sets the default', async () => {
    expect(chooseFileIo('libuv')).toEqual({ backend: 'libuv', description: 'file I/O: libuv thread pool (asked for)' });
    const saved = process.env.VOF_FILE_IO;
    try {
      process.env.VOF_FILE_IO = 'libuv';
      const exp = await FileBlockExport.open(scratch(Buffer.alloc(4096)));
      expect(exp.fileIoBackend).toBe('libuv');
      await exp.close();
      process.env.VOF_FILE_IO = 'bogus';
      await expect(FileBlockExport.open(scratch(Buffer.alloc(4096)))).rejects.toThrow(/VOF_FILE_IO: "bogus" is not one of auto, uring, libuv/);
    } finally {
      if (saved === undefined) delete process.env.VOF_FILE_IO;
      else process.env.VOF_FILE_IO = saved;
    }
  });

  it('vof target --file-io: logs the backend in use; a bad value is a usage error', async () => {
    const bad = await vofAsync(['target', '--listen', 'tcp://127.0.0.1:0', '--blk', `d=${scratch(Buffer.alloc(4096))}`, '--file-io', 'aio']);
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/--file-io: "aio" is not one of auto, uring, libuv/);
    // The target logs its choice before it listens.
    const run = async (mode: string) => {
      const t = await startTarget(['--listen', 'tcp://127.0.0.1:0', '--blk', `d=${scratch(Buffer.alloc(4096))}`, '--file-io', mode], { timeoutMs: 60000 });
      expect(await t.stop()).toBe(0);
      return t.stderr();
    };
    expect(await run('libuv')).toMatch(/info  file I\/O: libuv thread pool \(asked for\)/);
    expect(await run('auto')).toMatch(sharedUringRing() instanceof Error ? /file I\/O: libuv thread pool \(io_uring unavailable: / : /file I\/O: io_uring \(\d+ slots/);
  });
});

const backends: Array<{ backend: FileIoBackend; missing: string | null }> = [
  { backend: 'uring', missing: uringMissing },
  { backend: 'libuv', missing: null },
];

for (const { backend, missing } of backends) {
  describe.skipIf(missing !== null)(`file I/O through ${backend}${missing !== null ? ` [SKIPPED: ${missing}]` : ''}`, () => {
    async function open(content: Buffer): Promise<{ path: string; handle: fsp.FileHandle; io: FileIo }> {
      const path = scratch(content);
      const handle = await fsp.open(path, 'r+');
      return { path, handle, io: openFileIo(handle, backend) };
    }
    async function done(f: { handle: fsp.FileHandle; io: FileIo }): Promise<void> {
      await f.io.close();
      await f.handle.close();
    }

    it('reads and writes whole buffers at byte positions; datasync succeeds', async () => {
      const f = await open(pattern(1 << 20, 1));
      expect(f.io.backend).toBe(backend);
      const got = Buffer.alloc(300_000);
      await f.io.read(got, 12_345);
      expect(got.equals(pattern(1 << 20, 1).subarray(12_345, 312_345))).toBe(true);
      const data = pattern(70_000, 2);
      await f.io.write(data, 500_001);
      await f.io.datasync();
      expect(readFileSync(f.path).subarray(500_001, 570_001).equals(data)).toBe(true);
      await done(f);
    });

    it('a read past the end of the file fills what exists, then fails with EIO', async () => {
      const f = await open(pattern(10_000, 3));
      const got = Buffer.alloc(4096, 0xee);
      const err = await f.io.read(got, 8192).then(() => null, (e: NodeJS.ErrnoException) => e);
      expect(err?.code).toBe('EIO');
      expect(err?.message).toMatch(/read at byte 10000: end of file/);
      // The short first transfer landed; the rest of the buffer was not touched.
      expect(got.subarray(0, 1808).equals(pattern(10_000, 3).subarray(8192))).toBe(true);
      expect(got.subarray(1808).every((b) => b === 0xee)).toBe(true);
      await done(f);
    });

    it('a bad file descriptor fails with EBADF; I/O after close() is refused', async () => {
      const path = scratch(Buffer.alloc(8192));
      const handle = await fsp.open(path, 'r');
      const io = openFileIo(handle, backend);
      await handle.close();
      const err = await io.read(Buffer.alloc(512), 0).then(() => null, (e: NodeJS.ErrnoException) => e);
      expect(err?.code).toBe('EBADF');
      await io.close();
      const after = await io.write(Buffer.alloc(512), 0).then(() => null, (e: NodeJS.ErrnoException) => e);
      expect(after?.code).toBe('EBADF');
    });

    it('writing to a read-only descriptor fails with EBADF', async () => {
      const path = scratch(Buffer.alloc(8192));
      const handle = await fsp.open(path, 'r');
      const io = openFileIo(handle, backend);
      const err = await io.write(Buffer.alloc(512, 1), 0).then(() => null, (e: NodeJS.ErrnoException) => e);
      expect(err?.code).toBe('EBADF');
      await io.close();
      await handle.close();
      expect(readFileSync(path).every((b) => b === 0)).toBe(true);
    });

    it('128 concurrent 4k writes then 128 concurrent reads (QD 128) land and read back', async () => {
      const f = await open(Buffer.alloc(128 * 4096 * 2));
      const blocks = Array.from({ length: 128 }, (_, i) => pattern(4096, i + 10));
      // Every other 4k block, in a shuffled order.
      const order = blocks.map((_, i) => i).sort((a, b) => ((a * 37) % 128) - ((b * 37) % 128));
      await Promise.all(order.map((i) => f.io.write(blocks[i]!, i * 8192)));
      const reads = blocks.map(() => Buffer.alloc(4096));
      await Promise.all(order.map((i) => f.io.read(reads[i]!, i * 8192)));
      for (let i = 0; i < 128; i++) expect(reads[i]!.equals(blocks[i]!), `block ${i}`).toBe(true);
      const onDisk = readFileSync(f.path);
      for (let i = 0; i < 128; i++) expect(onDisk.subarray(i * 8192 + 4096, i * 8192 + 8192).every((b) => b === 0)).toBe(true);
      await done(f);
    });

    it('more I/O at once than the ring has slots: the rest waits for slots, nothing is lost', async () => {
      const n = 2000;
      const f = await open(pattern(n * 512, 4));
      const reads = Array.from({ length: n }, () => Buffer.alloc(512));
      await Promise.all(reads.map((b, i) => f.io.read(b, (n - 1 - i) * 512)));
      const want = pattern(n * 512, 4);
      for (let i = 0; i < n; i++) expect(reads[i]!.equals(want.subarray((n - 1 - i) * 512, (n - i) * 512))).toBe(true);
      await done(f);
    });

    it('close() with I/O in flight waits for it; the data is all there', async () => {
      const f = await open(Buffer.alloc(64 * 65536));
      const data = Array.from({ length: 64 }, (_, i) => pattern(65536, i + 50));
      const settled: boolean[] = [];
      const writes = data.map((d, i) => f.io.write(d, i * 65536).then(() => (settled[i] = true)));
      await f.io.close();
      expect(settled.filter(Boolean)).toHaveLength(64);
      await Promise.all(writes);
      await f.handle.close();
      const onDisk = readFileSync(f.path);
      for (let i = 0; i < 64; i++) expect(onDisk.subarray(i * 65536, (i + 1) * 65536).equals(data[i]!)).toBe(true);
    });

    it('FileBlockExport: reads served while the export closes complete; a file cut short gives IOERR', async () => {
      const path = scratch(pattern(1 << 20, 5));
      const exp = await FileBlockExport.open(path, { fileIo: backend });
      expect(exp.fileIoBackend).toBe(backend);
      const inst = exp.createInstance();
      // The device fills a transport-supplied writable buffer and says how much it wrote.
      const run = async (header: Buffer, inLength: number) => {
        const writable = Buffer.alloc(inLength, 0xee);
        const n = await inst.handleRequest(0, header, writable);
        return writable.subarray(0, n);
      };
      const statusOf = (w: Buffer) => w[w.length - 1];
      // The file shrinks under the export (capacity still says 1 MiB): reading the lost part is IOERR.
      await fsp.truncate(path, 1 << 19);
      expect(statusOf(await run(encodeRequestHeader(BlkRequestType.IN, 1536n), 4097))).toBe(BlkStatus.IOERR);
      expect(statusOf(await run(encodeRequestHeader(BlkRequestType.IN, 0n), 4097))).toBe(BlkStatus.OK);
      const inFlight = Array.from({ length: 32 }, (_, i) => run(encodeRequestHeader(BlkRequestType.IN, BigInt(i * 8)), 4097));
      inst.destroy();
      await exp.close();
      const results = await Promise.all(inFlight);
      for (let i = 0; i < 32; i++) {
        expect(statusOf(results[i]!)).toBe(BlkStatus.OK);
        expect(results[i]!.subarray(0, 4096).equals(pattern(1 << 20, 5).subarray(i * 4096, (i + 1) * 4096))).toBe(true);
      }
    });
  });
}

describe.skipIf(uringMissing !== null)(`the native io_uring (FileRing)${uringMissing !== null ? ` [SKIPPED: ${uringMissing}]` : ''}`, () => {
  type Ring = {
    completions: Int32Array;
    slots: number;
    inFlight: number;
    wakes: number;
    read(fd: number, b: Uint8Array, off: number, len: number, pos: number, slot: number): void;
    close(): boolean;
  };
  const FileRing = (loadNativeAddon() as { FileRing: new (entries: number, cb: (n: number) => void) => Ring }).FileRing;

  it('close() with reads in flight: they still complete, then the ring is released', async () => {
    const path = scratch(pattern(1 << 20, 6));
    const handle = await fsp.open(path, 'r');
    const seen: Array<[number, number]> = [];
    let drained!: () => void;
    const allDone = new Promise<void>((r) => (drained = r));
    const ring: Ring = new FileRing(8, (n) => {
      for (let i = 0; i < n; i++) seen.push([ring.completions[2 * i]!, ring.completions[2 * i + 1]!]);
      if (seen.length === 16) drained();
    });
    expect(ring.slots).toBe(16);
    const bufs = Array.from({ length: 16 }, () => Buffer.alloc(65536));
    for (let s = 0; s < 16; s++) ring.read(handle.fd, bufs[s]!, 0, 65536, s * 65536, s);
    expect(ring.inFlight).toBe(16);
    expect(() => ring.read(handle.fd, bufs[0]!, 0, 512, 0, 0)).toThrow(/slot already in flight/);
    expect(ring.close()).toBe(false);
    expect(() => ring.read(handle.fd, Buffer.alloc(512), 0, 512, 0, 0)).toThrow(/FileRing is closed/);
    await allDone;
    expect(seen.map(([s]) => s).sort((a, b) => a - b)).toEqual([...Array(16).keys()]);
    expect(seen.every(([, res]) => res === 65536)).toBe(true);
    for (let s = 0; s < 16; s++) expect(bufs[s]!.equals(pattern(1 << 20, 6).subarray(s * 65536, (s + 1) * 65536))).toBe(true);
    expect(ring.inFlight).toBe(0);
    expect(ring.close()).toBe(true);
    await handle.close();
  });

  it('a cached read that completes while it is submitted is handed over then, without an eventfd wake after it', async () => {
    // Just written: in the page cache. Beside the checkout rather than in tmpdir: io_uring
    // completes a cached read inline only on a file system that supports non-blocking reads
    // (ext4, xfs, btrfs), and tmpdir may be overlayfs (containers, CI's fresh root), where every
    // read goes to io-wq and wakes the eventfd whatever vof does.
    const dir = join(root, '.vof-cache');
    mkdirSync(dir, { recursive: true });
    const path = join(dir, `inline-read-${process.pid}.img`);
    writeFileSync(path, pattern(1 << 16, 8));
    onTestFinished(() => rmSync(path, { force: true }));
    const handle = await fsp.open(path, 'r');
    const buf = Buffer.alloc(4096);
    let done = 0;
    let finished!: () => void;
    const all = new Promise<void>((r) => (finished = r));
    // Issued from an I/O callback of the loop's poll phase (here fs.fstat's), as a target issues
    // reads from socket callbacks: the check phase that follows submits them and reaps what
    // io_uring completed inline.
    const issue = () => fstat(handle.fd, () => ring.read(handle.fd, buf, 0, 4096, (done % 16) * 4096, 0));
    const ring: Ring = new FileRing(4, (n) => {
      expect([n, ring.completions[1]]).toEqual([1, 4096]);
      if (++done === 50) finished();
      else issue();
    });
    issue();
    await all;
    await new Promise((r) => setTimeout(r, 20));
    // Before: one wake per read (the kernel signalled the eventfd for a completion already taken).
    expect(ring.wakes).toBeLessThanOrEqual(5);
    expect(ring.close()).toBe(true);
    await handle.close();
  });

  it('refuses bad arguments instead of handing them to the kernel', () => {
    const ring: Ring = new FileRing(4, () => {});
    const b = Buffer.alloc(4096);
    expect(() => ring.read(0, b, 0, 4097, 0, 0)).toThrow(/out of range/);
    expect(() => ring.read(0, b, 4000, 100, 0, 0)).toThrow(/out of range/);
    expect(() => ring.read(0, b, 0, 0, 0, 0)).toThrow(/out of range/);
    expect(() => ring.read(0, b, 0, 512, -1, 0)).toThrow(/out of range/);
    expect(() => ring.read(0, b, 0, 512, 0, ring.slots)).toThrow(/slot out of range/);
    expect(() => ring.read(0, new Uint16Array(8) as unknown as Uint8Array, 0, 2, 0, 0)).toThrow(/Buffer or Uint8Array/);
    expect(ring.inFlight).toBe(0);
    expect(ring.close()).toBe(true);
  });

  /** A module that starts 128 MiB of reads and writes through io_uring, then runs `after`. */
  function ioScript(after: string): string {
    const path = join(fx.dir, `busy${fileNo++}.mjs`);
    writeFileSync(
      path,
      `import { promises as fsp } from 'node:fs';
      import { openFileIo } from ${JSON.stringify(pathToFileURL(join(root, 'dist/target/blk/file-io.js')).href)};
      const handle = await fsp.open(${JSON.stringify(scratch(Buffer.alloc(64 << 20)))}, 'r+');
      const io = openFileIo(handle, 'uring');
      const buf = Buffer.alloc(1 << 20, 7);
      for (let i = 0; i < 64; i++) io.write(buf, i * (1 << 20)).catch(() => {});
      for (let i = 0; i < 64; i++) io.read(Buffer.alloc(1 << 20), i * (1 << 20)).catch(() => {});
      ${after}`,
    );
    return path;
  }

  it('process.exit() with 128 MiB of I/O in flight exits cleanly', () => {
    const r = spawnSync(process.execPath, [ioScript('setImmediate(() => process.exit(0));')], { encoding: 'utf8', timeout: 60000 });
    expect(r.stderr).toBe('');
    expect(r.signal).toBeNull();
    expect(r.status).toBe(0);
  });

  it('a worker thread ended with I/O in flight: its ring is drained and released, the process lives on', () => {
    const worker = ioScript("(await import('node:worker_threads')).parentPort.postMessage('busy');");
    const main = join(fx.dir, 'main.mjs');
    writeFileSync(main, `
      import { Worker } from 'node:worker_threads';
      const w = new Worker(${JSON.stringify(worker)});
      w.on('message', async () => { console.log('exit', await w.terminate()); setTimeout(() => console.log('alive'), 50); });
      w.on('error', (e) => { console.log('error', e.message); process.exitCode = 1; });`);
    const r = spawnSync(process.execPath, [main], { encoding: 'utf8', timeout: 60000 });
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('exit 1\nalive\n');
    expect(r.status).toBe(0);
  });

  // A worker that ends itself from inside a completion callback: the callback's MakeCallback
  // returns with the environment unable to run JS, and the rest of the batch (and any later
  // poll event in that loop turn) has nobody to go to. This used to be a fatal error
  // ("Error::Error napi_define_properties") that took the whole process down.
  it('a worker that exits from an I/O completion callback ends cleanly, the process lives on', () => {
    const worker = join(fx.dir, `exit-in-callback${fileNo++}.mjs`);
    writeFileSync(worker, `
      import { promises as fsp } from 'node:fs';
      import { openFileIo } from ${JSON.stringify(pathToFileURL(join(root, 'dist/target/blk/file-io.js')).href)};
      const handle = await fsp.open(${JSON.stringify(scratch(Buffer.alloc(1 << 20)))}, 'r+');
      const io = openFileIo(handle, 'uring');
      for (let i = 0; i < 64; i++) io.read(Buffer.alloc(4096), i * 4096).then(() => { if (i === 3) process.exit(0); });`);
    const main = join(fx.dir, 'main-exit.mjs');
    writeFileSync(main, `
      import { Worker } from 'node:worker_threads';
      const w = new Worker(${JSON.stringify(worker)});
      w.on('exit', (code) => { console.log('exit', code); setTimeout(() => console.log('alive'), 50); });
      w.on('error', (e) => { console.log('error', e.message); process.exitCode = 1; });`);
    const r = spawnSync(process.execPath, [main], { encoding: 'utf8', timeout: 60000 });
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('exit 0\nalive\n');
    expect(r.status).toBe(0);
  });
});
