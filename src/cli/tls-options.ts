import { readFileSync } from 'node:fs';
import { parsePskFile, type TlsClientSettings, type TlsServerSettings } from '../transport/tcp/tls-settings.js';
import { CliError } from './cli-error.js';
import type { OptionTable } from './options.js';

function readPem(file: string, what: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new CliError(`cannot read ${what} ${file}: ${(err as Error).message}`, 1);
  }
}

function readPsk(file: string, what: string): Map<string, Buffer> {
  try {
    return parsePskFile(readFileSync(file, 'utf8'), `${what} ${file}`);
  } catch (err) {
    throw new CliError((err as Error).message, 1);
  }
}

/** The target's TLS files, from --config ("tls": {...}) and flags (flags win). */
export interface TlsServerFiles {
  cert?: string;
  key?: string;
  ca?: string;
  pskFile?: string;
}

export const TLS_SERVER_OPTIONS = {
  'tls-cert': { type: 'string', arg: 'FILE', desc: 'the target\'s certificate (PEM) for tls:// listeners; with --tls-key' },
  'tls-key': { type: 'string', arg: 'FILE', desc: 'the private key of --tls-cert (PEM)' },
  'tls-ca': { type: 'string', arg: 'FILE', desc: 'ask for client certificates signed by this CA (PEM)' },
  'tls-psk': { type: 'string', arg: 'FILE', desc: 'TLS 1.3 pre-shared keys, lines IDENTITY:HEXKEY' },
} as const satisfies OptionTable;

/**
 * Server-side TLS settings from files; undefined when none was given. `flag` names the flags in
 * messages: `tls` for the target's --tls-*, `nbd-tls` for the NBD bridge's --nbd-tls-*.
 */
export function serverTlsSettings(files: TlsServerFiles, flag = 'tls', server = 'the target'): TlsServerSettings | undefined {
  if (!files.cert && !files.key && !files.ca && !files.pskFile) return undefined;
  if (!files.cert !== !files.key) throw new CliError(`--${flag}-cert and --${flag}-key go together`);
  if (files.ca && !files.cert) throw new CliError(`--${flag}-ca (client certificates) needs ${server}'s own --${flag}-cert and --${flag}-key`);
  return {
    ...(files.cert && { cert: readPem(files.cert, `--${flag}-cert`), key: readPem(files.key!, `--${flag}-key`) }),
    ...(files.ca && { ca: readPem(files.ca, `--${flag}-ca`) }),
    ...(files.pskFile && { psk: readPsk(files.pskFile, `--${flag}-psk`) }),
  };
}

/** Initiator flags shared by vof info and vof cp. */
export const TLS_CLIENT_OPTIONS = {
  'tls-ca': { type: 'string', arg: 'FILE', group: 'TLS', desc: 'trust the target\'s certificate from this CA (PEM; default: Node\'s CA bundle)' },
  'tls-cert': { type: 'string', arg: 'FILE', group: 'TLS', desc: 'client certificate (PEM), with --tls-key' },
  'tls-key': { type: 'string', arg: 'FILE', group: 'TLS', desc: 'the private key of --tls-cert (PEM)' },
  'tls-psk': { type: 'string', arg: 'FILE', group: 'TLS', desc: 'TLS 1.3 pre-shared key file, lines IDENTITY:HEXKEY' },
  'tls-psk-identity': { type: 'string', arg: 'ID', group: 'TLS', desc: 'which identity of --tls-psk (needed when it holds several)' },
  'tls-servername': { type: 'string', arg: 'NAME', group: 'TLS', desc: 'the name the target\'s certificate must carry (default: the URL\'s host)' },
} as const satisfies OptionTable;

export interface TlsClientFlags {
  'tls-ca'?: string | undefined;
  'tls-cert'?: string | undefined;
  'tls-key'?: string | undefined;
  'tls-psk'?: string | undefined;
  'tls-psk-identity'?: string | undefined;
  'tls-servername'?: string | undefined;
}

/** TLS settings from the initiator flags; undefined when none was given. */
export function clientTlsSettings(v: TlsClientFlags): TlsClientSettings | undefined {
  if (!v['tls-ca'] && !v['tls-cert'] && !v['tls-key'] && !v['tls-psk'] && !v['tls-psk-identity'] && !v['tls-servername']) return undefined;
  if (!v['tls-cert'] !== !v['tls-key']) throw new CliError('--tls-cert and --tls-key go together');
  let psk: TlsClientSettings['psk'];
  if (v['tls-psk']) {
    const keys = readPsk(v['tls-psk'], '--tls-psk');
    const wanted = v['tls-psk-identity'];
    if (wanted === undefined && keys.size > 1) throw new CliError(`--tls-psk ${v['tls-psk']} holds ${keys.size} identities: pick one with --tls-psk-identity`);
    const identity = wanted ?? [...keys.keys()][0]!;
    const key = keys.get(identity);
    if (!key) throw new CliError(`--tls-psk ${v['tls-psk']} has no identity "${identity}"`);
    psk = { identity, key };
  } else if (v['tls-psk-identity']) {
    throw new CliError('--tls-psk-identity needs --tls-psk FILE');
  }
  return {
    ...(v['tls-ca'] && { ca: readPem(v['tls-ca'], '--tls-ca') }),
    ...(v['tls-cert'] && { cert: readPem(v['tls-cert'], '--tls-cert'), key: readPem(v['tls-key']!, '--tls-key') }),
    ...(psk && { psk }),
    ...(v['tls-servername'] && { servername: v['tls-servername'] }),
  };
}
