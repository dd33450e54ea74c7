import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startTarget, type StartedTarget } from '../../scripts/start-target.mjs';
import { BlockDevice, silentLogger } from '../../src/index.js';
import type { QueuePair } from '../../src/transport/rdma/native-binding.js';
import { rdmaAddress, waitFor } from './rdma-env.js';

/**
 * Issue 17, part B: the RDMA path broken the way real fabrics fail, under a writing initiator
 * with reconnect on (a `vof target` child process over a file): the target killed with
 * SIGKILL, the rxe device's netdev taken down and up, the rxe device removed and re-added, a
 * QP forced to the error state. Each time every write that was acknowledged is read back
 * afterwards (a file backend's acknowledged write is in the page cache, which outlives a
 * killed process), and every wait is bounded: nothing may hang.
 */

const BLOCK = 4096;
const BLOCKS = 128;
const WRITERS = 8;
// Every wait below is bounded by this (TCG runs ~20× slower than native).
const SLOW = 180_000;
const opts = { reconnectDelayMs: 500, keepaliveIntervalMs: 1000, keepaliveTimeoutMs: 10_000, ctrlLossTimeoutMs: SLOW, log: silentLogger };

let dir: string;
const running: StartedTarget[] = [];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vof-rdma-faults-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));
afterEach(async () => {
  for (const t of running.splice(0)) if (t.child.exitCode === null && t.child.signalCode === null) t.child.kill('SIGKILL');
});

function disk(name: string): string {
  const f = join(dir, name);
  writeFileSync(f, Buffer.alloc(BLOCKS * BLOCK));
  return f;
}

async function target(port: number, file: string): Promise<{ t: StartedTarget; url: string }> {
  const t = await startTarget(['--listen', `rdma://${rdmaAddress()}:${port}`, '--blk', `d=${file}`], { timeoutMs: SLOW });
  running.push(t);
  return { t, url: t.urls[0]! };
}

function portOf(url: string): number {
  return Number(/:(\d+)$/.exec(url)![1]);
}

function kill9(t: StartedTarget): Promise<void> {
  if (t.child.exitCode !== null || t.child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    t.child.once('exit', () => resolve());
    t.child.kill('SIGKILL');
  });
}

function block(n: number, round: number): Buffer {
  const b = Buffer.alloc(BLOCK);
  b.writeUInt32LE(n, 0);
  b.writeUInt32LE(round, 4);
  b.fill(`${n}:${round};`, 8);
  return b;
}

/**
 * WRITERS writers (queue depth WRITERS), each rewriting its own blocks in rounds with a flush
 * after every round. `acked`: the last round of each block whose write was acknowledged;
 * `tried`: the last round sent (a write that failed may or may not have landed).
 */
function load(d: BlockDevice) {
  const acked = new Map<number, number>();
  const tried = new Map<number, number>();
  const errors: string[] = [];
  let stopped = false;
  // A request that fails at once would make the writers loop on microtasks only, starving the
  // event loop (no timer, no I/O, not even vitest's timeout: the test would seem to hang): the
  // writers stop after a few failures, and the test fails on them.
  const fail = (e: Error) => {
    errors.push(e.message);
    if (errors.length >= 16) stopped = true;
  };
  const writer = async (w: number) => {
    for (let round = 1; !stopped && round < 100_000; round++) {
      for (let n = w; n < BLOCKS && !stopped; n += WRITERS) {
        tried.set(n, round);
        await d.write(n * BLOCK, block(n, round)).then(
          () => acked.set(n, round),
          (e: Error) => fail(e),
        );
      }
      await d.flush().catch((e: Error) => fail(e));
    }
  };
  const writers = Array.from({ length: WRITERS }, (_, w) => writer(w));
  const total = () => [...acked.values()].reduce((a, b) => a + b, 0);
  return {
    acked,
    errors,
    total,
    /** Resolves once BLOCKS more writes have been acknowledged than at the call. */
    progress: (what: string) => {
      const from = total();
      return waitFor(what, () => total() >= from + BLOCKS || stopped, SLOW).then(() => {
        if (total() < from + BLOCKS) throw new Error(`${what}: the writers stopped after failed requests: ${errors.slice(0, 3).join(' | ')}`);
      });
    },
    stop: async () => {
      stopped = true;
      await Promise.all(writers);
    },
    /** Every block holds its last acknowledged round, or a later one that was sent. */
    verify: (bytes: Buffer) => {
      expect(acked.size).toBe(BLOCKS);
      for (const [n, last] of acked) {
        const got = bytes.subarray(n * BLOCK, (n + 1) * BLOCK);
        const round = got.readUInt32LE(4);
        expect(round >= last && round <= tried.get(n)!, `block ${n}: round ${round} on disk, ${last} acknowledged`).toBe(true);
        expect(got.equals(block(n, round)), `block ${n} round ${round} intact`).toBe(true);
      }
    },
  };
}

function events(d: BlockDevice): string[] {
  const seen: string[] = [];
  d.device.on('disconnected', () => seen.push('disconnected'));
  d.device.on('reconnected', () => seen.push('reconnected'));
  d.device.on('lost', () => seen.push('lost'));
  return seen;
}

/** Read the whole disk back over a new RDMA connection (the path works again). */
async function readBack(url: string): Promise<Buffer> {
  const fresh = await BlockDevice.open(`${url}/d`, { keepaliveIntervalMs: 0, log: silentLogger });
  try {
    return await fresh.read(0, BLOCKS * BLOCK);
  } finally {
    await fresh.close();
  }
}

const RUN_MS = 90_000;

/**
 * A command of iproute2 (ip, rdma), bounded; rejects with its output if it fails. Never
 * synchronous: removing an RDMA device waits for this process to release its resources on it,
 * which its event loop must be free to do.
 */
function run(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    // A command the kernel holds in an uninterruptible wait (`rdma link delete` waiting for a
    // process to close its verbs contexts) outlives execFile's kill: the test fails anyway.
    const stuck = setTimeout(() => reject(new Error(`${cmd} ${args.join(' ')}: still running after ${RUN_MS} ms (stuck in the kernel?)`)), RUN_MS + 10_000);
    execFile(cmd, args, { encoding: 'utf8', timeout: RUN_MS }, (err, _out, stderr) => {
      clearTimeout(stuck);
      if (err) reject(new Error(`${cmd} ${args.join(' ')}: ${err.message} ${stderr}`.trim()));
      else resolve();
    });
  });
}

const rxeDev = () => process.env['VOF_RDMA_DEV'] ?? 'rxe0';

/** The netdev the rxe device sits on (the VM's guest-init.sh makes rxe0 on dummy0). */
function netdevOf(dev: string): string {
  const ndevs = `/sys/class/infiniband/${dev}/ports/1/gid_attrs/ndevs`;
  for (const f of readdirSync(ndevs)) {
    let name = '';
    try {
      name = readFileSync(join(ndevs, f), 'utf8').trim();
    } catch {
      continue; // an unused GID index cannot be read
    }
    if (name) return name;
  }
  throw new Error(`no netdev for ${dev}`);
}

/**
 * Issue 17, still open for these two: they run only with VOF_RDMA_NETDEV_FAULTS=1 and say so
 * loudly otherwise. What was found in the soft-RoCE VM (kernel stacks of every process):
 * - rxe removal: `rdma link delete` sat in ib_uverbs_remove_one (state D), waiting for the
 *   processes to close their verbs contexts, which librdmacm never did: it does not notice a
 *   removed device by itself. Fixed (vof releases verbs objects before their CM id and refreshes
 *   librdmacm's device list on DEVICE_REMOVAL, see device-removal.ts), not yet seen passing here.
 * - link down/up: the test process's main thread stayed on the CPU while the target sat idle
 *   in epoll_wait, well past every bound here: the event loop never ran. Likely (not
 *   confirmed) requests failing at once, which made load()'s writers loop on microtasks only;
 *   they now stop after a few failures, so the test should fail with the reason instead.
 */
const netdevFaults = process.env['VOF_RDMA_NETDEV_FAULTS'] === '1';
if (!netdevFaults) {
  console.warn(
    '\n#### faults-rdma: the link down/up and rxe remove/re-add tests are SKIPPED (issue 17, open: link down/up still hangs the test process; the rxe removal fix is not yet verified in the VM); VOF_RDMA_NETDEV_FAULTS=1 runs them ####\n',
  );
}

describe('RDMA faults under a writing initiator', () => {
  it('target killed with SIGKILL and restarted: the initiator reconnects over RDMA, acknowledged writes are on disk', async () => {
    const file = disk('kill.img');
    let { t, url } = await target(0, file);
    const d = await BlockDevice.open(`${url}/d`, opts);
    const seen = events(d);
    const w = load(d);
    await waitFor('every block to be written once', () => w.acked.size === BLOCKS, SLOW);
    await kill9(t);
    ({ t, url } = await target(portOf(url), file));
    await w.progress('writes to go on after the restart');
    await w.stop();
    await d.close();
    expect(seen).toContain('disconnected');
    expect(seen).toContain('reconnected');
    expect(seen).not.toContain('lost');
    // Requests cut by the kill are held and sent again on the new connection: none fails.
    expect(w.errors).toEqual([]);
    w.verify(readFileSync(file));
  });

  it.skipIf(!netdevFaults)('link down and up mid-I/O: I/O completes or the device reconnects; data verified', async () => {
    const netdev = netdevOf(rxeDev());
    const file = disk('link.img');
    const { t, url } = await target(0, file);
    const d = await BlockDevice.open(`${url}/d`, opts);
    const seen = events(d);
    const w = load(d);
    await waitFor('every block to be written once', () => w.acked.size === BLOCKS, SLOW);
    try {
      await run('ip', ['link', 'set', netdev, 'down']);
      await new Promise((r) => setTimeout(r, 3000));
    } finally {
      await run('ip', ['link', 'set', netdev, 'up']);
    }
    await w.progress('writes to go on after the link came back');
    await w.stop();
    await d.close();
    console.log(`link down/up: device events ${JSON.stringify(seen)}, ${w.errors.length} failed requests`);
    expect(seen).not.toContain('lost');
    expect(w.errors).toEqual([]);
    expect(t.child.exitCode).toBe(null);
    w.verify(readFileSync(file));
    w.verify(await readBack(url));
  });

  it.skipIf(!netdevFaults)('rxe device removed and re-added mid-I/O: nothing crashes, the device reconnects, a new connection works', async () => {
    const dev = rxeDev();
    const netdev = netdevOf(dev);
    const file = disk('remove.img');
    const { t, url } = await target(0, file);
    const d = await BlockDevice.open(`${url}/d`, opts);
    const seen = events(d);
    const w = load(d);
    await waitFor('every block to be written once', () => w.acked.size === BLOCKS, SLOW);
    try {
      await run('rdma', ['link', 'delete', dev]);
      await waitFor('the device to disconnect', () => seen.includes('disconnected'), SLOW);
    } finally {
      await run('rdma', ['link', 'add', dev, 'type', 'rxe', 'netdev', netdev]);
    }
    await w.progress('writes to go on after the device came back');
    await w.stop();
    await d.close();
    expect(seen).toContain('reconnected');
    expect(seen).not.toContain('lost');
    expect(w.errors).toEqual([]);
    expect(t.child.exitCode).toBe(null);
    expect(t.stderr()).toMatch(/DEVICE_REMOVAL/);
    w.verify(readFileSync(file));
    w.verify(await readBack(url));
  });

  it("a queue's QP forced to the error state mid-I/O: the queue closes, its requests are sent again after the reconnect", async () => {
    const file = disk('qperr.img');
    const { t, url } = await target(0, file);
    const d = await BlockDevice.open(`${url}/d`, opts);
    const seen = events(d);
    const w = load(d);
    await waitFor('every block to be written once', () => w.acked.size === BLOCKS, SLOW);
    // The initiator's QP of its first virtqueue (an internal: no public API exposes a QP).
    const vq = d.device.queues[0]!;
    const qp = (vq.connection as unknown as { rc: { qp: QueuePair } }).rc.qp;
    qp.modifyToError();
    await waitFor('the device to disconnect', () => seen.includes('disconnected'), SLOW);
    await w.progress('writes to go on after the reconnect');
    await w.stop();
    await d.close();
    expect(seen).toContain('reconnected');
    expect(seen).not.toContain('lost');
    expect(w.errors).toEqual([]);
    expect(t.child.exitCode).toBe(null);
    w.verify(readFileSync(file));
    w.verify(await readBack(url));
  });
});
