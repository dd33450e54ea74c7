import { closeSync, constants as fsc, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, readSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlkConfig, BlkRequestType, BlkStatus, BlockDevice, FileBlockExport, encodeRequestHeader, type FileIoBackend } from '../src/index.js';
import { DirectFileIo } from '../src/target/blk/direct-file-io.js';
import { openFileIo } from '../src/target/blk/file-io.js';
import { sharedUringRing } from '../src/target/blk/uring-ring.js';
import { NicMemory } from '../src/transport/rdma/nic-memory.js';
import type { MemoryRegion, ProtectionDomain } from '../src/transport/rdma/native-binding.js';
import { FramePool, FrameRetention } from '../src/transport/tcp/frame-pool.js';
import { addressRemainder, alignmentAddon, allocAligned } from '../src/util/aligned-buffer.js';
import { needs } from './helpers/deps.js';
import { TargetFixture } from './helpers/target-fixture.js';
import { vofAsync } from './helpers/vof-cli.js';
import { pattern } from './helpers/pattern.js';

/**
 * Block exports opened with direct I/O (FileBlockOptions.direct, `--blk NAME=PATH,direct`):
 * O_DIRECT on the descriptor, blk_size from the file's alignment, data straight between the
 * disk and the transport's aligned pool buffers, a bounce for any other buffer, and a clear
 * refusal where direct I/O cannot work (tmpfs).
 */
const MEMORY_FS = new Set([0x01021994, 0x858458f6]); // tmpfs, ramfs
const root = fileURLToPath(new URL('..', import.meta.url));

const addon = needs('test/direct-io.test.ts: direct I/O (native addon)', ['addon'], () => {
  const a = alignmentAddon();
  return a instanceof Error ? a.message : null;
});

/** A scratch directory on a file system that does direct I/O: tmpdir(), else one in the repo. */
function directCapableDir(): string | null {
  for (const base of [tmpdir(), root]) {
    if (!MEMORY_FS.has(Number(statfsSync(base).type))) return mkdtempSync(join(base, 'vof-direct-'));
  }
  return null;
}
const dir = addon.ok ? directCapableDir() : null;
if (addon.ok && !dir) process.stderr.write('\n!!! test/direct-io.test.ts CANNOT RUN HERE: no directory off tmpfs (tmpdir and the repo are both in memory) !!!\n\n');
const runs = addon.ok && dir !== null;
const skipNote = addon.ok ? (dir ? '' : ' [SKIPPED: no directory off tmpfs]') : addon.skipNote;
afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

let fileNo = 0;
function scratch(size: number): string {
  const path = join(dir!, `d${fileNo++}.img`);
  writeFileSync(path, Buffer.alloc(size));
  return path;
}
/** A copy of `data` in a buffer that starts one byte past an aligned address: never aligned. */
function unaligned(data: Buffer): Buffer {
  const b = allocAligned(data.length + 1).subarray(1);
  data.copy(b);
  return b;
}
/** The open-file flags of this process's descriptors for `path` (from /proc/self/fdinfo). */
function openFlags(path: string): number[] {
  const out: number[] = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    let target: string;
    try {
      target = readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue;
    }
    if (target !== path) continue;
    const m = /^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
    if (m) out.push(parseInt(m[1]!, 8));
  }
  return out;
}
/** The file's bytes as the disk has them: read with O_DIRECT, past any page cache. */
function onDisk(path: string, position: number, length: number): Buffer {
  const fd = openSync(path, fsc.O_RDONLY | fsc.O_DIRECT);
  try {
    const b = allocAligned(length);
    let done = 0;
    while (done < length) {
      const n = readSync(fd, b, done, length - done, position + done);
      if (n === 0) break;
      done += n;
    }
    return b.subarray(0, done);
  } finally {
    closeSync(fd);
  }
}

describe.skipIf(!runs)(`direct I/O exports${skipNote}`, () => {
  it('opens the file with O_DIRECT (a buffered export does not), and says so in its description', async () => {
    const path = scratch(64 * 1024);
    const direct = await FileBlockExport.open(path, { direct: true });
    try {
      expect(direct.direct).toBe(true);
      expect(direct.description).toMatch(/direct I\/O/);
      const flags = openFlags(path);
      expect(flags).toHaveLength(1);
      expect(flags[0]! & fsc.O_DIRECT).toBe(fsc.O_DIRECT);
    } finally {
      await direct.close();
    }
    const buffered = await FileBlockExport.open(path);
    try {
      expect(openFlags(path).map((f) => f & fsc.O_DIRECT)).toEqual([0]);
    } finally {
      await buffered.close();
    }
  });

  it('advertises the file\'s direct-I/O alignment as blk_size and refuses smaller blocks', async () => {
    const path = scratch(64 * 1024);
    const a = alignmentAddon();
    if (a instanceof Error) throw a;
    const fd = openSync(path, 'r');
    const want = a.directIoAlignment(fd);
    closeSync(fd);
    const block = want === null || want.offsetAlign > 512 ? 4096 : 512;
    const exp = await FileBlockExport.open(path, { direct: true });
    try {
      expect(exp.minBlockSize).toBe(block);
      expect(exp.config().readUInt32LE(BlkConfig.blk_size)).toBe(block);
    } finally {
      await exp.close();
    }
    if (block === 4096) await expect(FileBlockExport.open(path, { direct: true, blockSize: 512 })).rejects.toThrow(/needs 4096-byte blocks/);
  });

  for (const backend of ['uring', 'libuv'] as FileIoBackend[]) {
    const uringMissing = backend === 'uring' ? (sharedUringRing() instanceof Error ? (sharedUringRing() as Error).message : null) : null;
    if (uringMissing) process.stderr.write(`\n!!! test/direct-io.test.ts: the io_uring case CANNOT RUN HERE: ${uringMissing} !!!\n\n`);
    it.skipIf(uringMissing !== null)(`${backend}: unaligned caller buffers round-trip through a bounce, aligned ones do not, unaligned offsets are EINVAL${uringMissing ? ` [SKIPPED: ${uringMissing}]` : ''}`, async () => {
      const path = scratch(1024 * 1024);
      const file = await (await import('node:fs/promises')).open(path, fsc.O_RDWR | fsc.O_DIRECT);
      const io = new DirectFileIo(openFileIo(file, backend), { memAlign: 4096, offsetAlign: 4096 });
      try {
        const cases = [
          [0, 4096],
          [8192, 12288],
          [65536, 131072],
          [4096, 4096 * 3],
        ] as const;
        for (const [i, [pos, len]] of cases.entries()) {
          const data = pattern(len, 10 + i);
          await io.write(unaligned(data), pos);
          expect(onDisk(path, pos, len).equals(data)).toBe(true);
          const into = Buffer.alloc(len + 1).subarray(1);
          await io.read(into, pos);
          expect(into.equals(data)).toBe(true);
        }
        expect(io.bounced).toBe(2 * cases.length);
        const aligned = allocAligned(8192);
        await io.read(aligned, 0);
        await io.write(aligned, 0);
        expect(io.bounced).toBe(2 * cases.length);
        await expect(io.read(allocAligned(4096), 512)).rejects.toMatchObject({ code: 'EINVAL' });
        await expect(io.write(allocAligned(1000), 0)).rejects.toMatchObject({ code: 'EINVAL' });
      } finally {
        await io.close();
        await file.close();
      }
    });
  }

  describe('through the library over TCP', () => {
    let fx: TargetFixture;
    let path: string;
    let url: string;
    const MiB = 1024 * 1024;
    beforeAll(async () => {
      fx = new TargetFixture();
      path = scratch(8 * MiB);
      fx.target.addExport('direct', await FileBlockExport.open(path, { direct: true, numQueues: 2, queueSize: 16 }));
      url = await fx.listen();
    });
    afterAll(() => fx?.close());

    it('round trips with unaligned caller buffers, various sizes and offsets; the data is on disk; reads never bounce', async () => {
      const exp = fx.target.devices.get('direct')!.device as FileBlockExport;
      const d = await BlockDevice.open(`${url}/direct`, { keepaliveIntervalMs: 0 });
      try {
        const block = d.blockSize;
        expect(block).toBe(exp.minBlockSize);
        const cases = [
          [0, block],
          [block * 3, block * 2],
          [64 * 1024, 4096],
          [MiB - block, 64 * 1024 + block],
          [2 * MiB, 128 * 1024],
          [3 * MiB + block, MiB],
          [8 * MiB - 2 * block, 2 * block],
        ];
        for (const [i, [offset, length]] of cases.entries()) {
          const data = pattern(length!, 100 + i);
          await d.write(offset!, unaligned(data));
          const into = Buffer.alloc(length! + 1).subarray(1);
          await d.read(offset!, into);
          expect(into.equals(data), `offset ${offset} length ${length}`).toBe(true);
          expect(onDisk(path, offset!, length!).equals(data), `on disk at ${offset}`).toBe(true);
        }
        // The whole disk once more, concurrently and in pieces: nothing overlapped or moved.
        const reads = await Promise.all(cases.map(([offset, length]) => d.read(offset!, length!)));
        reads.forEach((r, i) => expect(r.equals(pattern(cases[i]![1]!, 100 + i))).toBe(true));
        // Reads land in the connection's aligned frames: the disk writes into them directly.
        // (Small writes arrive in the socket's chunk and are bounced; large ones are gathered
        // into an aligned frame.) So the bounces are at most the writes.
        expect(exp.bouncedRequests).toBeLessThanOrEqual(cases.length);
        const before = exp.bouncedRequests;
        await Promise.all(cases.map(([offset, length]) => d.read(offset!, length!)));
        expect(exp.bouncedRequests).toBe(before);
        // WRITE_ZEROES through the export's aligned zero chunk.
        await d.writeZeroes(2 * MiB, 128 * 1024);
        expect(onDisk(path, 2 * MiB, 128 * 1024).every((x) => x === 0)).toBe(true);
        expect(exp.bouncedRequests).toBe(before);
      } finally {
        await d.close();
      }
    });
  });

  it('tmpfs is refused at open, saying why (no silent fallback to the page cache)', async (ctx) => {
    if (!existsSync('/dev/shm') || !MEMORY_FS.has(Number(statfsSync('/dev/shm').type))) {
      process.stderr.write('\n!!! test/direct-io.test.ts: the tmpfs case CANNOT RUN HERE: /dev/shm is not tmpfs !!!\n\n');
      ctx.skip();
    }
    const shm = mkdtempSync('/dev/shm/vof-direct-');
    try {
      const path = join(shm, 'd.img');
      writeFileSync(path, Buffer.alloc(4096));
      await expect(FileBlockExport.open(path, { direct: true })).rejects.toThrow(/is on tmpfs.*without "direct"/);
      // Buffered, the same file exports fine.
      await (await FileBlockExport.open(path)).close();
    } finally {
      rmSync(shm, { recursive: true, force: true });
    }
  });

  it('the CLI: --blk NAME=PATH,direct exports with direct I/O; on tmpfs the target exits saying why', async () => {
    const path = scratch(1024 * 1024);
    const ok = await vofAsync(['target', '--listen', 'tcp://127.0.0.1:0', '--blk', `d=${path},direct`], 4000);
    // Killed by the timeout once it listens (a target runs until a signal): what it logged counts.
    expect(ok.stderr).toMatch(/exporting virtio-blk .*direct I\/O\)/);
    if (existsSync('/dev/shm') && MEMORY_FS.has(Number(statfsSync('/dev/shm').type))) {
      const shm = mkdtempSync('/dev/shm/vof-direct-');
      try {
        writeFileSync(join(shm, 'd.img'), Buffer.alloc(4096));
        const bad = await vofAsync(['target', '--listen', 'tcp://127.0.0.1:0', '--blk', `d=${join(shm, 'd.img')},direct`], 10000);
        expect(bad.status).toBe(1);
        expect(bad.stderr).toMatch(/is on tmpfs/);
      } finally {
        rmSync(shm, { recursive: true, force: true });
      }
    }
  });
});

describe.skipIf(!addon.ok)(`pool buffers put request data on an aligned address${addon.skipNote}`, () => {
  it('TCP frames: the byte after the 16-byte header is page-aligned in frames that can carry a 4096-byte block', () => {
    const pool = new FramePool(1 << 24, new FrameRetention(1 << 26));
    for (const size of [16 + 4096 + 1, 16 + 65536 + 1, 16 + 1024 * 1024 + 1, 9 * 1024 * 1024]) {
      const frame = pool.take(size);
      expect(addressRemainder(frame.subarray(16), 4096), `frame for ${size}`).toBe(0);
      pool.give(frame);
    }
    // Small frames: 512-aligned data (a 512-byte block after the header).
    expect(addressRemainder(pool.take(16 + 512 + 1).subarray(16), 512)).toBe(0);
  });

  it('RDMA device memory: every buffer of every class above 512 bytes has its data on a page', () => {
    class FakePd implements ProtectionDomain {
      registerMemory(buffer: Uint8Array): MemoryRegion {
        const buf = Buffer.from(buffer.buffer, buffer.byteOffset, buffer.byteLength);
        return { lkey: 1, rkey: 1, address: 0n, length: buf.length, buffer: buf, deregister: () => {} };
      }
      dealloc(): boolean {
        return true;
      }
      registrations(): number {
        return 0;
      }
    }
    const mem = new NicMemory(new FakePd(), { largestBuffer: 4 * 1024 * 1024 + 4096 + 17, limitBytes: 256 * 1024 * 1024, access: 0 });
    mem.reserve(4);
    for (const size of [16 + 4096 + 1, 16 + 16384 + 1, 16 + 131072 + 1, 16 + 1024 * 1024 + 1, 16 + 4 * 1024 * 1024 + 1]) {
      // Two per class (a slab of the first buffer, one of the reservation's): across slabs too.
      const taken = [0, 1].map(() => mem.tryAcquire(size)!);
      for (const b of taken) expect(addressRemainder(b.view.subarray(16), 4096), `buffer for ${size}`).toBe(0);
      for (const b of taken) b.release();
    }
    mem.destroy();
  });
});

// Placed last: the unaligned-request check needs the raw instance API, not BlockDevice (which
// refuses unaligned I/O itself before anything is sent).
describe.skipIf(!runs)(`a request not aligned to the advertised block${skipNote}`, () => {
  it('gets IOERR and leaves the disk untouched (no read-modify-write)', async () => {
    const path = scratch(64 * 1024);
    writeFileSync(path, pattern(64 * 1024, 7));
    const exp = await FileBlockExport.open(path, { direct: true, blockSize: 4096 });
    const inst = exp.createInstance();
    try {
      const out = Buffer.concat([encodeRequestHeader(BlkRequestType.OUT, 1n), Buffer.alloc(512, 0xee)]);
      const status = Buffer.alloc(1, 0xff);
      await inst.handleRequest(0, out, status);
      expect(status[0]).toBe(BlkStatus.IOERR);
      const readIn = Buffer.alloc(4096 + 1);
      await inst.handleRequest(0, encodeRequestHeader(BlkRequestType.IN, 8n), readIn);
      expect(readIn[4096]).toBe(BlkStatus.OK);
      expect(readIn.subarray(0, 4096).equals(pattern(64 * 1024, 7).subarray(4096, 8192))).toBe(true);
      expect(onDisk(path, 0, 64 * 1024).equals(pattern(64 * 1024, 7))).toBe(true);
    } finally {
      inst.destroy();
      await exp.close();
    }
  });
});


/**
 * A disk whose logical block is 4096 bytes: a loop device with --sector-size 4096 (needs root
 * and losetup). The export must advertise 4096 as blk_size, and the library then moves only
 * whole 4096-byte blocks, from unaligned caller buffers as well.
 */
const loop = needs('test/direct-io.test.ts: a 4096-byte-sector loop device (root, losetup)', ['mount'], () => {
  if (!runs) return 'direct I/O cannot run here (see above)';
  if (process.getuid?.() !== 0) return 'not root (losetup needs it)';
  const probe = spawnSync('losetup', ['--find'], { encoding: 'utf8' });
  return probe.status === 0 ? null : `losetup --find failed: ${probe.stderr.trim()}`;
});
describe.skipIf(!loop.ok)(`direct I/O on a 4096-byte-sector block device${loop.skipNote}`, () => {
  let device = '';
  let fx: TargetFixture;
  beforeAll(async () => {
    const image = scratch(4 * 1024 * 1024);
    const r = spawnSync('losetup', ['--find', '--show', '--sector-size', '4096', image], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`losetup: ${r.stderr}`);
    device = r.stdout.trim();
    fx = new TargetFixture();
    // The library's default IVQN (the CLI's too) holds the admin grant: FORMAT is export-wide.
    fx.target.addExport('d4k', await FileBlockExport.open(device, { direct: true }), undefined, { admin: [{ ivqn: 'vof-initiator' }] });
    await fx.listen();
  });
  afterAll(async () => {
    await fx?.close();
    if (device) spawnSync('losetup', ['-d', device]);
  });

  it('advertises blk_size 4096, round-trips unaligned caller buffers, and the device has the bytes', async () => {
    const exp = fx.target.devices.get('d4k')!.device as FileBlockExport;
    expect(exp.minBlockSize).toBe(4096);
    await expect(FileBlockExport.open(device, { direct: true, blockSize: 512 })).rejects.toThrow(/needs 4096-byte blocks/);
    const d = await BlockDevice.open(`${fx.url}/d4k`, { keepaliveIntervalMs: 0 });
    try {
      expect(d.blockSize).toBe(4096);
      for (const [i, [offset, length]] of [
        [0, 4096],
        [4096 * 5, 4096 * 3],
        [1024 * 1024, 256 * 1024],
        [4 * 1024 * 1024 - 4096, 4096],
      ].entries()) {
        const data = pattern(length!, 200 + i);
        await d.write(offset!, unaligned(data));
        const into = Buffer.alloc(length! + 1).subarray(1);
        await d.read(offset!, into);
        expect(into.equals(data)).toBe(true);
        expect(onDisk(device, offset!, length!).equals(data)).toBe(true);
      }
      await expect(d.read(512, 4096)).rejects.toThrow(RangeError);
    } finally {
      await d.close();
    }
  });

  it('admin FORMAT to 512-byte blocks is refused (the device cannot serve them); 4096 stays', async () => {
    const refused = await vofAsync(['admin', `${fx.url}/d4k`, 'format', '512']);
    expect(refused.status).toBe(1);
    expect(refused.stderr).toMatch(/FORMAT_UNSUPPORTED/);
    const ok = await vofAsync(['admin', `${fx.url}/d4k`, 'format', '4096']);
    expect(ok.status, ok.stderr).toBe(0);
    expect((fx.target.devices.get('d4k')!.device as FileBlockExport).blockSize).toBe(4096);
  });
});
