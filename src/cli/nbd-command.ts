import { tmpdir } from 'node:os';
import { stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { BlockDevice } from '../initiator/blk/block-device.js';
import { NbdServer, isLoopbackHost, type NbdListenAddress } from '../nbd/nbd-server.js';
import { NBD_DEFAULT_PORT } from '../nbd/nbd-protocol.js';
import { nbdTlsAuthenticatesClients, type NbdTlsSettings } from '../nbd/nbd-tls.js';
import { parseSize } from '../bench/workloads.js';
import { parseDeviceUrl, UrlError } from '../transport/url.js';
import { createLogger } from '../util/log.js';
import { CliError, parseIntOption } from './cli-error.js';
import { TLS_CLIENT_OPTIONS, clientTlsSettings, serverTlsSettings } from './tls-options.js';
import { AUTH_CLIENT_OPTIONS, clientAuthSettings } from './auth-options.js';
import { RECONNECT_OPTIONS, reconnectSettings } from './reconnect-options.js';
import { parseCommand, parseLogLevel, usage, type CommandSpec } from './options.js';
import { IVQN_OPTION, URL_HELP } from './client-options.js';

export const NBD_COMMAND = {
  name: 'nbd',
  args: 'URL/TVQN',
  summary: 'Serve a remote disk over NBD (qemu, qemu-img, nbdcopy, fio, nbd-client); prints the NBD URI when ready.',
  details:
    `${URL_HELP}\n` +
    'NBD clients are authenticated only by NBD TLS (STARTTLS, the --nbd-tls-* options; required once\n' +
    'configured). Without it the socket is 0600 and --listen stays on loopback unless\n' +
    '--allow-unauthenticated; at most 64 connections, 10 s to finish the handshake (TLS included).\n' +
    'The --tls-* options are the vof side\'s (a tls:// URL).',
  options: {
    socket: { type: 'string', arg: 'PATH', desc: 'Unix socket to serve on (default: $TMPDIR/vof-nbd-PID.sock)' },
    'socket-mode': { type: 'string', arg: 'OCTAL', desc: 'mode of the socket (default 600)' },
    listen: { type: 'string', arg: 'HOST:PORT', desc: 'serve on TCP instead (port default 10809; loopback only unless --allow-unauthenticated)' },
    'allow-unauthenticated': { type: 'boolean', desc: 'allow --listen on a non-loopback address without TLS client authentication' },
    name: { type: 'string', arg: 'EXPORT', desc: 'the NBD export name (default: the TVQN)' },
    ...IVQN_OPTION,
    'read-only': { type: 'boolean', desc: 'refuse NBD writes' },
    'max-requests': { type: 'string', arg: 'N', desc: 'requests in flight per NBD connection at most' },
    'max-connections': { type: 'string', arg: 'N', desc: 'NBD connections at most (default 64)' },
    'memory-budget': { type: 'string', arg: 'BYTES', desc: 'read data and write payload held by all connections together (default 64M)' },
    'send-timeout': { type: 'string', arg: 'MS', desc: 'disconnect a client whose replies make no progress this long (default 10000, 0: never)' },
    'nbd-tls': { type: 'string', arg: 'require|on', desc: 'NBD TLS: required (default once credentials are given) or offered' },
    'nbd-tls-cert': { type: 'string', arg: 'FILE', desc: "NBD TLS: the bridge's certificate (PEM)" },
    'nbd-tls-key': { type: 'string', arg: 'FILE', desc: "NBD TLS: the certificate's key (PEM)" },
    'nbd-tls-ca': { type: 'string', arg: 'FILE', desc: 'NBD TLS: require client certificates signed by this CA' },
    'nbd-tls-psk': { type: 'string', arg: 'FILE', desc: 'NBD TLS: pre-shared keys (IDENTITY:HEXKEY lines)' },
    log: { type: 'string', arg: 'LEVEL', desc: 'debug, info (default), warn, error or silent' },
    ...TLS_CLIENT_OPTIONS,
    ...AUTH_CLIENT_OPTIONS,
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

/**
 * The NBD side's TLS (NBD_OPT_STARTTLS) from --nbd-tls-*. The plain --tls-* flags are the vof
 * side's (the upstream tls:// connection), as in every other vof command.
 */
function nbdTlsSettings(v: {
  'nbd-tls'?: string | undefined;
  'nbd-tls-cert'?: string | undefined;
  'nbd-tls-key'?: string | undefined;
  'nbd-tls-ca'?: string | undefined;
  'nbd-tls-psk'?: string | undefined;
}): NbdTlsSettings | undefined {
  const mode = v['nbd-tls'];
  if (mode !== undefined && mode !== 'require' && mode !== 'on') throw new CliError(`--nbd-tls expects require or on, got "${mode}"`);
  const files = serverTlsSettings({ cert: v['nbd-tls-cert'], key: v['nbd-tls-key'], ca: v['nbd-tls-ca'], pskFile: v['nbd-tls-psk'] }, 'nbd-tls', 'the bridge');
  if (!files) {
    if (mode !== undefined) throw new CliError(`--nbd-tls ${mode} needs credentials: --nbd-tls-cert FILE --nbd-tls-key FILE and/or --nbd-tls-psk FILE`);
    return undefined;
  }
  return { ...files, mode: (mode ?? 'require') as 'require' | 'on' };
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
  const nbdTls = nbdTlsSettings(values);
  // Without TLS that authenticates clients, anyone who reaches the port gets the disk. Loopback
  // (or a Unix socket, 0600 by default) is the safe default; anything wider needs required TLS
  // with client certificates or PSKs, or is the user's explicit call.
  if ('host' in address && !isLoopbackHost(address.host) && !values['allow-unauthenticated'] && !(nbdTls && nbdTlsAuthenticatesClients(nbdTls))) {
    throw new CliError(
      `--listen ${values.listen}: NBD clients are not authenticated (no TLS with client certificates or PSKs), so anyone who reaches this address gets the disk; ` +
        'listen on 127.0.0.1 or a --socket, require TLS with client authentication (--nbd-tls-ca FILE with --nbd-tls-cert/--nbd-tls-key, or --nbd-tls-psk FILE alone), ' +
        'or pass --allow-unauthenticated if the network is trusted',
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
  const sendTimeoutMs = parseIntOption(values['send-timeout'], 'send-timeout', 0, 3600000);
  let memoryBudgetBytes: number | undefined;
  if (values['memory-budget'] !== undefined) {
    try {
      memoryBudgetBytes = parseSize(values['memory-budget']);
    } catch (err) {
      throw new CliError(`--memory-budget: ${(err as Error).message}`);
    }
    if (memoryBudgetBytes < 1) throw new CliError('--memory-budget must be at least 1 byte');
  }
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
  const disk = await BlockDevice.open(url, { ...(values.ivqn && { ivqn: values.ivqn }), ...(tls && { tls }), ...clientAuthSettings(values), ...reconnect, log });
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
    ...(memoryBudgetBytes !== undefined && { memoryBudgetBytes }),
    ...(sendTimeoutMs !== undefined && { sendTimeoutMs }),
    ...(nbdTls && { tls: nbdTls }),
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
      `serving ${disk.capacity} bytes of ${url} (${server.export.readOnly ? 'read-only' : 'read-write'}, ${disk.numQueues} virtqueue(s)) as NBD export "${server.export.name}"` +
        (nbdTls ? `, TLS ${nbdTls.mode === 'require' ? 'required' : 'offered'}${nbdTlsAuthenticatesClients(nbdTls) ? ' with client authentication' : ''}` : ''),
    );
    process.stdout.write(`${uri}\n`);
    await stopped;
  } finally {
    await server.close();
    await disk.close().catch((err: Error) => log.warn(`closing ${url}: ${err.message}`));
  }
  return exitCode;
}
