import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { FileBlockExport } from '../devices/blk/file-block-export.js';
import { VofTarget } from '../target/target.js';
import { createLogger, type LogLevel } from '../util/log.js';
import { CliError, parseIntOption } from './cli-error.js';

interface BlkSpec {
  tvqn: string;
  path: string;
  readOnly?: boolean;
  allow?: string[];
  queues?: number;
  queueSize?: number;
}

/** --config FILE: the same settings as the flags, as JSON; flags add to it. */
interface TargetConfigFile {
  listen?: string[];
  blk?: BlkSpec[];
  allow?: string[];
  queues?: number;
  queueSize?: number;
  keepaliveIntervalMs?: number;
  keepaliveTimeoutMs?: number;
  /** Close connections that have not completed Connect within this time (ms; 0: never). */
  connectTimeoutMs?: number;
  /** Close connections whose completions have not moved for this long (ms; 0: never). */
  sendTimeoutMs?: number;
  /** Bytes of VQ buffers all queues together, and one queue, may hold. */
  targetBufferBytes?: number;
  queueBufferBytes?: number;
  log?: LogLevel;
}

function parseBlk(spec: string): BlkSpec {
  const eq = spec.indexOf('=');
  if (eq <= 0) throw new CliError(`--blk expects TVQN=PATH[,ro], got "${spec}"`);
  const tvqn = spec.slice(0, eq);
  let path = spec.slice(eq + 1);
  let readOnly = false;
  if (path.endsWith(',ro')) {
    readOnly = true;
    path = path.slice(0, -3);
  } else if (path.endsWith(',rw')) {
    path = path.slice(0, -3);
  }
  if (!path) throw new CliError(`--blk "${spec}" has no path`);
  return { tvqn, path, readOnly };
}

function readConfig(file: string): TargetConfigFile {
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as TargetConfigFile;
  } catch (err) {
    throw new CliError(`cannot read --config ${file}: ${(err as Error).message}`);
  }
}

export async function runTarget(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      listen: { type: 'string', multiple: true },
      blk: { type: 'string', multiple: true },
      allow: { type: 'string', multiple: true },
      config: { type: 'string' },
      queues: { type: 'string' },
      'queue-size': { type: 'string' },
      'keepalive-interval': { type: 'string' },
      'keepalive-timeout': { type: 'string' },
      'connect-timeout': { type: 'string' },
      'send-timeout': { type: 'string' },
      log: { type: 'string' },
    },
    strict: true,
  });
  const cfg: TargetConfigFile = values.config ? readConfig(values.config) : {};
  const listen = [...(cfg.listen ?? []), ...(values.listen ?? [])];
  const blks = [...(cfg.blk ?? []), ...(values.blk ?? []).map(parseBlk)];
  const allow = [...(cfg.allow ?? []), ...(values.allow ?? [])];
  if (listen.length === 0) throw new CliError('vof target needs at least one --listen URL (e.g. tcp://0.0.0.0:15771)');
  if (blks.length === 0) throw new CliError('vof target needs at least one --blk TVQN=PATH');
  const level = (values.log ?? cfg.log ?? 'info') as LogLevel;
  const log = createLogger(level);
  const queues = parseIntOption(values.queues, 'queues', 1, 64) ?? cfg.queues;
  const queueSize = parseIntOption(values['queue-size'], 'queue-size', 1, 1024) ?? cfg.queueSize;
  const connectTimeoutMs = parseIntOption(values['connect-timeout'], 'connect-timeout', 0, 3600000) ?? cfg.connectTimeoutMs;
  const sendStallTimeoutMs = parseIntOption(values['send-timeout'], 'send-timeout', 0, 3600000) ?? cfg.sendTimeoutMs;
  const target = new VofTarget({
    log,
    ...(connectTimeoutMs !== undefined && { connectTimeoutMs }),
    limits: {
      ...(sendStallTimeoutMs !== undefined && { sendStallTimeoutMs }),
      ...(cfg.targetBufferBytes !== undefined && { targetBufferBytes: cfg.targetBufferBytes }),
      ...(cfg.queueBufferBytes !== undefined && { queueBufferBytes: cfg.queueBufferBytes }),
    },
    keepalive: {
      ...(cfg.keepaliveIntervalMs !== undefined && { intervalMs: cfg.keepaliveIntervalMs }),
      ...(cfg.keepaliveTimeoutMs !== undefined && { timeoutMs: cfg.keepaliveTimeoutMs }),
      ...(values['keepalive-interval'] && { intervalMs: parseIntOption(values['keepalive-interval'], 'keepalive-interval', 0, 3600000)! }),
      ...(values['keepalive-timeout'] && { timeoutMs: parseIntOption(values['keepalive-timeout'], 'keepalive-timeout', 1, 3600000)! }),
    },
  });
  // Installed before anything is announced, so a signal at any point after shuts down cleanly.
  const stopped = new Promise<void>((resolve) => {
    const stop = (sig: string) => {
      log.info(`${sig}: shutting down`);
      resolve();
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });
  try {
    for (const b of blks) {
      let disk: FileBlockExport;
      try {
        disk = await FileBlockExport.open(b.path, {
          readOnly: b.readOnly ?? false,
          ...((b.queues ?? queues) !== undefined && { numQueues: b.queues ?? queues }),
          ...((b.queueSize ?? queueSize) !== undefined && { queueSize: b.queueSize ?? queueSize }),
        });
      } catch (err) {
        throw new CliError(`cannot open ${b.path} for "${b.tvqn}": ${(err as Error).message}`, 1);
      }
      try {
        target.addDevice(b.tvqn, disk, [...(b.allow ?? []), ...allow]);
      } catch (err) {
        await disk.close();
        throw new CliError(`cannot export ${b.path} as "${b.tvqn}": ${(err as Error).message}`);
      }
      log.info(`exporting ${disk.description} as "${b.tvqn}"`);
    }
    for (const url of listen) {
      let bound: string;
      try {
        bound = await target.listen(url);
      } catch (err) {
        throw new CliError(`cannot listen on ${url}: ${(err as Error).message}`, 1);
      }
      process.stdout.write(`listening on ${bound}\n`);
    }
  } catch (err) {
    await target.close();
    throw err;
  }
  await stopped;
  await target.close();
  return 0;
}
