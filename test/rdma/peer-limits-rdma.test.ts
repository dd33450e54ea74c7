import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockDevice, Opcode, statusName } from '../../src/index.js';
import { nativeBinding } from '../../src/transport/rdma/native-binding.js';
import { parseListenUrl } from '../../src/transport/url.js';
import { RawRdmaQueue } from '../helpers/raw-rdma-queue.js';
import { TargetFixture } from '../helpers/target-fixture.js';
import { rdmaAddress } from './rdma-env.js';
import { waitFor } from '../helpers/wait-for.js';

const st = (c: Buffer) => statusName(c.readUInt16LE(0));

let fx: TargetFixture;

beforeAll(async () => {
  // TCG is ~19x slower than native: a timeout long enough for a real Connect, short for a test.
  fx = new TargetFixture({ connectTimeoutMs: 4000, keepalive: { intervalMs: 60000, timeoutMs: 600000 } });
  await fx.addDisk('disk0', 1024 * 1024);
  await fx.listen(`rdma://${rdmaAddress()}:0`);
});
afterAll(async () => {
  await fx?.close();
});

describe('RDMA connections that never Connect', () => {
  it('are closed after the connect timeout (their QPs released); a connected queue stays', async () => {
    const silent = await Promise.all([RawRdmaQueue.open(fx.url), RawRdmaQueue.open(fx.url)]);
    const connected = await RawRdmaQueue.open(fx.url);
    await connected.bringUp('disk0');
    await Promise.all(silent.map((q) => q.whenClosed(120000)));
    expect(fx.logged(/no Connect within 4000 ms; closing/)).toBe(true);
    expect(connected.closed).toBe(false);
    expect(st(await connected.call({ opcode: Opcode.Keepalive, commandId: 50 }))).toBe('SUCCESS');
    await connected.close();
  });
});

// Issue 17, finding 6 (RDMA half): a connection counts from its CONNECT_REQUEST, not from
// ESTABLISHED. Between the two the target holds a QP and its receive ring for it; a peer that
// sends connect requests and never completes them (test/rdma/stalled-cm-client.mjs) must not
// hold more of them than the unbound limits allow, nor hold them forever, nor make the target
// register a full receive ring for each.

const PER_HOST = 4;
const STALLED = 12;
const MiB = 1024 * 1024;
const CLIENT = fileURLToPath(new URL('./stalled-cm-client.mjs', import.meta.url));

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

async function settledArrayBuffers(): Promise<number> {
  for (let i = 0; i < 4; i++) {
    gc();
    await new Promise((r) => setTimeout(r, 20));
  }
  return process.memoryUsage().arrayBuffers;
}

/** Starts the stalled client against `url` and resolves once it has sent its connect requests and stopped. */
async function stalledClient(url: string, count: number): Promise<ChildProcess> {
  const { endpoint } = parseListenUrl(url);
  const child = spawn(process.execPath, [CLIENT, endpoint.host, String(endpoint.port), String(count)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (err += d));
  try {
    await waitFor('the stalled client to send its connect requests', () => out.includes(`connecting ${count}`) || child.exitCode !== null, 120000);
  } catch (e) {
    child.kill('SIGKILL');
    throw e;
  }
  if (child.exitCode !== null) throw new Error(`stalled client exited with ${child.exitCode}: ${err}`);
  return child;
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await gone;
}

describe('RDMA connect requests that never reach ESTABLISHED', () => {
  it(`are bounded per host from the CONNECT_REQUEST (oldest closed), hold no full receive ring, and a real initiator still connects`, async () => {
    const lim = new TargetFixture({
      connectTimeoutMs: 120000,
      keepalive: { intervalMs: 60000, timeoutMs: 600000 },
      quotas: { unboundPerHost: PER_HOST, unboundConnections: 2 * PER_HOST },
    });
    let child: ChildProcess | undefined;
    let holder: RawRdmaQueue | undefined;
    try {
      await lim.addDisk('disk0', MiB);
      await lim.listen(`rdma://${rdmaAddress()}:0`);
      // A bound queue holds the device's shared memory (its PD and base pool buffers, ~5 MiB,
      // allocated once per device): the baseline includes it, what grows is per connection.
      holder = await RawRdmaQueue.open(lim.url);
      await holder.bringUp('disk0');
      const binding = nativeBinding();
      const idle = binding.resourceCounts();
      const baseline = await settledArrayBuffers();
      const evicted = () => lim.logs.filter((l) => /closed before its RDMA connection was established to make room/.test(l.msg)).length;
      child = await stalledClient(lim.url, STALLED);
      // Every request has reached the target once it either holds a QP for it or closed it.
      await waitFor('the target to see every connect request', () => binding.resourceCounts().queuePairs - idle.queuePairs + evicted() >= STALLED, 120000);
      const held = binding.resourceCounts().queuePairs - idle.queuePairs;
      const grownMiB = ((await settledArrayBuffers()) - baseline) / MiB;
      console.log(`${STALLED} stalled connect requests: ${held} QPs held, ${evicted()} closed, +${grownMiB.toFixed(2)} MiB of Buffers`);
      expect(held).toBeLessThanOrEqual(PER_HOST);
      expect(evicted()).toBe(STALLED - held);
      // A full receive ring is ~1.3 MiB (288 × 4640 bytes): 12 of them were ~15 MiB. PER_HOST
      // pending connections with only a small ring each stay far below one.
      expect(grownMiB).toBeLessThan(1);

      // The real initiator from the same host pushes the oldest stalled requests out and works.
      const dev = await BlockDevice.open(`${lim.url}/disk0`, { keepaliveIntervalMs: 0 });
      const data = Buffer.alloc(64 * 1024, 0x5a);
      await dev.write(4096, data);
      expect((await dev.read(4096, data.length)).equals(data)).toBe(true);
      await dev.close();
      await stop(child);
      await waitFor('every QP to be released', () => binding.resourceCounts().queuePairs === idle.queuePairs, 120000);
    } finally {
      if (child) await stop(child);
      await holder?.close();
      await lim.close();
    }
  });

  it('are destroyed with their QP after the connect timeout', async () => {
    const binding = nativeBinding();
    const idle = binding.resourceCounts();
    const child = await stalledClient(fx.url, 2);
    try {
      // The CM's own REP retries would take minutes: the target's timer must end them first.
      await waitFor('the stalled connections to be destroyed', () => fx.logged(/RDMA connection not established within 4000 ms/) && binding.resourceCounts().queuePairs === idle.queuePairs, 40000);
    } finally {
      await stop(child);
    }
  });
});
