import { describe, expect, it } from 'vitest';
import { FileBlockExport } from '../src/index.js';
import { TargetFixture } from './helpers/target-fixture.js';
import { blkEndToEndSuite } from './suites/blk-e2e.js';

/**
 * The block-export suites again with file I/O through libuv's thread pool (Node's fs). The
 * default run (test/blk-export.test.ts, test/e2e-tcp.test.ts) takes `auto`: io_uring wherever
 * it works (test/file-io.test.ts asserts that it is chosen there). Exports read VOF_FILE_IO when
 * they open (in the suites' hooks), so setting it here, before they run, selects libuv.
 */
process.env.VOF_FILE_IO = 'libuv';
await import('./blk-export.test.js');
blkEndToEndSuite('TCP, libuv file I/O', 'tcp://127.0.0.1:0');

describe('this file runs on libuv', () => {
  it('exports opened without a fileIo option use libuv here', async () => {
    const fx = new TargetFixture();
    await fx.addDisk('d', 4096);
    expect((fx.target.devices.get('d')!.device as FileBlockExport).fileIoBackend).toBe('libuv');
    await fx.close();
  });
});
