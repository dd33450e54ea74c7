import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { FILE_IO_MODES } from '../target/blk/file-io.js';
import { MAX_INLINE_DATA_SIZE } from '../protocol/inline-data.js';
import { DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_LIMITS } from '../target/target.js';
import { DEFAULT_QUOTAS } from '../target/quotas.js';
import { CliError } from './cli-error.js';
import { closest, LOG_LEVELS } from './options.js';

/**
 * The schema of `vof target --config FILE`, validated with zod: a maintained library whose
 * errors carry the key path and the expected type, and whose JSON Schema export
 * (z.toJSONSchema) writes docs/CONFIG.md (scripts/config-doc.mjs), so the document is the
 * schema. Every object is strict: an unknown key is an error naming the closest known one.
 * Defaults are documentation here (meta "default"): the code that consumes a key applies it.
 */
const ms = (max: number, min = 0) => z.number().int().min(min).max(max);
const ivqn = z.string().min(1);

const allowEntry = z.union([
  ivqn.meta({ description: 'an IVQN, or IVQN@IDENTITY: admitted only over TLS authenticated as IDENTITY' }),
  z.strictObject({ ivqn, identity: z.string().min(1).optional() }).meta({ description: 'an IVQN (may contain "@") and optionally its TLS identity' }),
]);

/** `allow: []` would silently mean "everyone" (or "nobody"): refuse it. */
const allowList = z
  .array(allowEntry)
  .min(1, { message: 'is empty; remove it to export to every initiator, or list the IVQNs allowed' })
  .meta({ description: 'IVQNs allowed to connect (default: every initiator)' });

/** Admin grants: written like allow entries; absent or empty, nobody holds them. */
const adminList = z
  .array(allowEntry)
  .meta({ description: 'IVQNs granted the export-wide admin commands (format, clear-log, reset-counters, the whole error log); default: nobody' });

const blk = z.strictObject({
  tvqn: ivqn.meta({ description: 'the name initiators connect to' }),
  path: z.string().min(1).meta({ description: 'the backing file or block device, an NBD source (nbd://HOST[:PORT]/EXPORT, nbds://…, nbd+unix:///EXPORT?socket=PATH) or null:SIZE' }),
  readOnly: z.boolean().optional().meta({ description: 'export read-only (VIRTIO_BLK_F_RO)', default: false }),
  direct: z.boolean().optional().meta({ description: 'open the file with O_DIRECT', default: false }),
  serial: z.string().optional().meta({ description: 'GET_ID serial', default: 'vof- and 16 hex digits from the file identity' }),
  queues: z.number().int().min(1).max(64).optional().meta({ description: 'virtqueues of this disk', default: 2 }),
  queueSize: z.number().int().min(1).max(1024).optional().meta({ description: 'virtqueue size', default: 128 }),
  maxInstances: z.number().int().min(1).max(1_000_000).optional().meta({ description: 'live instances of this export at most', default: DEFAULT_QUOTAS.instancesPerExport }),
  allow: allowList.optional(),
  admin: adminList.optional(),
  connections: z.number().int().min(1).max(64).optional().meta({ description: 'NBD source: connections when the server offers multi-conn', default: 1 }),
  tlsCa: z.string().min(1).optional().meta({ description: "nbds:// source: PEM CA file for the server's certificate", default: "Node's CA bundle" }),
  tlsPsk: z.string().min(1).optional().meta({ description: 'nbds:// source: PSK file (IDENTITY:HEXKEY, one line) instead of certificates' }),
  tlsCert: z.string().min(1).optional().meta({ description: 'nbds:// source: client certificate (PEM file)' }),
  tlsKey: z.string().min(1).optional().meta({ description: 'nbds:// source: key of tlsCert (PEM file)' }),
  reconnectDelay: z.number().min(0).optional().meta({ description: 'NBD source: seconds between reconnect attempts', default: 2 }),
  ctrlLossTmo: z.number().min(-1).optional().meta({ description: 'NBD source: seconds the server may stay away before requests fail and the disk needs a reset (-1: never)', default: 120 }),
});

const rng = z.strictObject({
  tvqn: ivqn.meta({ description: 'the name initiators connect to' }),
  rate: z.number().int().min(1).max(1 << 30).optional().meta({ description: 'bytes per second per instance', default: 1048576 }),
  burst: z.number().int().min(1).max(1 << 30).optional().meta({ description: 'token bucket size in bytes; also the most one request gets', default: 65536 }),
  allow: allowList.optional(),
  admin: adminList.optional(),
});

const redirect = z.strictObject({
  tvqn: ivqn.meta({ description: 'the TVQN whose Connects are redirected' }),
  url: z.string().min(1).meta({ description: 'where to: tcp://, tls:// or rdma://HOST[:PORT][/TVQN2]' }),
  allow: allowList.optional(),
});

export const targetConfigSchema = z
  .strictObject({
    listen: z.array(z.string().min(1)).optional().meta({ description: 'listen URLs: tcp://HOST[:PORT], tls://HOST[:PORT] or rdma://ADDR[:PORT] (a list, even of one)' }),
    blk: z.array(blk).optional().meta({ description: 'block exports (as --blk)' }),
    rng: z.array(rng).optional().meta({ description: 'entropy exports (as --rng)' }),
    redirect: z.array(redirect).optional().meta({ description: 'redirected TVQNs (as --redirect); only IVQNs its allow plus the top-level allow admit learn the URL' }),
    allow: allowList.optional(),
    admin: adminList.optional(),
    auth: z
      .record(
        ivqn,
        z.union([z.string().min(1).meta({ description: 'the secret itself' }), z.strictObject({ file: z.string().min(1).meta({ description: 'a file holding the secret' }) })]),
      )
      .optional()
      .meta({ description: 'in-band authentication secrets: IVQN → "secret" or { "file": PATH }' }),
    queues: z.number().int().min(1).max(64).optional().meta({ description: 'virtqueues per disk (as --queues)', default: 2 }),
    queueSize: z.number().int().min(1).max(1024).optional().meta({ description: 'virtqueue size (as --queue-size)', default: 128 }),
    keepaliveIntervalMs: ms(3_600_000).optional().meta({ description: 'how often the target sends keepalives, ms (0: none)', default: 5000 }),
    keepaliveTimeoutMs: ms(3_600_000, 1).optional().meta({ description: 'an instance silent this long is destroyed, ms', default: 15000 }),
    connectTimeoutMs: ms(3_600_000).optional().meta({ description: 'close connections without a Connect after this long, ms (0: never)', default: DEFAULT_CONNECT_TIMEOUT_MS }),
    sendTimeoutMs: ms(3_600_000).optional().meta({ description: 'close connections whose completions have not moved for this long, ms (0: never)', default: DEFAULT_LIMITS.sendStallTimeoutMs }),
    targetBufferBytes: z.number().int().min(1).optional().meta({ description: 'bytes of VQ buffers all queues together may hold', default: DEFAULT_LIMITS.targetBufferBytes }),
    queueBufferBytes: z.number().int().min(1).optional().meta({ description: 'bytes of VQ buffers one queue may hold', default: DEFAULT_LIMITS.queueBufferBytes }),
    rdmaDeviceMemoryBytes: z.number().int().min(1).optional().meta({ description: 'registered bytes of one RDMA device\'s target request pools at most', default: DEFAULT_LIMITS.rdmaDeviceMemoryBytes }),
    log: z.enum(LOG_LEVELS).optional().meta({ description: 'log level', default: 'info' }),
    quotas: z
      .strictObject({
        instancesPerExport: z.number().int().min(1).max(1_000_000).optional().meta({ description: 'live instances of one export (ENODEV beyond)', default: DEFAULT_QUOTAS.instancesPerExport }),
        instancesPerIvqn: z.number().int().min(1).max(1_000_000).optional().meta({ description: 'live instances of one export per IVQN', default: DEFAULT_QUOTAS.instancesPerIvqn }),
        unboundConnections: z.number().int().min(1).max(1_000_000).optional().meta({ description: 'connections without a Connect in total; beyond, the oldest is closed', default: DEFAULT_QUOTAS.unboundConnections }),
        unboundPerHost: z.number().int().min(1).max(1_000_000).optional().meta({ description: 'connections without a Connect per peer host', default: DEFAULT_QUOTAS.unboundPerHost }),
      })
      .optional()
      .meta({ description: 'quotas (as the --max-* flags)' }),
    tls: z
      .strictObject({
        cert: z.string().min(1).optional().meta({ description: 'certificate (PEM), with key' }),
        key: z.string().min(1).optional().meta({ description: 'private key (PEM)' }),
        ca: z.string().min(1).optional().meta({ description: 'CA for client certificates (PEM)' }),
        pskFile: z.string().min(1).optional().meta({ description: 'pre-shared keys, lines IDENTITY:HEXKEY' }),
      })
      .optional()
      .meta({ description: 'TLS files (as --tls-*)' }),
    control: z.string().min(1).optional().meta({ description: 'Unix socket for operator commands (vof drain)' }),
    fileIo: z.enum(FILE_IO_MODES).optional().meta({ description: 'block file I/O backend', default: 'VOF_FILE_IO, else auto' }),
    inlineDataBytes: z.number().int().min(0).max(MAX_INLINE_DATA_SIZE).optional().meta({ description: 'RDMA inline data offered (0: off)', default: 4112 }),
  })
  .meta({ title: 'vof target --config', description: 'the settings of vof target as JSON; command-line flags add to them' });

export type TargetConfig = z.infer<typeof targetConfigSchema>;

/** blk[0].path, quotas.unboundPerHost, auth["host-a"]. */
function keyPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const k of path) {
    if (typeof k === 'number') out += `[${k}]`;
    else if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(String(k))) out += out ? `.${String(k)}` : String(k);
    else out += `[${JSON.stringify(String(k))}]`;
  }
  return out || '(top level)';
}

const article = (t: string) => (/^[aeiou]/.test(t) ? `an ${t}` : `a ${t}`);

function describeValue(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (Array.isArray(v)) return 'a list';
  if (v === null) return 'null';
  const s = JSON.stringify(v);
  return typeof v === 'object' ? 'an object' : s.length > 40 ? `${s.slice(0, 40)}…` : s;
}

/** Known keys of the object schema at `path` (for "did you mean"). */
function knownKeys(path: readonly PropertyKey[]): string[] {
  let s: z.ZodType = targetConfigSchema;
  for (const k of path) {
    while (s instanceof z.ZodOptional) s = s.unwrap() as z.ZodType;
    if (s instanceof z.ZodArray) s = s.element as z.ZodType;
    else if (s instanceof z.ZodObject) s = (s.shape as Record<string, z.ZodType>)[String(k)]!;
    else return [];
    if (!s) return [];
  }
  while (s instanceof z.ZodOptional) s = s.unwrap() as z.ZodType;
  return s instanceof z.ZodObject ? Object.keys(s.shape) : [];
}

function input(root: unknown, path: readonly PropertyKey[]): unknown {
  let v = root;
  for (const k of path) v = v && typeof v === 'object' ? (v as Record<PropertyKey, unknown>)[k] : undefined;
  return v;
}

/** One line per problem: "blk[0].path: expected a string, got nothing". */
export function formatConfigIssues(issues: readonly z.core.$ZodIssue[], root: unknown): string[] {
  return issues.map((i) => {
    const at = keyPath(i.path);
    const got = describeValue(input(root, i.path));
    switch (i.code) {
      case 'unrecognized_keys':
        return i.keys
          .map((k) => {
            // "file" for "path" is not a typo but a wrong name: a required key missing beside
            // it is the likely meaning.
            const missing = issues
              .filter((j) => j.code === 'invalid_type' && j.path.length === i.path.length + 1 && i.path.every((p, n) => j.path[n] === p) && input(root, j.path) === undefined)
              .map((j) => String(j.path[j.path.length - 1]));
            const near = closest(k, knownKeys(i.path)) ?? (missing.length === 1 ? missing[0] : undefined);
            return `${keyPath([...i.path, k])}: unknown key${near ? ` (did you mean "${near}"?)` : ''}`;
          })
          .join('\n');
      case 'invalid_type':
        return `${at}: expected ${i.expected === 'array' ? 'a list' : article(i.expected)}${i.expected === 'int' ? ' (integer)' : ''}, got ${got}`;
      case 'too_small':
        return i.origin === 'array' && i.minimum === 1 && i.message.startsWith('is empty')
          ? `${at} ${i.message}`
          : `${at}: expected ${i.origin === 'string' ? 'a non-empty string' : i.origin === 'array' ? `at least ${i.minimum} entries` : `at least ${i.minimum}`}, got ${got}`;
      case 'too_big':
        return `${at}: expected at most ${i.maximum}, got ${got}`;
      case 'invalid_value':
        return `${at}: expected one of ${i.values.map((v) => JSON.stringify(v)).join(', ')}, got ${got}`;
      case 'invalid_union':
        return `${at}: expected ${at.startsWith('auth') ? 'a secret string or { "file": PATH }' : 'an IVQN string or { "ivqn": IVQN, "identity": ID }'}, got ${got}`;
      default:
        return `${at}: ${i.message}, got ${got}`;
    }
  });
}

/** Parse and validate; every problem named with its key path. */
export function parseTargetConfig(text: string, file: string): TargetConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new CliError(`--config ${file}: not JSON: ${(err as Error).message}`);
  }
  const r = targetConfigSchema.safeParse(raw);
  if (!r.success) throw new CliError(`--config ${file}:\n  ${formatConfigIssues(r.error.issues, raw).join('\n  ')}\n(docs/CONFIG.md lists every key)`);
  return r.data;
}

export function readTargetConfig(file: string): TargetConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new CliError(`cannot read --config ${file}: ${(err as Error).message}`, 1);
  }
  return parseTargetConfig(text, file);
}
