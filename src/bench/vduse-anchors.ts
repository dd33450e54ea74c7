import { spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fioOnKernelDevice, type BlockSystem } from './fio.js';
import { SystemUnavailable, type AnchorContext } from './stream-anchors.js';
import { run, startDaemon, waitFor } from './tools.js';

/**
 * The VDUSE systems of `vof bench --anchors` in the soft-RoCE VM: the kernel's own virtio-blk
 * driver on a VDUSE device, driven by fio with libaio and O_DIRECT on /dev/vdX.
 * - vof-vduse, vof-vduse-rdma: `vof vduse URL` (docs/VDUSE.md) against the bench's vof target,
 *   over TCP and over RDMA.
 * - qsd-vduse: qemu-storage-daemon's own `vduse-blk` export of the bench image: a VDUSE device
 *   served by QEMU's C code straight from the file, the ceiling of the VDUSE path (no network).
 */

const VDPA = existsSync('/usr/sbin/vdpa') ? '/usr/sbin/vdpa' : 'vdpa';
const SYS_VDPA = '/sys/bus/vdpa/devices';

/** Loads vduse, virtio_vdpa and virtio_blk (the VM has no udev to load the last one). */
async function vduseModules(): Promise<void> {
  try {
    await run('modprobe', ['-a', 'vduse', 'virtio_vdpa', 'virtio_blk']);
  } catch (err) {
    throw new SystemUnavailable(`modprobe vduse virtio_vdpa virtio_blk failed (needs Linux >= 5.15 with CONFIG_VDPA_USER, and root): ${(err as Error).message.split('\n')[0]}`);
  }
  if (!existsSync('/dev/vduse/control')) throw new SystemUnavailable('/dev/vduse/control is missing after modprobe vduse');
}

/** The block device virtio_vdpa made for vdpa device `name` (sys/…/NAME/virtioN/block/vdX), or null. */
function vdpaBlockDevice(name: string): string | null {
  const sys = join(SYS_VDPA, name);
  try {
    for (const entry of readdirSync(sys)) {
      if (!/^virtio\d+$/.test(entry)) continue;
      const block = readdirSync(join(sys, entry, 'block'))[0];
      if (block) return `/dev/${block}`;
    }
  } catch {
    // not there (yet)
  }
  return null;
}

/** A unique device name per system and bench process (VDUSE names are global on the machine). */
const deviceName = (system: string) => `${system}-${process.pid}`;

/**
 * fio on `/dev/vdX` of `vof vduse URL`: it prints exactly one line when ready (the device path)
 * and on SIGTERM removes the vdpa device after its requests finish and exits 0. Its process is
 * the initiator side with fio; the vof target's is the target side.
 */
export async function openVofVduse(ctx: AnchorContext, system: string, cli: string, deviceUrl: string, queues: number, targetPid: number | null): Promise<BlockSystem> {
  await vduseModules();
  const name = deviceName(system);
  const child = spawn(process.execPath, [cli, 'vduse', deviceUrl, '--name', name, '--queues', String(queues), '--log', 'warn'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    // vof vduse waits for in-flight requests at most 25 s before it gives up on them.
    const late = setTimeout(() => child.kill('SIGKILL'), 60_000);
    const code = await exited;
    clearTimeout(late);
    await waitFor(`vdpa device ${name} to go after vof vduse exited with ${code}`, () => !existsSync(join(SYS_VDPA, name)), 30_000);
  };
  return fioOnKernelDevice(
    ctx,
    system,
    async () => {
      // TCG: connecting, creating the device and the kernel's probe take tens of seconds.
      const dev = await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`vof vduse printed no device within 180 s: ${stderr.trim()}`)), 180_000);
        createInterface({ input: child.stdout }).once('line', (line) => {
          clearTimeout(timer);
          resolve(line.trim());
        });
        void exited.then((code) => {
          clearTimeout(timer);
          const why = /unknown command/.test(stderr) ? new SystemUnavailable('this vof has no `vduse` command') : new Error(`vof vduse exited with ${code}: ${stderr.trim()}`);
          reject(why);
        });
      });
      if (!/^\/dev\/vd[a-z]+$/.test(dev)) throw new Error(`vof vduse printed "${dev}", not a /dev/vdX block device: ${stderr.trim()}`);
      return dev;
    },
    stop,
    (dev) => ({
      target: targetPid === null ? null : { pid: targetPid },
      initiatorPids: [child.pid!],
      note: `${dev}: the kernel's virtio-blk on vof vduse over ${deviceUrl.split(':')[0]}; initiator CPU = fio + the vof vduse process (the kernel's virtio-blk/VDUSE work in fio's system time only where it runs in fio's context)`,
    }),
  );
}

/** qemu-storage-daemon's version line ("qemu-storage-daemon version 7.2.22 (…)"), or why there is none. */
async function qsdVersion(): Promise<string> {
  try {
    return (await run('qemu-storage-daemon', ['--version'])).split('\n')[0]!.trim();
  } catch (err) {
    throw new SystemUnavailable(
      `qemu-storage-daemon is not installed (Debian package qemu-system-common, in the bench-rdma-anchors group of scripts/debian-deps.json): ${(err as Error).message.split('\n')[0]}`,
    );
  }
}

/**
 * qemu-storage-daemon exporting `image` (its `file` driver, page cache like vof's file backend
 * and nvmet's buffered_io) as a VDUSE virtio-blk device with `queues` virtqueues; the bench adds
 * it to the vdpa bus itself (`vdpa dev add … mgmtdev vduse`, as QEMU's docs say) and fio drives
 * its /dev/vdX. qemu-storage-daemon is the target side. A build without the vduse-blk export
 * is reported as unavailable, with its version, never left out silently.
 */
export async function openQsdVduse(ctx: AnchorContext, image: string, queues: number): Promise<BlockSystem> {
  const version = await qsdVersion();
  await vduseModules();
  const system = 'qsd-vduse';
  const name = deviceName(system);
  const qsd = startDaemon('qemu-storage-daemon', [
    '--blockdev', `driver=file,node-name=file0,filename=${image}`,
    '--export', `type=vduse-blk,id=${system},node-name=file0,name=${name},writable=on,num-queues=${queues}`,
  ]);
  let added = false;
  const stop = async () => {
    // The vdpa device goes first: VDUSE refuses to destroy a device still on the bus.
    if (added) await run(VDPA, ['dev', 'del', name]).catch(() => undefined);
    await qsd.stop();
    await waitFor(`/dev/vduse/${name} to go after qemu-storage-daemon exited`, () => !existsSync(`/dev/vduse/${name}`), 30_000);
  };
  return fioOnKernelDevice(
    ctx,
    system,
    async () => {
      await waitFor(`qemu-storage-daemon's VDUSE device /dev/vduse/${name}`, () => {
        if (qsd.child.exitCode !== null) {
          const err = qsd.stderr().trim();
          if (/vduse-blk|Invalid parameter|does not accept value/.test(err) && !/failed to create vduse device/.test(err)) {
            throw new SystemUnavailable(`${version} has no vduse-blk export (QEMU >= 7.1 built with --enable-vduse-blk-export): ${err}`);
          }
          throw new Error(`qemu-storage-daemon exited with ${qsd.child.exitCode}: ${err}`);
        }
        return existsSync(`/dev/vduse/${name}`);
      }, 120_000);
      await run(VDPA, ['dev', 'add', 'name', name, 'mgmtdev', 'vduse']);
      added = true;
      await waitFor(`the block device of vdpa device ${name}`, () => vdpaBlockDevice(name) !== null, 120_000);
      return vdpaBlockDevice(name)!;
    },
    stop,
    (dev) => ({
      target: { pid: qsd.pid },
      note: `${dev}: ${version}, --export vduse-blk of the image (file driver, page cache, ${queues} queues), no network: the ceiling of the VDUSE path; target CPU = qemu-storage-daemon`,
    }),
  );
}
