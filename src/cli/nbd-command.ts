import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { BlockDevice } from '../devices/blk/block-device.js';
import { NbdServer, type NbdListenAddress } from '../nbd/nbd-server.js';
import { NBD_DEFAULT_PORT } from '../nbd/nbd-protocol.js';
import { parseDeviceUrl, UrlError } from '../url.js';
import { createLogger, type LogLevel } from '../util/log.js';
import { CliError, parseIntOption } from './cli-error.js';
import { TLS_CLIENT_OPTIONS, clientTlsSettings } from './tls-options.js';
import { RECONNECT_OPTIONS, RECONNECT_USAGE, reconnectSettings } from './reconnect-options.js';

/** HOST[:PORT] or [IPv6][:PORT]; the port defaults to NBD's 10809, 0 picks a free one. */
function parseHostPort(spec: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+))(?::(\d+))?$/.exec(spec);
  if (!m) throw new CliError(`--listen expects HOST[:PORT], got "${spec}"`);
  const port = m[3] === undefined ? NBD_DEFAULT_PORT : Number(m[3]);
  if (port > 65535) throw new CliError(`bad port in --listen "${spec}"`);
  return { host: m[1] ?? m[2]!, port };
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
      log: { type: 'string' },
      ...TLS_CLIENT_OPTIONS,
      ...RECONNECT_OPTIONS,
    },
    allowPositionals: true,
    strict: true,
  });
  if (positionals.length !== 1) throw new CliError(`usage: vof nbd URL [--socket PATH | --listen HOST:PORT] [--name EXPORT] [--ivqn IVQN] [--read-only] [--max-requests N] [--tls-* ...] ${RECONNECT_USAGE}`);
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
  const maxRequests = parseIntOption(values['max-requests'], 'max-requests', 1, 4096);
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
    description: `vof ${url}`,
    readOnly: values['read-only'] ?? false,
    ...(maxRequests !== undefined && { maxRequestsPerConnection: maxRequests }),
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
