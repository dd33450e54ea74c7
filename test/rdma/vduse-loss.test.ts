import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { startTarget, type StartedTarget } from '../../scripts/start-target.mjs';
import { vduseProblem as vduseControlProblem } from '../../src/vduse/vduse-binding.js';
import { needs } from '../helpers/deps.js';
import { startBridge, type Bridge } from '../helpers/nbd-bridge.js';
import { sh, shAsync } from '../helpers/shell.js';
import { kill9 } from '../helpers/target-faults.js';
import { rdmaAddress } from './rdma-env.js';
import { waitFor } from '../helpers/wait-for.js';

/**
 * `vof vduse` with reconnect on, and a target that dies and does not come back: the kernel's
 * requests are held while the disk reconnects, and once the loss timeout (`--ctrl-loss-tmo`)
 * has passed they complete with VIRTIO_BLK_S_IOERR — the kernel sees EIO (a `dd iflag=direct`
 * fails with "Input/output error") instead of waiting for ever (virtio_blk has no request
 * timeout of its own). Then `vof vduse` does what docs/VDUSE.md says of a lost disk: removes the
 * device and exits with 1. A request that was on the wire when the target died and one issued
 * while the disk was reconnecting both go that way.
 * Needs root, Linux with vduse and virtio_vdpa (the soft-RoCE VM on 6.12) and iproute2's vdpa.
 */

function problem(): string | null {
  if (process.platform !== 'linux') return 'VDUSE is Linux only';
  if (process.getuid?.() !== 0) return 'needs root (loads vduse and virtio_vdpa): run it in the soft-RoCE VM (scripts/rxe/rdma-suite.mjs)';
  // virtio_blk too: the VM has no udev to load it when the virtio device appears.
  const m = sh('modprobe', ['-a', 'vduse', 'virtio_vdpa', 'virtio_blk']);
  if (m.status !== 0) return `modprobe vduse virtio_vdpa virtio_blk failed (needs Linux >= 5.15 with CONFIG_VDPA_USER; the soft-RoCE VM boots 6.12): ${m.out}`;
  return vduseControlProblem();
}

const tools = needs('test/rdma/vduse-loss.test.ts (vof vduse: a request held past the loss timeout fails with EIO)', ['iproute2', 'kmod'], problem);

const MiB = 1024 * 1024;
/** The loss timeout: a bound on how long the test waits, not something it measures. */
const LOSS_SEC = 8;


/** /sys/block/vdX/inflight: reads and writes the kernel has on the device now. */
function inFlight(dev: string): number {
  const [reads, writes] = readFileSync(`/sys/block/${dev.slice('/dev/'.length)}/inflight`, 'utf8').trim().split(/\s+/).map(Number);
  return (reads ?? 0) + (writes ?? 0);
}

/** A direct read of one 4 KiB block at block `n` of `dev` into `out`. */
const ddRead = (dev: string, n: number, out: string) => ['dd', [`if=${dev}`, `of=${out}`, 'bs=4096', `skip=${n}`, 'count=1', 'iflag=direct']] as const;

describe.skipIf(!tools.ok).each(['tcp', 'rdma'])(`vof vduse over %s: the target lost for good${tools.skipNote}`, (scheme) => {
  // The guest's own tmpfs (not the 9p-shared host tree).
  const dir = mkdtempSync(`/dev/shm/vof-vduse-loss-${scheme}-`);
  const image = join(dir, 'disk.img');
  let target: StartedTarget | undefined;
  let bridge: Bridge | undefined;

  afterAll(async () => {
    await bridge?.stop();
    await target?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it(`a read on the wire when the target is SIGKILLed and one issued while reconnecting fail with EIO once --ctrl-loss-tmo ${LOSS_SEC} has passed; the device is removed, vof vduse exits 1`, async () => {
    const block = Buffer.alloc(4096);
    for (let i = 0; i < block.length; i++) block[i] = (i * 13 + 5) & 0xff;
    const content = Buffer.alloc(16 * MiB);
    for (let off = 0; off < content.length; off += block.length) block.copy(content, off);
    writeFileSync(image, content);
    target = await startTarget(['--listen', `${scheme}://${rdmaAddress()}:0`, '--blk', `vd-loss=${image}`], { lines: 1, timeoutMs: 180000 });
    const name = `vd-loss-${scheme}`;
    bridge = await startBridge([`${target.urls[0]}/vd-loss`, '--name', name, '--ivqn', `vduse-loss-${scheme}`, '--log', 'debug', '--reconnect-delay', '0.5', '--ctrl-loss-tmo', String(LOSS_SEC)], 300000, 'vduse');
    const b = bridge;
    const dev = b.uri;
    expect(dev, b.stderr()).toMatch(/^\/dev\/vd[a-z]+$/);
    await waitFor(`${dev}`, () => existsSync(dev), 60000);
    const exited = new Promise<number | null>((resolve) => {
      if (b.child.exitCode !== null) resolve(b.child.exitCode);
      else b.child.once('exit', (code) => resolve(code));
    });

    // The device works before the loss: what it reads is the file's.
    const [cmd, args] = ddRead(dev, 3, join(dir, 'before.bin'));
    const ok = sh(cmd, [...args]);
    expect(ok.status, ok.out).toBe(0);
    expect(readFileSync(join(dir, 'before.bin')).equals(block)).toBe(true);

    // A read on the wire: the target is stopped first, so the request it was sent stays
    // unanswered, then killed (its connection closes with the request in it).
    target.child.kill('SIGSTOP');
    const onWire = shAsync(...ddRead(dev, 5, join(dir, 'on-wire.bin')), 300000);
    await waitFor('the read to be in flight on the device', () => inFlight(dev) > 0, 120000);
    await kill9(target);
    target = undefined;
    await waitFor('vof vduse to see the connection break', () => /disconnected/.test(b.stderr()), 120000);

    // A read issued while the disk is reconnecting (to a port nobody listens on any more). Both
    // are held: the kernel has them in flight together while the disk is not yet lost.
    const lossLine = /not reconnected within the loss timeout/;
    const whileReconnecting = shAsync(...ddRead(dev, 7, join(dir, 'reconnecting.bin')), 300000);
    await waitFor('both reads in flight (or the disk lost)', () => inFlight(dev) >= 2 || lossLine.test(b.stderr()), 120000);
    expect(b.stderr(), `the loss timeout of ${LOSS_SEC} s passed before the second read was issued (a very slow machine)`).not.toMatch(lossLine);
    expect(inFlight(dev)).toBe(2);

    // Past the loss timeout both complete to the kernel with an I/O error.
    for (const [what, pending] of [['on the wire', onWire], ['issued while reconnecting', whileReconnecting]] as const) {
      const r = await pending;
      expect(r.status, `the read ${what}: ${r.out}\n${b.stderr()}`).not.toBe(0);
      expect(r.out, `the read ${what}`).toMatch(/Input\/output error/);
    }
    expect(b.stderr()).toMatch(lossLine);
    expect(b.stderr()).toMatch(/reconnect attempt/);

    // A lost disk: vof vduse removes the device and exits with 1 (docs/VDUSE.md).
    expect(await Promise.race([exited, new Promise<string>((r) => setTimeout(() => r('still running 120 s after the loss'), 120000))])).toBe(1);
    expect(b.stderr()).toMatch(/vof disk .* lost: /);
    expect(b.stderr()).toMatch(/device lost: removing the device/);
    expect(existsSync(`/sys/bus/vdpa/devices/${name}`)).toBe(false);
    expect(existsSync(`/dev/vduse/${name}`)).toBe(false);
    await waitFor(`${dev} to go`, () => !existsSync(dev), 60000);
    bridge = undefined;
  }, 600000);
});
