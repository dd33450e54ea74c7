import { stat } from 'node:fs/promises';
import type { FileBlockExport } from '../target/blk/file-block-export.js';
import { openBlockStorage, storageKind } from '../target/blk/open-storage.js';
import { chooseFileIo, defaultFileIoMode, parseFileIoMode, type FileIoChoice, type FileIoMode } from '../target/blk/file-io.js';
import { EntropyExport } from '../target/rng/entropy-export.js';
import { VofTarget } from '../target/target.js';
import { createLogger } from '../util/log.js';
import { parseAllowEntry, type AllowSpec } from '../target/access-policy.js';
import { resolveQuotas, type QuotaLimits } from '../target/quotas.js';
import { parseListenUrl } from '../transport/url.js';
import { quotePeerString } from '../util/escape.js';
import { ControlSocket } from '../target/control-socket.js';
import { targetProcessStats } from '../target/process-stats.js';
import { makeRedirect, parseRedirectSpec } from '../target/redirect.js';
import { CliError, parseIntOption } from './cli-error.js';
import { MAX_INLINE_DATA_SIZE } from '../protocol/inline-data.js';
import { TLS_SERVER_OPTIONS, serverTlsSettings } from './tls-options.js';
import { closest, parseCommand, parseLogLevel, type CommandSpec } from './options.js';
import { readTargetConfig, type TargetConfig } from './target-config.js';
import { AUTH_TARGET_OPTIONS, targetAuthSecrets } from './auth-options.js';

export const TARGET_COMMAND = {
  name: 'target',
  args: '--listen URL... (--blk TVQN=PATH[,ro][,serial=S][,direct] | --rng TVQN[,rate=BYTES_PER_S][,burst=BYTES] | --redirect TVQN=URL[/TVQN2])...',
  summary: 'Export block devices and entropy (virtio-rng) devices.',
  details:
    'URL is tcp://HOST[:PORT], tls://HOST[:PORT] or rdma://ADDR[:PORT] (port 15771, 0: any free one).\n' +
    'Prints "listening on URL" per address when ready; SIGINT/SIGTERM shut it down.\n' +
    '--blk options: ,ro (read-only) ,rw ,serial=S (GET_ID serial) ,direct (O_DIRECT).\n' +
    '--blk PATH may be an NBD source, nbd://HOST[:PORT]/EXPORT, nbds://… (TLS) or nbd+unix:///EXPORT?socket=PATH,\n' +
    '  with ,connections=N ,tls-ca=F ,tls-psk=F ,tls-cert=F ,tls-key=F ,reconnect-delay=S ,ctrl-loss-tmo=S;\n' +
    '  or null:SIZE, a disk that reads zeroes and drops writes (measuring the fabric alone).\n' +
    '--config FILE takes the same settings as JSON (docs/CONFIG.md); flags add to it.',
  options: {
    listen: { type: 'string', multiple: true, arg: 'URL', desc: 'an address to listen on' },
    blk: { type: 'string', multiple: true, arg: 'TVQN=PATH[,ro][,serial=S][,direct]', desc: 'export a file, block device, NBD source or null:SIZE as a virtio-blk disk' },
    rng: { type: 'string', multiple: true, arg: 'TVQN[,rate=BYTES_PER_S][,burst=BYTES]', desc: 'export an entropy device (default 1 MiB/s, burst 64 KiB)' },
    allow: { type: 'string', multiple: true, arg: 'IVQN[@IDENTITY]', desc: 'only these initiators (IDENTITY: only over TLS authenticated as it)' },
    admin: {
      type: 'string',
      multiple: true,
      arg: 'IVQN[@IDENTITY]',
      desc: "grant every export's export-wide admin commands (format, clear-log, reset-counters, the whole error log); default: nobody",
    },
    config: { type: 'string', arg: 'FILE', desc: 'settings as JSON (docs/CONFIG.md); flags add to them' },
    queues: { type: 'string', arg: 'N', desc: 'virtqueues per disk (default 2)' },
    'queue-size': { type: 'string', arg: 'N', desc: 'virtqueue size (default 128)' },
    'keepalive-interval': { type: 'string', arg: 'MS', desc: 'how often to send keepalives (default 5000, 0: none)' },
    'keepalive-timeout': { type: 'string', arg: 'MS', desc: 'destroy an instance silent this long (default 15000)' },
    'connect-timeout': { type: 'string', arg: 'MS', desc: 'close connections without a Connect after this long (default 10000, 0: never)' },
    'send-timeout': { type: 'string', arg: 'MS', desc: 'close connections that stop reading completions (default 10000, 0: never)' },
    log: { type: 'string', arg: 'LEVEL', desc: 'debug, info (default), warn, error or silent' },
    'max-instances-per-export': { type: 'string', arg: 'N', desc: 'live instances of one export (default 256)' },
    'max-instances-per-ivqn': { type: 'string', arg: 'N', desc: 'live instances of one export per IVQN (default 64)' },
    'max-unbound': { type: 'string', arg: 'N', desc: 'connections without a Connect, in total (default 1024)' },
    'max-unbound-per-host': { type: 'string', arg: 'N', desc: 'connections without a Connect, per peer host (default 128)' },
    ...TLS_SERVER_OPTIONS,
    redirect: { type: 'string', multiple: true, arg: 'TVQN=URL[/TVQN2]', desc: 'answer Connects for TVQN with a redirect to URL' },
    control: { type: 'string', arg: 'PATH', desc: 'Unix socket for operator commands (vof drain, vof revalidate)' },
    'file-io': { type: 'string', arg: 'auto|uring|libuv', desc: 'block file I/O backend (default: $VOF_FILE_IO, else auto)' },
    'inline-data': { type: 'string', arg: 'BYTES', desc: 'RDMA inline data offered (default 4112, at most 65536, 0: off)' },
    ...AUTH_TARGET_OPTIONS,
  },
} as const satisfies CommandSpec;

interface BlkSpec {
  tvqn: string;
  path: string;
  readOnly?: boolean;
  allow?: AllowSpec[];
  queues?: number;
  queueSize?: number;
  /** GET_ID serial (default: derived from the file's identity, not its name). */
  serial?: string;
  /** Live instances of this export at most. */
  maxInstances?: number;
  /** Open with O_DIRECT (no page cache; see docs/CLI.md for when). */
  direct?: boolean;
  /** Admin grants of this export, added to the top-level ones (docs/SECURITY.md "Admin grants"). */
  admin?: AllowSpec[];
  connections?: number;
  tlsCa?: string;
  tlsPsk?: string;
  tlsCert?: string;
  tlsKey?: string;
  reconnectDelay?: number;
  ctrlLossTmo?: number;
}

interface RngSpec {
  tvqn: string;
  /** Bytes per second per instance. */
  rate?: number;
  burst?: number;
  allow?: AllowSpec[];
  admin?: AllowSpec[];
}

/** --rng TVQN[,rate=BYTES_PER_S][,burst=BYTES] */
function parseRng(spec: string): RngSpec {
  const [tvqn, ...opts] = spec.split(',');
  if (!tvqn) throw new CliError(`--rng expects TVQN[,rate=BYTES_PER_S][,burst=BYTES], got "${spec}"`);
  const out: RngSpec = { tvqn };
  for (const o of opts) {
    const [k, v] = o.split('=');
    if (k !== 'rate' && k !== 'burst') throw new CliError(`--rng "${spec}": unknown option "${o}" (rate=, burst=)`);
    out[k] = parseIntOption(v ?? '', `rng ${k}`, 1, 1 << 30);
  }
  return out;
}

const BLK_OPTIONS = ['ro', 'rw', 'serial=', 'direct', 'connections=', 'tls-ca=', 'tls-psk=', 'tls-cert=', 'tls-key=', 'reconnect-delay=', 'ctrl-loss-tmo='];
/** --blk options of NBD sources that name a file, and their BlkSpec fields. */
const BLK_FILE_OPTIONS = { 'tls-ca': 'tlsCa', 'tls-psk': 'tlsPsk', 'tls-cert': 'tlsCert', 'tls-key': 'tlsKey' } as const;

function blkSeconds(spec: string, key: string, v: string): number {
  const n = Number(v);
  if (v === '' || !Number.isFinite(n) || (n < 0 && n !== -1)) throw new CliError(`--blk "${spec}": ${key}= takes seconds (or -1), got "${v}"`);
  return n;
}

/**
 * --blk TVQN=PATH[,ro][,rw][,serial=S][,direct]: options trail the path, in any order. A
 * trailing ",word" that is not a known option is an error (it used to become part of the file
 * name); a path that really contains such a comma goes in --config.
 */
export function parseBlk(spec: string): BlkSpec {
  const eq = spec.indexOf('=');
  if (eq <= 0) throw new CliError(`--blk expects TVQN=PATH[,ro][,serial=S][,direct], got "${spec}"`);
  const tvqn = spec.slice(0, eq);
  let path = spec.slice(eq + 1);
  const out: Omit<BlkSpec, 'tvqn' | 'path'> = { readOnly: false };
  for (;;) {
    const m = /,([A-Za-z][\w-]*)(=[^,]*)?$/.exec(path);
    if (!m) break;
    const [, key, value] = m as unknown as [string, string, string | undefined];
    if (key === 'ro' && value === undefined) out.readOnly = true;
    else if (key === 'rw' && value === undefined) out.readOnly = false;
    else if (key === 'direct' && value === undefined) out.direct = true;
    else if (key === 'serial' && value !== undefined) out.serial = value.slice(1);
    else if (key === 'connections' && value !== undefined) out.connections = parseIntOption(value.slice(1), 'blk connections', 1, 64)!;
    else if (key in BLK_FILE_OPTIONS && value !== undefined && value.length > 1) out[BLK_FILE_OPTIONS[key as keyof typeof BLK_FILE_OPTIONS]] = value.slice(1);
    else if (key === 'reconnect-delay' && value !== undefined) out.reconnectDelay = blkSeconds(spec, key, value.slice(1));
    else if (key === 'ctrl-loss-tmo' && value !== undefined) out.ctrlLossTmo = blkSeconds(spec, key, value.slice(1));
    else {
      const near = closest(key, BLK_OPTIONS.map((o) => o.replace('=', '')));
      throw new CliError(
        `--blk "${spec}": unknown option "${m[0].slice(1)}"${near ? ` (did you mean ${near}?)` : ''}; options: ${BLK_OPTIONS.map((o) => `,${o}`).join(' ')} ` +
          '(a path containing a comma goes in --config)',
      );
    }
    path = path.slice(0, m.index);
  }
  if (!path) throw new CliError(`--blk "${spec}" has no path`);
  return { tvqn, path, ...out };
}

/**
 * What a disk would export, checked before anything is opened: an empty file is refused (a
 * 0-byte disk), and bytes past the last whole sector, which no initiator can reach, are said.
 */
async function checkBackingFile(b: BlkSpec, warn: (msg: string) => void): Promise<void> {
  if (storageKind(b.path) !== 'file') return;
  const st = await stat(b.path).catch(() => null);
  if (!st?.isFile()) return; // a block device (size via ioctl) or a missing file: open() says
  if (st.size < 512) {
    throw new CliError(`--blk "${b.tvqn}": ${b.path} is ${st.size} bytes: a disk needs at least one 512-byte sector (e.g. truncate -s 1G ${b.path})`, 1);
  }
  if (st.size % 512 !== 0) {
    const whole = st.size - (st.size % 512);
    warn(`${b.path} is ${st.size} bytes, not a multiple of 512: "${b.tvqn}" exports ${whole} bytes; the last ${st.size - whole} are not reachable`);
  }
}

export async function runTarget(argv: string[]): Promise<number> {
  const parsed = parseCommand(TARGET_COMMAND, argv);
  if (!parsed) return 0;
  const { values, positionals } = parsed;
  if (positionals.length > 0) {
    throw new CliError(`vof target takes no arguments, got "${positionals[0]}" (an option's value? --blk TVQN=PATH, --listen URL); \`vof target --help\` lists the options`);
  }
  const cfg: TargetConfig = values.config ? readTargetConfig(values.config) : {};
  const listen = [...(cfg.listen ?? []), ...(values.listen ?? [])];
  // Every address is checked before any disk is opened: a typo is a usage error, at once.
  for (const url of listen) {
    try {
      parseListenUrl(url);
    } catch (err) {
      throw new CliError(`--listen ${url}: ${(err as Error).message}`);
    }
  }
  const blks = [...(cfg.blk ?? []), ...(values.blk ?? []).map(parseBlk)];
  const rngs = [...(cfg.rng ?? []), ...(values.rng ?? []).map(parseRng)];
  let allow: AllowSpec[];
  try {
    allow = [...(cfg.allow ?? []), ...(values.allow ?? []).map(parseAllowEntry)];
  } catch (err) {
    throw new CliError(`--allow: ${(err as Error).message}`);
  }
  // Admin grants of every export: --admin and the top-level "admin" (nobody when both are
  // absent). Written like allow entries: "IVQN@IDENTITY" on the command line, objects in --config.
  let admin: AllowSpec[];
  try {
    admin = [...(cfg.admin ?? []), ...(values.admin ?? []).map(parseAllowEntry)];
  } catch (err) {
    throw new CliError(`--admin: ${(err as Error).message}`);
  }
  if (listen.length === 0) throw new CliError('vof target needs at least one --listen URL (e.g. tcp://0.0.0.0:15771)');
  let redirects: Array<{ tvqn: string; url: string; allow?: AllowSpec[] }>;
  try {
    redirects = [...(cfg.redirect ?? []), ...(values.redirect ?? []).map(parseRedirectSpec)];
    for (const r of redirects) makeRedirect(r.tvqn, r.url);
  } catch (err) {
    throw new CliError(`--redirect: ${(err as Error).message}`);
  }
  if (blks.length === 0 && rngs.length === 0 && redirects.length === 0) throw new CliError('vof target needs at least one --blk TVQN=PATH, --rng TVQN or --redirect TVQN=URL');
  const log = createLogger(parseLogLevel(values.log, cfg.log ?? 'info'));
  const queues = parseIntOption(values.queues, 'queues', 1, 64) ?? cfg.queues;
  const queueSize = parseIntOption(values['queue-size'], 'queue-size', 1, 1024) ?? cfg.queueSize;
  const limit = (flag: string) => parseIntOption(values[flag as 'max-unbound'], flag, 1, 1_000_000);
  const quotas: Partial<QuotaLimits> = {
    ...cfg.quotas,
    ...(values['max-instances-per-export'] && { instancesPerExport: limit('max-instances-per-export')! }),
    ...(values['max-instances-per-ivqn'] && { instancesPerIvqn: limit('max-instances-per-ivqn')! }),
    ...(values['max-unbound'] && { unboundConnections: limit('max-unbound')! }),
    ...(values['max-unbound-per-host'] && { unboundPerHost: limit('max-unbound-per-host')! }),
  };
  const tls = serverTlsSettings({
    ...cfg.tls,
    ...(values['tls-cert'] && { cert: values['tls-cert'] }),
    ...(values['tls-key'] && { key: values['tls-key'] }),
    ...(values['tls-ca'] && { ca: values['tls-ca'] }),
    ...(values['tls-psk'] && { pskFile: values['tls-psk'] }),
  });
  if (listen.some((u) => u.startsWith('tls://')) && !tls) {
    throw new CliError('a tls:// listener needs --tls-cert/--tls-key and/or --tls-psk (or "tls" in --config)');
  }
  try {
    resolveQuotas(quotas);
  } catch (err) {
    throw new CliError(`--config: ${(err as Error).message}`);
  }
  const connectTimeoutMs = parseIntOption(values['connect-timeout'], 'connect-timeout', 0, 3600000) ?? cfg.connectTimeoutMs;
  const sendStallTimeoutMs = parseIntOption(values['send-timeout'], 'send-timeout', 0, 3600000) ?? cfg.sendTimeoutMs;
  let fileIo: FileIoChoice | undefined;
  let mode: FileIoMode;
  if (blks.length > 0) {
    try {
      const asked = values['file-io'] ?? cfg.fileIo;
      mode = asked === undefined ? defaultFileIoMode() : parseFileIoMode(asked, values['file-io'] !== undefined ? '--file-io' : '--config "fileIo"');
      fileIo = chooseFileIo(mode, log);
    } catch (err) {
      throw new CliError((err as Error).message);
    }
    // Which I/O and why: the backend's own reason, and where the mode came from.
    const from = values['file-io'] !== undefined ? '--file-io' : cfg.fileIo !== undefined ? '--config "fileIo"' : process.env['VOF_FILE_IO'] ? 'VOF_FILE_IO' : 'the default';
    log.info(`${fileIo.description}; mode ${mode} from ${from}`);
  }
  const inlineDataBytes = parseIntOption(values['inline-data'], 'inline-data', 0, MAX_INLINE_DATA_SIZE) ?? cfg.inlineDataBytes;
  if (inlineDataBytes !== undefined && (!Number.isInteger(inlineDataBytes) || inlineDataBytes < 0 || inlineDataBytes > MAX_INLINE_DATA_SIZE)) {
    throw new CliError(`--config: "inlineDataBytes" must be an integer from 0 to ${MAX_INLINE_DATA_SIZE}, got ${JSON.stringify(inlineDataBytes)}`);
  }
  const auth = targetAuthSecrets(cfg.auth, values['auth-secret']);
  const target = new VofTarget({
    log,
    ...(Object.keys(auth).length > 0 && { auth }),
    quotas,
    ...(tls && { tls }),
    ...(connectTimeoutMs !== undefined && { connectTimeoutMs }),
    ...(inlineDataBytes !== undefined && { inlineDataBytes }),
    limits: {
      ...(sendStallTimeoutMs !== undefined && { sendStallTimeoutMs }),
      ...(cfg.targetBufferBytes !== undefined && { targetBufferBytes: cfg.targetBufferBytes }),
      ...(cfg.queueBufferBytes !== undefined && { queueBufferBytes: cfg.queueBufferBytes }),
      ...(cfg.rdmaDeviceMemoryBytes !== undefined && { rdmaDeviceMemoryBytes: cfg.rdmaDeviceMemoryBytes }),
    },
    keepalive: {
      ...(cfg.keepaliveIntervalMs !== undefined && { intervalMs: cfg.keepaliveIntervalMs }),
      ...(cfg.keepaliveTimeoutMs !== undefined && { timeoutMs: cfg.keepaliveTimeoutMs }),
      ...(values['keepalive-interval'] && { intervalMs: parseIntOption(values['keepalive-interval'], 'keepalive-interval', 0, 3600000)! }),
      ...(values['keepalive-timeout'] && { timeoutMs: parseIntOption(values['keepalive-timeout'], 'keepalive-timeout', 1, 3600000)! }),
    },
  });
  // A redirect tells where a disk lives: only to peers the allow-lists admit.
  const redirectAllow = (own: AllowSpec[] = []) => ([...own, ...allow].length > 0 ? [...own, ...allow] : undefined);
  for (const r of redirects) target.redirect(r.tvqn, r.url, redirectAllow(r.allow));
  // Installed before anything is announced, so a signal at any point after shuts down cleanly.
  const stopped = new Promise<void>((resolve) => {
    const stop = (sig: string) => {
      log.info(`${sig}: shutting down`);
      resolve();
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });
  let control: ControlSocket | undefined;
  try {
    for (const b of blks) await checkBackingFile(b, (m) => log.warn(m));
    for (const b of blks) {
      let disk: FileBlockExport;
      try {
        disk = await openBlockStorage(
          b.path,
          {
            readOnly: b.readOnly ?? false,
            ...((b.queues ?? queues) !== undefined && { numQueues: b.queues ?? queues }),
            ...((b.queueSize ?? queueSize) !== undefined && { queueSize: b.queueSize ?? queueSize }),
            ...(b.serial !== undefined && { serial: b.serial }),
            ...(b.direct === true && { direct: true }),
            ...(fileIo && { fileIo: fileIo.backend }),
          },
          {
            ...(b.connections !== undefined && { connections: b.connections }),
            ...(b.tlsCa !== undefined && { tlsCa: b.tlsCa }),
            ...(b.tlsPsk !== undefined && { tlsPsk: b.tlsPsk }),
            ...(b.tlsCert !== undefined && { tlsCert: b.tlsCert }),
            ...(b.tlsKey !== undefined && { tlsKey: b.tlsKey }),
            ...(b.reconnectDelay !== undefined && { reconnectDelay: b.reconnectDelay }),
            ...(b.ctrlLossTmo !== undefined && { ctrlLossTmo: b.ctrlLossTmo }),
          },
          log,
        );
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        const hint = !b.readOnly && (code === 'EACCES' || code === 'EROFS' || code === 'EPERM') ? ` (to export it read-only: --blk ${b.tvqn}=${b.path},ro, or "readOnly": true in --config)` : '';
        throw new CliError(`cannot open ${b.path} for "${b.tvqn}": ${(err as Error).message}${hint}`, 1);
      }
      try {
        const entries = [...(b.allow ?? []), ...allow];
        target.addExport(b.tvqn, disk, entries.length > 0 ? entries : undefined, {
          ...(b.maxInstances !== undefined && { maxInstances: b.maxInstances }),
          admin: [...(b.admin ?? []), ...admin],
        });
      } catch (err) {
        await disk.close();
        throw new CliError(`cannot export ${b.path} as "${b.tvqn}": ${(err as Error).message}`);
      }
      const exported = target.devices.get(b.tvqn)!;
      log.info(`exporting ${disk.description} as ${quotePeerString(b.tvqn)}, ${exported.access.describe()}, ${exported.admin.describe('admin')}`);
    }
    for (const r of rngs) {
      let rng: EntropyExport;
      try {
        rng = new EntropyExport({ ...(r.rate !== undefined && { rate: r.rate }), ...(r.burst !== undefined && { burst: r.burst }) });
        const entries = [...(r.allow ?? []), ...allow];
        target.addExport(r.tvqn, rng, entries.length > 0 ? entries : undefined, { admin: [...(r.admin ?? []), ...admin] });
      } catch (err) {
        throw new CliError(`cannot export rng "${r.tvqn}": ${(err as Error).message}`);
      }
      const exported = target.devices.get(r.tvqn)!;
      log.info(`exporting ${rng.description} as ${quotePeerString(r.tvqn)}, ${exported.access.describe()}, ${exported.admin.describe('admin')}`);
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
    const controlPath = values.control ?? cfg.control;
    if (controlPath) {
      try {
        control = await ControlSocket.listen(controlPath, { drain: (t, u, g) => target.drain(t, u, g), redirect: (t, u) => target.redirect(t, u, redirectAllow()), unredirect: (t) => target.removeRedirect(t), revalidate: (t) => target.revalidateSize(t), stats: targetProcessStats }, log);
      } catch (err) {
        throw new CliError(`cannot open the control socket ${controlPath}: ${(err as Error).message}`, 1);
      }
      log.info(`control socket ${controlPath} (vof drain --control ${controlPath} TVQN URL)`);
    }
  } catch (err) {
    await target.close();
    throw err;
  }
  await stopped;
  await control?.close();
  await target.close();
  return 0;
}
