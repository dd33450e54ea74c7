import { tmpdir } from 'node:os';
import { stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { BlockDevice } from '../devices/blk/block-device.js';
import { NbdServer, isLoopbackHost, type NbdListenAddress } from '../nbd/nbd-server.js';
import { NBD_DEFAULT_PORT } from '../nbd/nbd-protocol.js';
import { parseDeviceUrl, UrlError } from '../url.js';
import { createLogger } from '../util/log.js';
import { CliError, parseIntOption } from './cli-error.js';
import { TLS_CLIENT_OPTIONS, clientTlsSettings } from './tls-options.js';
import { RECONNECT_OPTIONS, reconnectSettings } from './reconnect-options.js';
import { parseCommand, parseLogLevel, usage, type CommandSpec } from './options.js';
import { IVQN_OPTION, URL_HELP } from './client-options.js';

export const NBD_COMMAND = {
  name: 'nbd',
  args: 'URL/TVQN',
  summary: 'Serve a remote disk over NBD (qemu, qemu-img, nbdcopy, fio, nbd-client); prints the NBD URI when ready.',
  details:
    `${URL_HELP}\n` +
    'NBD clients are not authenticated: the socket is 0600, --listen only on loopback unless\n' +
    '--allow-unauthenticated; at most 64 connections, 10 s to finish the handshake.',
  options: {
    socket: { type: 'string', arg: 'PATH', desc: 'Unix socket to serve on (default: $TMPDIR/vof-nbd-PID.sock)' },
    'socket-mode': { type: 'string', arg: 'OCTAL', desc: 'mode of the socket (default 600)' },
    listen: { type: 'string', arg: 'HOST:PORT', desc: 'serve on TCP instead (port default 10809; loopback only unless --allow-unauthenticated)' },
    'allow-unauthenticated': { type: 'boolean', desc: 'allow --listen on a non-loopback address' },
    name: { type: 'string', arg: 'EXPORT', desc: 'the NBD export name (default: the TVQN)' },
    ...IVQN_OPTION,
    'read-only': { type: 'boolean', desc: 'refuse NBD writes' },
    'max-requests': { type: 'string', arg: 'N', desc: 'requests in flight per NBD connection at most' },
    'max-connections': { type: 'string', arg: 'N', desc: 'NBD connections at most (default 64)' },
    log: { type: 'string', arg: 'LEVEL', desc: 'debug, info (default), warn, error or silent' },
    ...TLS_CLIENT_OPTIONS,
    ...RECONNECT_OPTIONS,
  },
} as const satisfies CommandSpec;

/** HOST[:PORT] or [IPv6][:PORT]; the port defaults to NBD's 10809, 0 picks a free one. */
function parseHostPort(spec: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+))(?::(\d+))?$/.exec(spec);
  if (!m) throw new CliError(`--listen expects HOST[:PORT], got "${spec}"`);
  const port = m[3] === undefined ? NBD_DEFAULT_PORT : Number(m[3]);
  if (port > 65535) throw new CliError(`bad port in --listen "${spec}"`);
  return { host: m[1] ?? m[2]!, port };
}

export async function runNbd(argv: string[]): Promise<number> {
  const parsed = parseCommand(NBD_COMMAND, argv);
  if (!parsed) return 0;
  const { values, positionals } = parsed;
  if (positionals.length !== 1) throw usage(NBD_COMMAND, positionals.length ? `one URL, got ${positionals.length} arguments` : 'which device? (a URL)');
  const url = positionals[0]!;
  let tvqn: string;
  try {
    tvqn = parseDeviceUrl(url).tvqn;
  } catch (err) {
    if (err instanceof UrlError) throw new CliError(err.message);
    throw err;
  }
  if (values.socket !== undefined && values.listen !== undefined) throw new CliError('vof nbd takes --socket PATH or --listen HOST:PORT, not both');
  const address: NbdListenAddress =
    values.listen !== undefined ? parseHostPort(values.listen) : { socket: values.socket ?? join(tmpdir(), `vof-nbd-${process.pid}.sock`) };
  // NBD itself has no authentication here: anyone who reaches the port gets the disk. Loopback
  // (or a Unix socket, 0600 by default) is the safe default; anything wider is the user's call.
  if ('host' in address && !isLoopbackHost(address.host) && !values['allow-unauthenticated']) {
    throw new CliError(
      `--listen ${values.listen}: NBD clients are not authenticated (vof nbd has no NBD TLS), so anyone who reaches this address gets the disk; ` +
        'listen on 127.0.0.1 or a --socket, or pass --allow-unauthenticated if the network is trusted',
    );
  }
  if ('socket' in address) {
    // listen() on a path whose directory is missing fails with EACCES: say what is wrong, and
    // before connecting to the disk.
    const dir = dirname(address.socket);
    const st = await stat(dir).catch(() => null);
    if (!st?.isDirectory()) throw new CliError(`cannot listen on ${address.socket}: ${dir} is not an existing directory`, 1);
  }
  let socketMode: number | undefined;
  if (values['socket-mode'] !== undefined) {
    if (!/^0?[0-7]{3}$/.test(values['socket-mode'])) throw new CliError(`--socket-mode expects an octal mode such as 600 or 660, got "${values['socket-mode']}"`);
    socketMode = parseInt(values['socket-mode'], 8);
  }
  const maxRequests = parseIntOption(values['max-requests'], 'max-requests', 1, 4096);
  const maxConnections = parseIntOption(values['max-connections'], 'max-connections', 1, 4096);
  const log = createLogger(parseLogLevel(values.log, 'info'));

  // Installed before anything is announced, so a signal at any point after shuts down cleanly.
  let exitCode = 0;
  let stopRequested = false;
  let stop: (why: string) => void = () => {};
  const stopped = new Promise<void>((resolve) => {
    stop = (why) => {
      log.info(`${why}: shutting down`);
      stopRequested = true;
      resolve();
    };
  });
  process.once('SIGINT', () => stop('SIGINT'));
  process.once('SIGTERM', () => stop('SIGTERM'));

  const tls = clientTlsSettings(values);
  const reconnect = reconnectSettings(values);
  const disk = await BlockDevice.open(url, { ...(values.ivqn && { ivqn: values.ivqn }), ...(tls && { tls }), ...reconnect, log });
  // NBD clients stay connected while the disk reconnects: their requests wait, then complete.
  disk.device.on('disconnected', (err) => log.warn(`vof disk ${url} disconnected (${err.message}); NBD requests wait while it reconnects`));
  disk.device.on('reconnected', (n) => log.info(`vof disk ${url} reconnected after ${n} attempt(s); state ${disk.device.state}`));
  disk.device.on('lost', (err) => {
    log.error(`vof disk ${url} lost: ${err.message}`);
    exitCode = 1;
    stop('device lost');
  });
  const server = new NbdServer(disk, {
    name: values.name ?? tvqn,
    // What NBD clients are shown (NBD_OPT_LIST, NBD_INFO_DESCRIPTION): never the upstream URL.
    description: 'vof disk (Virtio-oF)',
    readOnly: values['read-only'] ?? false,
    ...(maxRequests !== undefined && { maxRequestsPerConnection: maxRequests }),
    ...(maxConnections !== undefined && { maxConnections }),
    ...(socketMode !== undefined && { socketMode }),
    log,
  });
  try {
    if (stopRequested) return exitCode; // a signal came while connecting: never announce
    let uri: string;
    try {
      uri = await server.listen(address);
    } catch (err) {
      throw new CliError(`cannot listen on ${'socket' in address ? address.socket : `${address.host}:${address.port}`}: ${(err as Error).message}`, 1);
    }
    log.info(
      `serving ${disk.capacity} bytes of ${url} (${server.export.readOnly ? 'read-only' : 'read-write'}, ${disk.numQueues} virtqueue(s)) as NBD export "${server.export.name}"`,
    );
    process.stdout.write(`${uri}\n`);
    await stopped;
  } finally {
    await server.close();
    await disk.close().catch((err: Error) => log.warn(`closing ${url}: ${err.message}`));
  }
  return exitCode;
}
