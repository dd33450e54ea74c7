import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startTarget, type StartedTarget } from '../../scripts/start-target.mjs';
import { BlockDevice, createLogger, silentLogger } from '../../src/index.js';
import { nativeBinding, type QueuePair } from '../../src/transport/rdma/native-binding.js';
import { block, kill9 } from '../helpers/target-faults.js';
import { rdmaAddress } from './rdma-env.js';
import { waitFor } from '../helpers/wait-for.js';

/**
 * Issue 17, part B: the RDMA path broken the way real fabrics fail, under a writing initiator
 * with reconnect on (a `vof target` child process over a file): the target killed with
 * SIGKILL, the rxe device removed and re-added, a QP forced to the error state, the rxe
 * device's netdev taken down for longer than the keepalive and loss timeouts (and, opt-in, down
 * and up briefly: see linkFaults). One driver, underLoad(fault), runs each. Each time every
 * write that was acknowledged is read back afterwards (a file backend's acknowledged write is
 * in the page cache, which outlives a killed process), and every wait is bounded: nothing may
 * hang.
 */

const BLOCK = 4096;
const BLOCKS = 128;
const WRITERS = 8;
// Every wait below is bounded by this (TCG runs ~20× slower than native).
const SLOW = 180_000;
const KEEPALIVE_TIMEOUT = 10_000;
const opts = { reconnectDelayMs: 500, keepaliveIntervalMs: 1000, keepaliveTimeoutMs: KEEPALIVE_TIMEOUT, ctrlLossTimeoutMs: SLOW };

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
        await d.write(n * BLOCK, block(n, round, BLOCK)).then(
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
        expect(got.equals(block(n, round, BLOCK)), `block ${n} round ${round} intact`).toBe(true);
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

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Read the whole disk back over a new RDMA connection (the path works again); a few tries, as a
 * target whose device was re-added listens again within a second or so.
 */
async function readBack(url: string): Promise<Buffer> {
  for (let attempt = 1; ; attempt++) {
    let fresh: BlockDevice;
    try {
      fresh = await BlockDevice.open(`${url}/d`, { keepaliveIntervalMs: 0, log: silentLogger });
    } catch (err) {
      if (attempt >= 10) throw err;
      await sleep(1000);
      continue;
    }
    try {
      return await fresh.read(0, BLOCKS * BLOCK);
    } finally {
      await fresh.close();
    }
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

/** One device under load and what the driver saw of it. */
interface Run {
  readonly file: string;
  t: StartedTarget;
  url: string;
  readonly d: BlockDevice;
  readonly seen: string[];
  readonly w: ReturnType<typeof load>;
  /** The initiator's log lines (info and up), with the time since the run started. */
  readonly log: string[];
}

async function open(url: string, log: string[], lossMs: number): Promise<BlockDevice> {
  const t0 = Date.now();
  const logger = createLogger('info', (level, msg) => log.push(`+${Date.now() - t0} ms ${level} ${msg}`));
  return BlockDevice.open(`${url}/d`, { ...opts, ctrlLossTimeoutMs: lossMs, log: logger });
}

/**
 * The skeleton every fault shares: a target over a fresh disk, a device with reconnect on and
 * WRITERS writers, every block written once, then `fault`. Then by default BLOCKS more
 * acknowledged writes (the path works again), no request failed, the device was never lost,
 * and every acknowledged write is on disk and reads back over a new connection. With `lossMs`
 * (a loss timeout the fault outlasts) instead: the device is lost, requests failed rather than
 * hung, and every acknowledged write is in the file. The writers stop and the device closes
 * whatever happened; a failure carries the initiator's log and the target's stderr.
 */
async function underLoad(name: string, fault: (r: Run) => Promise<void>, lossMs?: number): Promise<Run> {
  const file = disk(`${name}.img`);
  const log: string[] = [];
  const { t, url } = await target(0, file);
  const d = await open(url, log, lossMs ?? SLOW);
  const r: Run = { file, t, url, d, seen: events(d), w: load(d), log };
  try {
    try {
      await waitFor('every block to be written once', () => r.w.acked.size === BLOCKS, SLOW);
      await fault(r);
      if (lossMs === undefined) await r.w.progress(`writes to go on after the ${name}`);
      await r.w.stop();
    } finally {
      // After a failure the device closes before the writers are awaited: that fails the
      // writes held for a reconnect at once instead of at the loss timeout. (close() is idempotent.)
      const writers = r.w.stop();
      await d.close();
      await writers;
    }
  } catch (err) {
    const e = err as Error;
    e.message += `\ndevice events ${JSON.stringify(r.seen)}\ninitiator log:\n${log.slice(-40).join('\n')}\ntarget stderr:\n${r.t.stderr().slice(-4000)}`;
    throw e;
  }
  if (lossMs !== undefined) {
    expect(r.seen).toContain('lost');
    expect(r.w.errors.length).toBeGreaterThan(0);
    for (const e of r.w.errors) expect(e).toMatch(/loss timeout|device lost|device closed/);
    r.w.verify(readFileSync(file));
    return r;
  }
  expect(r.seen).not.toContain('lost');
  // Requests cut by the fault are held and sent again on the new connection: none fails.
  expect(r.w.errors).toEqual([]);
  r.w.verify(readFileSync(file));
  r.w.verify(await readBack(r.url));
  return r;
}

/**
 * The device's next event `what` from the call on (call it before the fault), resolving with
 * when it came (ms after the call); bounded.
 */
function next(r: Run, what: string): Promise<number> {
  const t0 = Date.now();
  const from = r.seen.length;
  return waitFor(`the device to be ${what}`, () => r.seen.indexOf(what, from) >= 0, SLOW).then(() => Date.now() - t0);
}


/**
 * Run `broken`, then `restore` whatever happened: the first error wins (a failed restore after
 * a failed fault must not hide why the fault failed).
 */
async function faultThenRestore(broken: () => Promise<void>, restore: () => Promise<void>): Promise<void> {
  let first: unknown = null;
  try {
    await broken();
  } catch (err) {
    first = err;
  }
  try {
    await restore();
  } catch (err) {
    if (first === null) throw err;
    (first as Error).message += `\n(and restoring failed too: ${(err as Error).message})`;
  }
  if (first !== null) throw first;
}

/** Take the rxe device's netdev down, run `whileDown`, and bring it up again whatever happens. */
function linkDown(whileDown: () => Promise<void>): Promise<void> {
  const netdev = netdevOf(rxeDev());
  return faultThenRestore(
    async () => {
      await run('ip', ['link', 'set', netdev, 'down']);
      await whileDown();
    },
    () => run('ip', ['link', 'set', netdev, 'up']),
  );
}

/**
 * Who holds an RDMA device open, with the kernel stack of each thread not running (root only):
 * evidence for a removal that does not complete.
 */
function uverbsHolders(): string {
  const lines: string[] = [];
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    let fds: string[] = [];
    try {
      fds = readdirSync(`/proc/${pid}/fd`).map((fd) => {
        try {
          return readlinkSync(`/proc/${pid}/fd/${fd}`);
        } catch {
          return '';
        }
      });
    } catch {
      continue;
    }
    const held = fds.filter((f) => f.includes('infiniband') || f.includes('rdma_cm'));
    if (held.length === 0 && !/^rdma$/.test(readOr(`/proc/${pid}/comm`))) continue;
    lines.push(`pid ${pid} ${readOr(`/proc/${pid}/comm`)} ${readOr(`/proc/${pid}/cmdline`).replace(/\0/g, ' ').slice(0, 120)}: ${held.join(', ')}`);
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const stack = readOr(`/proc/${pid}/task/${tid}/stack`).trim();
      if (stack && !/ep_poll|futex_wait|do_epoll_wait/.test(stack)) lines.push(`  task ${tid} (${readOr(`/proc/${pid}/task/${tid}/wchan`)}):\n    ${stack.split('\n').slice(0, 8).join('\n    ')}`);
    }
  }
  return lines.join('\n');
}

function readOr(path: string): string {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return '';
  }
}

/**
 * A spare rxe device on a dummy netdev of its own, present while the device under test is
 * removed. Why: librdmacm (rdma-core 44) refreshes its device list (sync_devices_list, in
 * rdma_get_devices and on resolving to an unknown device) only when libibverbs lists at least
 * one device: with none left it returns ENODEV before looking, so it never notices that the
 * last device went away and never closes its verbs context, and the kernel's removal waits in
 * ib_uverbs_remove_one for as long as the process lives. With another device present it
 * notices, and closes the context once vof destroys its last CM id there (device-removal.ts).
 * The spare stays (idempotent, gone with the VM): rdma_get_devices opened it in every vof
 * process here, and nothing tells librdmacm to let go of a device no CM id of ours is on, so
 * deleting it would wait for those processes (vitest's among them) to exit. docs/RDMA.md and
 * docs/TESTING.md say both.
 */
const SPARE = { netdev: 'vofspare0', dev: 'rxespare0' };
async function spareDevice(): Promise<void> {
  if (!existsSync(`/sys/class/net/${SPARE.netdev}`)) await run('ip', ['link', 'add', SPARE.netdev, 'type', 'dummy']);
  await run('ip', ['link', 'set', SPARE.netdev, 'up']);
  if (!existsSync(`/sys/class/infiniband/${SPARE.dev}`)) await run('rdma', ['link', 'add', SPARE.dev, 'type', 'rxe', 'netdev', SPARE.netdev]);
}

/**
 * Delete the rxe device under test and add it back, a spare device present meanwhile;
 * `whileGone` runs in between. Bounded; a removal the kernel holds says who holds the device.
 */
async function recreateDevice(whileGone: () => Promise<void> = async () => {}): Promise<void> {
  const dev = rxeDev();
  const netdev = netdevOf(dev);
  await spareDevice();
  await faultThenRestore(
    async () => {
      const slow = setTimeout(() => console.warn(`rdma link delete ${dev} still running after 30 s; holders:\n${uverbsHolders()}`), 30_000);
      // This process may hold the device with no CM id on it (its devices were closed before):
      // then no DEVICE_REMOVAL tells vof to make librdmacm let go (docs/RDMA.md), so the test
      // does what device-removal.ts does on that event, for its own process.
      const sync = setInterval(() => nativeBinding().syncDevices(), 500);
      try {
        await run('rdma', ['link', 'delete', dev]);
      } catch (err) {
        (err as Error).message += `\nholders of RDMA devices now:\n${uverbsHolders()}`;
        throw err;
      } finally {
        clearTimeout(slow);
        clearInterval(sync);
      }
      await whileGone();
    },
    () => addBack(dev, netdev),
  );
}

/** Add the rxe device back, once the removed one is gone from the kernel (bounded). */
async function addBack(dev: string, netdev: string): Promise<void> {
  await waitFor(`${dev} to be gone from /sys/class/infiniband`, () => !existsSync(`/sys/class/infiniband/${dev}`), RUN_MS);
  await run('rdma', ['link', 'add', dev, 'type', 'rxe', 'netdev', netdev]);
}

/**
 * The link down/up test runs only with VOF_RDMA_NETDEV_FAULTS=1: on Debian 12's kernels, 6.1 and
 * 6.12 alike, rxe's RDMA CM stops connecting for good once a connect was attempted while the
 * netdev was down. Seen in the VM with rping alone, no vof (scripts/rxe/probe-link-down.sh):
 * on 6.1, RDMA_CM_EVENT_UNREACHABLE -110 while down, then every rping connect after
 * `ip link set dummy0 up` times out, 30 s later, after `ip neigh flush all` and after another
 * down/up, while the GSI QP shows RTS in `rdma res show qp`; on 6.12.118 the same, except that
 * the connect while down times out too and the GSI QP (QP1, which carries the CM's MADs) is left
 * in state ERR. A link going down and up without a connect attempt in between is harmless, and a
 * re-created rxe device connects again. An initiator that reconnects (as it must) attempts
 * exactly such connects, so on these kernels the test cannot pass whatever vof does (its
 * reconnects time out until the loss timeout: run 3 times on 6.12, it failed each time so). The
 * long link test runs by default: it asserts detection and loss, not a reconnect, and re-creates
 * the rxe device afterwards, which gives the later tests a working RDMA CM again.
 */
const linkFaults = process.env['VOF_RDMA_NETDEV_FAULTS'] === '1';
if (!linkFaults) {
  console.warn(
    `\n#### faults-rdma: the link down/up test is SKIPPED: on Debian 12's kernels (6.1 and 6.12; this is ${release()}) rxe never again completes an RDMA CM connect once one was attempted while its netdev was down, so the initiator cannot reconnect whatever vof does (evidence: test/rdma/faults-rdma.test.ts, above linkFaults). VOF_RDMA_NETDEV_FAULTS=1 runs it. ####\n`,
  );
}

describe('RDMA faults under a writing initiator', () => {
  it('target killed with SIGKILL and restarted: the initiator reconnects over RDMA, acknowledged writes are on disk', async () => {
    const r = await underLoad('kill', async (r) => {
      await kill9(r.t);
      ({ t: r.t, url: r.url } = await target(portOf(r.url), r.file));
    });
    expect(r.seen).toContain('disconnected');
    expect(r.seen).toContain('reconnected');
  });

  it('rxe device removed and re-added mid-I/O: nothing crashes, the device reconnects, a new connection works', async () => {
    const r = await underLoad('remove', async (r) => {
      const disconnected = next(r, 'disconnected');
      await recreateDevice(async () => {
        await disconnected;
      });
    });
    expect(r.seen).toContain('reconnected');
    expect(r.t.child.exitCode).toBe(null);
    expect(r.t.stderr()).toMatch(/DEVICE_REMOVAL/);
  });

  it("a queue's QP forced to the error state mid-I/O: the queue closes, its requests are sent again after the reconnect", async () => {
    const r = await underLoad('qperr', async (r) => {
      // The initiator's QP of its first virtqueue (an internal: no public API exposes a QP).
      const vq = r.d.device.queues[0]!;
      const qp = (vq.connection as unknown as { rc: { qp: QueuePair } }).rc.qp;
      const disconnected = next(r, 'disconnected');
      qp.modifyToError();
      await disconnected;
    });
    expect(r.seen).toContain('reconnected');
    expect(r.t.child.exitCode).toBe(null);
  });

  it('link down for longer than the keepalive timeout and the loss timeout: the path is declared failed within the keepalive timeout, held writes fail at the loss timeout, nothing hangs; acknowledged writes on disk', async () => {
    const LOSS = KEEPALIVE_TIMEOUT + 5000;
    let failedAfter = -1;
    let lostAfter = -1;
    const r = await underLoad(
      'link-long',
      async (r) => {
        const disconnected = next(r, 'disconnected');
        const lost = next(r, 'lost');
        await linkDown(async () => {
          failedAfter = await disconnected;
          lostAfter = await lost;
        });
      },
      LOSS,
    );
    // Declared failed by the QP's failed work or by the keepalive, within the keepalive
    // timeout (plus slack for TCG); lost at the loss timeout, not later.
    expect(failedAfter).toBeLessThan(KEEPALIVE_TIMEOUT + 5000);
    expect(lostAfter).toBeLessThan(failedAfter + LOSS + 10_000);
    expect(r.t.child.exitCode).toBe(null);
    // The reconnects attempted while the link was down left Debian 12's rxe unable to connect
    // (see linkFaults): a new rxe device has a working RDMA CM, for the tests after this one,
    // and the target listens on it again.
    await recreateDevice();
    r.w.verify(await readBack(r.url));
  });

  it.skipIf(!linkFaults)('link down and up mid-I/O: I/O completes or the device reconnects; data verified', async () => {
    try {
      const r = await underLoad('link', () => linkDown(() => sleep(3000)));
      expect(r.t.child.exitCode).toBe(null);
    } finally {
      // On Debian 12's kernel rxe connects no more after this (see linkFaults): a new rxe
      // device for the tests after this one.
      await recreateDevice();
    }
  });
});
