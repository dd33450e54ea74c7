import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { BlockDevice } from '../devices/blk/block-device.js';
import { parseSize } from '../bench/workloads.js';
import { NbdServer, isLoopbackHost, type NbdListenAddress } from '../nbd/nbd-server.js';
import { NBD_DEFAULT_PORT } from '../nbd/nbd-protocol.js';
import { nbdTlsAuthenticatesClients, type NbdTlsSettings } from '../nbd/nbd-tls.js';
import { parseDeviceUrl, UrlError } from '../url.js';
import { createLogger, type LogLevel } from '../util/log.js';
import { CliError, parseIntOption } from './cli-error.js';
import { TLS_CLIENT_OPTIONS, clientTlsSettings, serverTlsSettings } from './tls-options.js';
import { AUTH_CLIENT_OPTIONS, clientAuthSettings } from './auth-options.js';
import { RECONNECT_OPTIONS, RECONNECT_USAGE, reconnectSettings } from './reconnect-options.js';

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
  const { values, positionals } = parseArgs({
    args: argv,
    options: {
      socket: { type: 'string' },
      listen: { type: 'string' },
      name: { type: 'string' },
      ivqn: { type: 'string' },
      'read-only': { type: 'boolean' },
      'max-requests': { type: 'string' },
      'max-connections': { type: 'string' },
      'socket-mode': { type: 'string' },
      'allow-unauthenticated': { type: 'boolean' },
      'memory-budget': { type: 'string' },
      'send-timeout': { type: 'string' },
      'nbd-tls': { type: 'string' },
      'nbd-tls-cert': { type: 'string' },
      'nbd-tls-key': { type: 'string' },
      'nbd-tls-ca': { type: 'string' },
      'nbd-tls-psk': { type: 'string' },
      log: { type: 'string' },
      ...TLS_CLIENT_OPTIONS,
      ...AUTH_CLIENT_OPTIONS,
      ...RECONNECT_OPTIONS,
    },
    allowPositionals: true,
    strict: true,
  });
  if (positionals.length !== 1) {
    throw new CliError(
      'usage: vof nbd URL [--socket PATH [--socket-mode OCTAL] | --listen HOST:PORT [--allow-unauthenticated]] [--name EXPORT] [--ivqn IVQN] [--read-only] ' +
        '[--max-requests N] [--max-connections N] [--memory-budget BYTES] [--send-timeout MS] ' +
        '[--nbd-tls require|on] [--nbd-tls-cert FILE --nbd-tls-key FILE] [--nbd-tls-ca FILE] [--nbd-tls-psk FILE] ' +
        `[--tls-* ... (the vof side)] ${RECONNECT_USAGE}`,
    );
  }
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
  const log = createLogger((values.log ?? 'info') as LogLevel);

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
