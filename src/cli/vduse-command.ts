import { BlockDevice } from '../initiator/blk/block-device.js';
import { parseDeviceUrl, UrlError } from '../transport/url.js';
import { createLogger } from '../util/log.js';
import { vduseProblem } from '../vduse/vduse-binding.js';
import { VduseBlockDevice, vduseRemoteFeatures, type VduseBind } from '../vduse/vduse-device.js';
import type { KeyedTransferStats } from '../transport/pinned-memory.js';
import { CliError, parseIntOption } from './cli-error.js';
import { TLS_CLIENT_OPTIONS, clientTlsSettings } from './tls-options.js';
import { AUTH_CLIENT_OPTIONS, clientAuthSettings } from './auth-options.js';
import { RECONNECT_OPTIONS, reconnectSettings } from './reconnect-options.js';
import { parseCommand, parseLogLevel, usage, type CommandSpec } from './options.js';
import { IVQN_OPTION, URL_HELP } from './client-options.js';

export const VDUSE_COMMAND = {
  name: 'vduse',
  args: 'URL/TVQN',
  summary: "Give the kernel a virtio-blk device (/dev/vdX) whose requests travel to a remote disk (VDUSE); prints its path when ready.",
  details:
    `${URL_HELP}\n` +
    'Needs root and Linux >= 5.15 with the vduse module, and virtio_vdpa (the default, /dev/vdX) or\n' +
    'vhost_vdpa (--bind vhost: /dev/vhost-vdpa-N, for a VM) loaded. SIGINT/SIGTERM remove the device\n' +
    'after the requests in flight (`vdpa dev del`). Over rdma:// the request bytes move with no copy\n' +
    "(VDUSE's bounce memory registered once; Linux >= 6.3); the exit log line says how they moved.\n" +
    'See docs/VDUSE.md.',
  options: {
    name: { type: 'string', arg: 'NAME', desc: 'the VDUSE/vdpa device name (default vof-PID)' },
    queues: { type: 'string', arg: 'N', desc: 'virtqueues at most (default: all the remote device has)' },
    'queue-size': { type: 'string', arg: 'N', desc: 'ring size the kernel may use at most (default: the remote queue size)' },
    bind: { type: 'string', arg: 'virtio|vhost', desc: 'the vdpa driver: virtio_vdpa (default, /dev/vdX) or vhost_vdpa' },
    ...IVQN_OPTION,
    log: { type: 'string', arg: 'LEVEL', desc: 'debug, info (default), warn, error or silent' },
    ...TLS_CLIENT_OPTIONS,
    ...AUTH_CLIENT_OPTIONS,
    ...RECONNECT_OPTIONS,
  },
} as const satisfies CommandSpec;

export async function runVduse(argv: string[]): Promise<number> {
  const parsed = parseCommand(VDUSE_COMMAND, argv);
  if (!parsed) return 0;
  const { values, positionals } = parsed;
  if (positionals.length !== 1) throw usage(VDUSE_COMMAND, positionals.length ? `one URL, got ${positionals.length} arguments` : 'which device? (a URL)');
  const url = positionals[0]!;
  try {
    parseDeviceUrl(url);
  } catch (err) {
    if (err instanceof UrlError) throw new CliError(err.message);
    throw err;
  }
  const name = values.name ?? `vof-${process.pid}`;
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(name)) throw new CliError(`--name expects 1..64 letters, digits, '.', '_' or '-' (not first), got "${name}"`);
  const bind = (values.bind ?? 'virtio') as VduseBind;
  if (bind !== 'virtio' && bind !== 'vhost') throw new CliError(`--bind expects virtio or vhost, got "${values.bind}"`);
  const maxQueues = parseIntOption(values.queues, 'queues', 1, 1024);
  const queueSize = parseIntOption(values['queue-size'], 'queue-size', 1, 32768);
  const log = createLogger(parseLogLevel(values.log, 'info'));
  // Before connecting: a host without VDUSE is told what to load.
  const problem = vduseProblem();
  if (problem) throw new CliError(problem, 1);

  let exitCode = 0;
  let stopRequested = false;
  let stop: (why: string) => void = () => {};
  const stopped = new Promise<void>((resolve) => {
    stop = (why) => {
      log.info(`${why}: removing the device`);
      stopRequested = true;
      resolve();
    };
  });
  process.once('SIGINT', () => stop('SIGINT'));
  process.once('SIGTERM', () => stop('SIGTERM'));

  const tls = clientTlsSettings(values);
  const disk = await BlockDevice.open(url, {
    ...(values.ivqn && { ivqn: values.ivqn }),
    ...(tls && { tls }),
    ...clientAuthSettings(values),
    ...reconnectSettings(values),
    ...(maxQueues !== undefined && { maxQueues }),
    negotiateFeatures: vduseRemoteFeatures,
    log,
  });
  // The kernel's requests wait while the disk reconnects, then complete.
  disk.device.on('disconnected', (err) => log.warn(`vof disk ${url} disconnected (${err.message}); requests wait while it reconnects`));
  disk.device.on('reconnected', (n) => log.info(`vof disk ${url} reconnected after ${n} attempt(s)`));
  disk.device.on('lost', (err) => {
    log.error(`vof disk ${url} lost: ${err.message}`);
    exitCode = 1;
    stop('device lost');
  });
  let device: VduseBlockDevice | null = null;
  try {
    if (stopRequested) return exitCode;
    try {
      device = await VduseBlockDevice.create(disk, { name, bind, log, ...(queueSize !== undefined && { queueSize }) });
    } catch (err) {
      throw new CliError(`cannot create the VDUSE device ${name}: ${(err as Error).message}`, 1);
    }
    log.info(
      `serving ${disk.capacity} bytes of ${url} (${disk.readOnly ? 'read-only' : 'read-write'}, ${disk.numQueues} virtqueue(s) of ${device.queueSize}) as VDUSE device ${name}` +
        ` on ${device.devicePath ?? `/sys/bus/vdpa/devices/${name}`}`,
    );
    process.stdout.write(`${device.devicePath ?? name}\n`);
    await stopped;
  } finally {
    await device?.close().catch((err: Error) => log.warn(`removing ${name}: ${err.message}`));
    if (device && disk.device.queues[0]?.connection.capabilities.keyed) log.info(`VDUSE device ${name}: ${formatTransfers(device.transfers)}`);
    await disk.close().catch((err: Error) => log.warn(`closing ${url}: ${err.message}`));
  }
  return exitCode;
}

/**
 * The keyed transfer counters as logged on exit (rdma://): whether the bytes went in place (no
 * copy) or were copied (bounced, or inline in the command's SEND).
 */
export function formatTransfers(t: KeyedTransferStats): string {
  return `keyed transfers: ${t.inPlaceBytes} bytes in place (no copy), ${t.bouncedBytes} bytes bounced (copied; ${t.bouncedCommands} commands), ${t.inlineBytes} bytes inline (${t.inlineInPlaceBytes} of them read in place)`;
}
