import { existsSync, readFileSync } from 'node:fs';
import { parseNbdUri } from '../nbd/nbd-uri.js';
import { fioOnKernelDevice, type BlockSystem } from './fio.js';
import { startVofNbdBridge, SystemUnavailable, type AnchorContext, type VofNbdBridge } from './stream-anchors.js';
import { run, waitFor } from './tools.js';

/**
 * vof-nbd-kernel: the kernel's own NBD client on the `vof nbd` bridge, fio (libaio, O_DIRECT)
 * on its /dev/nbdN. vof-nbd drives the same bridge with fio's nbd engine (user space); this is
 * the path a host uses to mount a vof disk through NBD, beside vof-vduse (the kernel's
 * virtio-blk on the same target). Root and the nbd module: the soft-RoCE VM, or a host with RDMA.
 */

// The VM's PATH may lack /usr/sbin (as for vdpa in vduse-anchors.ts).
const NBD_CLIENT = existsSync('/usr/sbin/nbd-client') ? '/usr/sbin/nbd-client' : 'nbd-client';
/** nbd's default nbds_max is 16; a machine with more has them in use by someone else. */
const NBD_DEVICES = 16;
/** The kernel's per-request timeout: far above a TCG run's worst request, so the bench's own stall check decides. */
const NBD_TIMEOUT_SEC = 300;
/** 4 KiB: the page size; every bench workload is a multiple of it and aligned to it. */
const NBD_BLOCK_SIZE = 4096;

/** `/sys/block/nbdN/size` in bytes (the kernel counts 512-byte sectors), or 0 if unreadable. */
function nbdBytes(index: number): number {
  try {
    return Number(readFileSync(`/sys/block/nbd${index}/size`, 'utf8').trim()) * 512;
  } catch {
    return 0;
  }
}

/** The first /dev/nbdN nobody has connected (no size, no client pid), or why there is none. */
function freeNbdDevice(): number {
  for (let i = 0; i < NBD_DEVICES; i++) {
    if (!existsSync(`/sys/block/nbd${i}`)) break;
    if (nbdBytes(i) === 0 && !existsSync(`/sys/block/nbd${i}/pid`)) return i;
  }
  throw new SystemUnavailable(`no free /dev/nbdN among the first ${NBD_DEVICES} (all connected, or the nbd module made none)`);
}

async function loadNbd(): Promise<void> {
  try {
    await run('modprobe', ['nbd']);
  } catch (err) {
    throw new SystemUnavailable(`modprobe nbd failed (needs root and the kernel's nbd module): ${(err as Error).message.split('\n')[0]}`);
  }
}

/**
 * `vof nbd URL --socket PATH` against the bench's target, attached with `nbd-client -unix PATH
 * /dev/nbdN -connections Q` (one NBD connection per block-layer hardware queue, as vof-vduse has
 * Q virtqueues). Teardown, whatever happened before: `nbd-client -d`, the device's size back to
 * 0 (bounded), then SIGTERM to the bridge. The bridge's process is on the initiator side with
 * fio; the vof target's is the target side.
 */
export async function openVofNbdKernel(ctx: AnchorContext, cli: string, deviceUrl: string, socketPath: string, queues: number, targetPid: number | null): Promise<BlockSystem> {
  const system = 'vof-nbd-kernel';
  await loadNbd();
  let bridge: VofNbdBridge | null = null;
  let index: number | null = null;
  const stop = async () => {
    if (index !== null) {
      const dev = `/dev/nbd${index}`;
      const i = index;
      // Sent even when the attach failed half-way: on a device nobody connected it does nothing.
      await run(NBD_CLIENT, ['-d', dev], { timeoutMs: 60_000 }).catch(() => undefined);
      await waitFor(`${dev} to disconnect after nbd-client -d`, () => nbdBytes(i) === 0, 30_000).catch(() => undefined);
    }
    await bridge?.stop();
  };
  return fioOnKernelDevice(
    ctx,
    system,
    async () => {
      bridge = await startVofNbdBridge(cli, deviceUrl, socketPath);
      const { address, exportName } = parseNbdUri(bridge.uri);
      if (address.kind !== 'unix') throw new Error(`vof nbd printed ${bridge.uri}, not a Unix socket`);
      index = freeNbdDevice();
      const dev = `/dev/nbd${index}`;
      try {
        await run(NBD_CLIENT, ['-unix', address.path, dev, '-name', exportName, '-block-size', String(NBD_BLOCK_SIZE), '-timeout', String(NBD_TIMEOUT_SEC), '-connections', String(queues)], { timeoutMs: 120_000 });
      } catch (err) {
        if ((err as Error).message.includes('ENOENT')) throw new SystemUnavailable(`nbd-client is not installed (Debian package nbd-client, in the bench-rdma-anchors group of scripts/debian-deps.json)`);
        throw err;
      }
      const i = index;
      await waitFor(`${dev} to show the disk's ${ctx.sizeBytes} bytes`, () => nbdBytes(i) === ctx.sizeBytes, 60_000);
      return dev;
    },
    stop,
    (dev) => ({
      target: targetPid === null ? null : { pid: targetPid },
      initiatorPids: [bridge!.pid],
      note:
        `${dev}: the kernel's nbd client (nbd-client -connections ${queues}, ${NBD_BLOCK_SIZE}-byte blocks) on vof nbd over ${deviceUrl.split(':')[0]}; ` +
        "initiator CPU = fio + the vof nbd bridge (the kernel's NBD socket work outside fio's context is not counted)",
    }),
  );
}
