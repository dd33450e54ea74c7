import { afterEach, describe, expect, it } from 'vitest';
import { BlockDevice, FileBlockExport, silentLogger, type RequestCancel } from '../src/index.js';
import { withInstanceOverrides } from './helpers/device-proxy.js';
import { TargetFixture } from './helpers/target-fixture.js';

/**
 * Issue 13, re-submission safety: requests without a completion are sent again after a
 * reconnect, and a FLUSH among them goes only once the re-submitted writes have completed, so
 * a completed FLUSH still means durable. The first device instance never completes anything;
 * the second one is slow with writes and logs what it starts and finishes.
 */

const OUT = 1;
const FLUSH = 4;
let fx: TargetFixture | null = null;
afterEach(async () => {
  await fx?.close();
  fx = null;
});

describe('re-submission after a reconnect', () => {
  it('writes in flight are sent again and the flush waits for them; completed writes are not re-sent', async () => {
    fx = new TargetFixture();
    const path = await fx.addDisk('plain', 1 << 20);
    const real = await FileBlockExport.open(path);
    let instances = 0;
    const seen: string[] = [];
    fx.target.addExport(
      'd',
      withInstanceOverrides(real, 'ordered', (inner) => {
        const n = ++instances;
        return {
          handleRequest: async (vq: number, readable: Buffer, writable: Buffer, cancel?: RequestCancel) => {
            const type = readable.readUInt32LE(0);
            const sector = Number(readable.readBigUInt64LE(8));
            const what = type === FLUSH ? 'flush' : type === OUT ? `write ${sector}` : `type ${type}`;
            if (n === 1 && (type === FLUSH || (type === OUT && sector !== 0))) {
              // Hangs until the instance is torn down: these never complete here.
              await cancel?.whenAborted?.();
              throw new Error('cancelled');
            }
            if (n >= 2) {
              seen.push(`start ${what}`);
              if (type === OUT) await new Promise((r) => setTimeout(r, 150));
            }
            const r = await inner.handleRequest(vq, readable, writable, cancel);
            if (n >= 2) seen.push(`end ${what}`);
            return r;
          },
        };
      }),
    );
    await fx.listen();
    const d = await BlockDevice.open(`${fx.url}/d`, { log: silentLogger, ctrlLossTimeoutMs: 20_000, reconnectDelayMs: 100 });
    await d.write(0, Buffer.alloc(4096, 1)); // completes on instance 1: never re-sent
    const w1 = d.write(8 * 512, Buffer.alloc(4096, 2));
    const w2 = d.write(16 * 512, Buffer.alloc(4096, 3));
    const f = d.flush();
    await new Promise((r) => setTimeout(r, 100));
    const reconnected = new Promise<void>((r) => d.device.once('reconnected', () => r()));
    // Break the path under the requests (as a network failure would).
    await d.device.queues[0]!.connection.close();
    await reconnected;
    await Promise.all([w1, w2, f]);
    expect(d.device.resubmittedRequests).toBe(3);
    expect(seen).not.toContain('start write 0');
    const flushAt = seen.indexOf('start flush');
    expect(flushAt).toBeGreaterThan(seen.indexOf('end write 8'));
    expect(flushAt).toBeGreaterThan(seen.indexOf('end write 16'));
    expect(seen.indexOf('end write 8')).toBeGreaterThanOrEqual(0);
    expect((await d.read(0, 12288)).equals(Buffer.concat([Buffer.alloc(4096, 1), Buffer.alloc(4096, 2), Buffer.alloc(4096, 3)]))).toBe(true);
    await d.close();
  }, 60_000);
});
