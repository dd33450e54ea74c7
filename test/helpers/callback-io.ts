import type { BlockDevice } from '../../src/index.js';

/**
 * 4 KiB submitRead (checking each block's first word: the memory test target writes every
 * block's own byte offset there) or submitWrite of `bufs` over the first `span` bytes, one
 * command in flight per buffer, `count` commands in all. One callback per buffer, made once:
 * the loop itself allocates nothing per command (the allocation tests measure vof, not it).
 */
export function callbackIo(d: BlockDevice, count: number, bufs: Buffer[], write: boolean, span = 1024 * 1024): Promise<void> {
  return new Promise((resolve, reject) => {
    let next = 0;
    let running = bufs.length;
    let failed = false;
    const reader = (buf: Buffer) => {
      let at = 0;
      const issue = (): void => {
        if (failed) return;
        if (next >= count) {
          if (--running === 0) resolve();
          return;
        }
        at = ((next++ * 4096) % span) | 0;
        if (write) d.submitWrite(at, buf, done);
        else d.submitRead(at, buf, done);
      };
      const done = (err: Error | null): void => {
        if (err || (!write && buf.readUInt32LE(0) !== at)) {
          failed = true;
          reject(err ?? new Error(`read at ${at} returned the block at ${buf.readUInt32LE(0)}`));
          return;
        }
        issue();
      };
      return issue;
    };
    for (const issue of bufs.map(reader)) issue();
  });
}

/** callbackIo's reads. */
export function callbackReads(d: BlockDevice, reads: number, bufs: Buffer[], span?: number): Promise<void> {
  return callbackIo(d, reads, bufs, false, span);
}
