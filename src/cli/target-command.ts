import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { FileBlockExport } from '../devices/blk/file-block-export.js';
import { chooseFileIo, defaultFileIoMode, parseFileIoMode, type FileIoChoice, type FileIoMode } from '../devices/blk/file-io.js';
import { EntropyExport } from '../devices/rng/entropy-export.js';
import { VofTarget } from '../target/target.js';
import { createLogger, type LogLevel } from '../util/log.js';
import { parseAllowEntry, type AllowSpec } from '../target/access-policy.js';
import { resolveQuotas, type QuotaLimits } from '../target/quotas.js';
import { quotePeerString } from '../util/escape.js';
import { ControlSocket } from '../target/control-socket.js';
import { targetProcessStats } from '../target/process-stats.js';
import { makeRedirect, parseRedirectSpec } from '../target/redirect.js';
import { CliError, parseIntOption } from './cli-error.js';
import { MAX_INLINE_DATA_SIZE } from '../protocol/inline-data.js';
import { TLS_SERVER_OPTIONS, serverTlsSettings, type TlsServerFiles } from './tls-options.js';
import { AUTH_TARGET_OPTIONS, targetAuthSecrets, type AuthConfig } from './auth-options.js';

interface BlkSpec {
  tvqn: string;
  path: string;
  readOnly?: boolean;
  allow?: AllowSpec[];
  /** Admin grants of this export, added to the top-level ones (docs/SECURITY.md "Admin grants"). */
  admin?: AllowSpec[];
  queues?: number;
  queueSize?: number;
  /** GET_ID serial (default: derived from the file's identity, not its name). */
  serial?: string;
  /** Live instances of this export at most. */
  maxInstances?: number;
  /** Open with O_DIRECT (no page cache; see docs/CLI.md for when). */
  direct?: boolean;
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

/** --config FILE: the same settings as the flags, as JSON; flags add to it. */
interface TargetConfigFile {
  listen?: string[];
  blk?: BlkSpec[];
  rng?: RngSpec[];
  allow?: AllowSpec[];
  /** Admin grants of every export ("IVQN", "IVQN@IDENTITY" or { ivqn, identity }); none: nobody. */
  admin?: AllowSpec[];
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
  /** Registered bytes of one RDMA device's shared data pools at most. */
  rdmaDeviceMemoryBytes?: number;
  log?: LogLevel;
  quotas?: Partial<QuotaLimits>;
  tls?: TlsServerFiles;
  /**
   * [{ "tvqn": "disk0", "url": "tcp://10.0.0.2:15771" }, …] (url may end in /TVQN2). Only IVQNs
   * its "allow" plus the top-level allow-list admit learn the destination.
   */
  redirect?: Array<{ tvqn: string; url: string; allow?: AllowSpec[] }>;
  /** Unix socket for operator commands (vof drain). */
  control?: string;
  /** How block exports do file I/O: auto (io_uring where it works), uring or libuv. */
  fileIo?: FileIoMode;
  /** RDMA: inline data size offered (vof extension, 0: off; default 4112). */
  inlineDataBytes?: number;
  /** IVQN → "DHHC-1:00:…:" or { file }: in-band authentication required for these IVQNs. */
  auth?: AuthConfig;
}

function parseBlk(spec: string): BlkSpec {
  const eq = spec.indexOf('=');
  if (eq <= 0) throw new CliError(`--blk expects TVQN=PATH[,ro][,direct], got "${spec}"`);
  const tvqn = spec.slice(0, eq);
  let path = spec.slice(eq + 1);
  let readOnly = false;
  let direct = false;
  let serial: string | undefined;
  // Options trail the path: ,ro ,rw ,direct ,serial=S (in any order).
  for (;;) {
    const m = /,(ro|rw|direct|serial=[^,]*)$/.exec(path);
    if (!m) break;
    if (m[1] === 'ro') readOnly = true;
    else if (m[1] === 'direct') direct = true;
    else if (m[1]!.startsWith('serial=')) serial = m[1]!.slice('serial='.length);
    path = path.slice(0, m.index);
  }
  if (!path) throw new CliError(`--blk "${spec}" has no path`);
  return { tvqn, path, readOnly, ...(direct && { direct }), ...(serial !== undefined && { serial }) };
}

/** `allow: []` would silently mean "everyone" (or "nobody"): refuse it. */
function checkConfigAllow(allow: unknown, where: string): void {
  if (allow === undefined) return;
  if (!Array.isArray(allow)) throw new CliError(`--config: ${where} "allow" must be a list of IVQNs`);
  if (allow.length === 0) {
    throw new CliError(`--config: ${where} "allow" is empty; remove it to export to every initiator, or list the IVQNs allowed`);
  }
}

/** `admin` may be empty (nobody, as when absent), but must be a list. */
function checkConfigAdmin(admin: unknown, where: string): void {
  if (admin !== undefined && !Array.isArray(admin)) throw new CliError(`--config: ${where} "admin" must be a list of IVQNs`);
}

function readConfig(file: string): TargetConfigFile {
  let cfg: TargetConfigFile;
  try {
    cfg = JSON.parse(readFileSync(file, 'utf8')) as TargetConfigFile;
  } catch (err) {
    throw new CliError(`cannot read --config ${file}: ${(err as Error).message}`);
  }
  checkConfigAllow(cfg.allow, 'top-level');
  checkConfigAdmin(cfg.admin, 'top-level');
  for (const b of cfg.blk ?? []) {
    checkConfigAllow(b.allow, `blk "${b.tvqn}"`);
    checkConfigAdmin(b.admin, `blk "${b.tvqn}"`);
  }
  for (const r of cfg.rng ?? []) {
    checkConfigAllow(r.allow, `rng "${r.tvqn}"`);
    checkConfigAdmin(r.admin, `rng "${r.tvqn}"`);
  }
  for (const r of cfg.redirect ?? []) checkConfigAllow(r.allow, `redirect "${r.tvqn}"`);
  return cfg;
}

export async function runTarget(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      listen: { type: 'string', multiple: true },
      blk: { type: 'string', multiple: true },
      rng: { type: 'string', multiple: true },
      allow: { type: 'string', multiple: true },
      admin: { type: 'string', multiple: true },
      config: { type: 'string' },
      queues: { type: 'string' },
      'queue-size': { type: 'string' },
      'keepalive-interval': { type: 'string' },
      'keepalive-timeout': { type: 'string' },
      'connect-timeout': { type: 'string' },
      'send-timeout': { type: 'string' },
      log: { type: 'string' },
      'max-instances-per-export': { type: 'string' },
      'max-instances-per-ivqn': { type: 'string' },
      'max-unbound': { type: 'string' },
      'max-unbound-per-host': { type: 'string' },
      ...TLS_SERVER_OPTIONS,
      redirect: { type: 'string', multiple: true },
      control: { type: 'string' },
      'file-io': { type: 'string' },
      'inline-data': { type: 'string' },
      ...AUTH_TARGET_OPTIONS,
    },
    strict: true,
  });
  const cfg: TargetConfigFile = values.config ? readConfig(values.config) : {};
  const listen = [...(cfg.listen ?? []), ...(values.listen ?? [])];
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
  const level = (values.log ?? cfg.log ?? 'info') as LogLevel;
  const log = createLogger(level);
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
  if (blks.length > 0) {
    try {
      const asked = values['file-io'] ?? cfg.fileIo;
      fileIo = chooseFileIo(asked === undefined ? defaultFileIoMode() : parseFileIoMode(asked, values['file-io'] !== undefined ? '--file-io' : '--config "fileIo"'), log);
    } catch (err) {
      throw new CliError((err as Error).message);
    }
    log.info(fileIo.description);
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
    for (const b of blks) {
      let disk: FileBlockExport;
      if (b.direct !== undefined && typeof b.direct !== 'boolean') throw new CliError(`--config: blk "${b.tvqn}" "direct" must be true or false`);
      try {
        disk = await FileBlockExport.open(b.path, {
          readOnly: b.readOnly ?? false,
          ...((b.queues ?? queues) !== undefined && { numQueues: b.queues ?? queues }),
          ...((b.queueSize ?? queueSize) !== undefined && { queueSize: b.queueSize ?? queueSize }),
          ...(b.serial !== undefined && { serial: b.serial }),
          ...(b.direct === true && { direct: true }),
          ...(fileIo && { fileIo: fileIo.backend }),
        });
      } catch (err) {
        throw new CliError(`cannot open ${b.path} for "${b.tvqn}": ${(err as Error).message}`, 1);
      }
      try {
        const entries = [...(b.allow ?? []), ...allow];
        target.addDevice(b.tvqn, disk, entries.length > 0 ? entries : undefined, {
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
        target.addDevice(r.tvqn, rng, entries.length > 0 ? entries : undefined, {
          admin: [...(r.admin ?? []), ...admin],
        });
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
        control = await ControlSocket.listen(controlPath, { drain: (t, u, g) => target.drain(t, u, g), redirect: (t, u) => target.redirect(t, u, redirectAllow()), unredirect: (t) => target.removeRedirect(t), stats: targetProcessStats }, log);
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
