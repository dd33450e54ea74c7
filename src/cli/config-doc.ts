import { z } from 'zod';
import { targetConfigSchema } from './target-config.js';

/**
 * docs/CONFIG.md, written from the schema (z.toJSONSchema): every key with its type, default
 * and description. `node scripts/config-doc.mjs` rewrites the file; test/cli-config.test.ts
 * checks that it matches, so the document cannot drift from what the target accepts.
 */
type Json = {
  type?: string | string[];
  properties?: Record<string, Json>;
  required?: string[];
  items?: Json;
  anyOf?: Json[];
  enum?: unknown[];
  additionalProperties?: Json | boolean;
  propertyNames?: Json;
  description?: string;
  default?: unknown;
  minimum?: number;
  maximum?: number;
  minItems?: number;
  minLength?: number;
  title?: string;
};

function typeOf(s: Json): string {
  if (s.anyOf) return s.anyOf.map(typeOf).join(' or ');
  if (s.enum) return s.enum.map((v) => JSON.stringify(v)).join(' \\| ');
  if (s.type === 'array') return `list of ${s.items ? typeOf(s.items) : 'values'}${s.minItems ? ` (at least ${s.minItems})` : ''}`;
  if (s.type === 'object') {
    if (s.properties) return `{ ${Object.keys(s.properties).map((k) => `"${k}"`).join(', ')} }`;
    if (s.additionalProperties && typeof s.additionalProperties === 'object') return `object: IVQN → ${typeOf(s.additionalProperties)}`;
    return 'object';
  }
  const range =
    s.type === 'integer' && (s.minimum !== undefined || s.maximum !== undefined)
      ? ` ${s.minimum ?? ''}–${s.maximum !== undefined && s.maximum < Number.MAX_SAFE_INTEGER ? s.maximum : ''}`
      : '';
  return `${s.type ?? 'any'}${range}`;
}

function rows(s: Json, prefix: string, out: string[]): void {
  for (const [key, p] of Object.entries(s.properties ?? {})) {
    const path = `${prefix}${key}`;
    const required = s.required?.includes(key) ? 'yes' : '';
    const def = p.default === undefined ? '' : `\`${JSON.stringify(p.default)}\``;
    out.push(`| \`${path}\` | ${typeOf(p).replace(/\|(?! )/g, '\\|')} | ${required} | ${def} | ${p.description ?? ''} |`);
    const item = p.type === 'array' ? p.items : p;
    if (item?.type === 'object' && item.properties) rows(item, `${path}${p.type === 'array' ? '[]' : ''}.`, out);
  }
}

export function configDoc(): string {
  const schema = z.toJSONSchema(targetConfigSchema, { io: 'input', unrepresentable: 'any' }) as Json;
  const table: string[] = ['| key | type | required | default | meaning |', '| --- | --- | --- | --- | --- |'];
  rows(schema, '', table);
  return [
    '# vof target --config',
    '',
    '<!-- Generated from src/cli/target-config.ts by `node scripts/config-doc.mjs`; do not edit. -->',
    '',
    '`vof target --config FILE` reads these settings as JSON; command-line flags add to them (lists',
    'are joined, single values from a flag win). The file is validated before anything is opened:',
    'an unknown key, a wrong type or a value out of range is an error naming the key path and what',
    'was expected (`blk[0].path: expected a string, got nothing`), exit code 2.',
    '',
    '`a[].b` is key `b` of each entry of list `a`. An absent key means its default, applied by the',
    'code that uses it. `admin` (admin grants) and `auth` (in-band authentication secrets) are',
    'validated here; what they grant is described with the features that consume them.',
    '',
    ...table,
    '',
    'Example:',
    '',
    '```json',
    '{ "listen": ["tcp://0.0.0.0:15771", "tls://0.0.0.0:15772"],',
    '  "blk": [{ "tvqn": "disk0", "path": "/srv/disk0.img", "queues": 4,',
    '            "allow": ["host-a", { "ivqn": "host-b", "identity": "host-b" }] }],',
    '  "rng": [{ "tvqn": "rng0", "rate": 65536 }],',
    '  "tls": { "cert": "/etc/vof/target.crt", "key": "/etc/vof/target.key", "pskFile": "/etc/vof/psk.txt" },',
    '  "keepaliveIntervalMs": 5000, "log": "info" }',
    '```',
    '',
  ].join('\n');
}
