import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockDevice, FileBlockExport } from '../../src/index.js';
import { allocAligned } from '../../src/util/aligned-buffer.js';
import { needs } from '../helpers/deps.js';
import { TargetFixture } from '../helpers/target-fixture.js';
import { rdmaAddress } from './rdma-env.js';
import { pattern } from '../helpers/pattern.js';

/**
 * Direct I/O over RDMA: a block export opened with O_DIRECT reads from the disk into the
 * registered pool buffer its RDMA WRITE sends from, and writes from the one its RDMA READ
 * fetched into, with no bounce. The disk is a loop device (a block device does direct I/O
 * whatever holds its backing file; the guest's root is 9p and its /dev/shm tmpfs).
 */
const tools = needs('test/rdma/direct-rdma.test.ts (a loop device for direct I/O)', ['mount', 'kmod'], () =>
  process.getuid?.() === 0 ? null : 'not root (losetup needs it); run it in the soft-RoCE VM',
);

describe.skipIf(!tools.ok)(`direct I/O over RDMA${tools.skipNote}`, () => {
  let dir = '';
  let device = '';
  let fx: TargetFixture;
  let exp: FileBlockExport;
  beforeAll(async () => {
    dir = mkdtempSync('/dev/shm/vof-direct-rdma-');
    spawnSync('modprobe', ['loop']);
    const image = join(dir, 'disk.img');
    writeFileSync(image, Buffer.alloc(8 * 1024 * 1024));
    const r = spawnSync('losetup', ['--find', '--show', '--sector-size', '4096', image], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`losetup: ${r.stderr}`);
    device = r.stdout.trim();
    fx = new TargetFixture();
    exp = await FileBlockExport.open(device, { direct: true });
    fx.target.addExport('d', exp);
    await fx.listen(`rdma://${rdmaAddress()}:0`);
  });
  afterAll(async () => {
    await fx?.close();
    if (device) spawnSync('losetup', ['-d', device]);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('round-trips unaligned caller buffers; reads and keyed (non-inline) writes never bounce', async () => {
    const d = await BlockDevice.open(`${fx.url}/d`, { keepaliveIntervalMs: 0 });
    try {
      expect(d.blockSize).toBe(4096);
      // Above the inline-data size (4112), so every write is an RDMA READ into pool memory.
      const cases = [
        [0, 8192],
        [64 * 1024, 16 * 1024],
        [1024 * 1024, 128 * 1024],
        [4 * 1024 * 1024, 1024 * 1024],
      ];
      for (const [i, [offset, length]] of cases.entries()) {
        const data = pattern(length!, 300 + i);
        const src = allocAligned(length! + 1).subarray(1);
        data.copy(src);
        await d.write(offset!, src);
        const into = Buffer.alloc(length! + 1).subarray(1);
        await d.read(offset!, into);
        expect(into.equals(data), `offset ${offset}`).toBe(true);
      }
      expect(exp.bouncedRequests).toBe(0);
    } finally {
      await d.close();
    }
  });
});
