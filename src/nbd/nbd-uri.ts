import { hasControlCharacters, quotePeerString } from '../util/escape.js';
import { NBD_DEFAULT_PORT } from './nbd-protocol.js';
import type { NbdAddress } from './nbd-client.js';

/**
 * An NBD source named the way NBD's URI specification (NetworkBlockDevice doc/uri.md) and
 * qemu/libnbd write it: `nbd://HOST[:PORT]/EXPORT`, `nbds://…` (TLS), `nbd+unix:///EXPORT?socket=PATH`
 * and `nbds+unix:///EXPORT?socket=PATH`. The export name is percent-decoded; an empty one is the
 * server's default export.
 */
export interface NbdSourceUri {
  readonly address: NbdAddress;
  readonly exportName: string;
  readonly tls: boolean;
  /** For logs: the URI as given (it carries no secrets: TLS material comes from options). */
  readonly text: string;
}

export class NbdUriError extends Error {
  override readonly name = 'NbdUriError';
}

const NBD_SCHEMES = /^(nbds?)(\+unix)?:\/\//;

/** Does this look like an NBD URI (so that --blk takes it as one rather than as a path)? */
export function isNbdUri(text: string): boolean {
  return NBD_SCHEMES.test(text);
}

export function parseNbdUri(text: string): NbdSourceUri {
  if (hasControlCharacters(text)) throw new NbdUriError(`${quotePeerString(text)} contains control characters`);
  const scheme = NBD_SCHEMES.exec(text);
  if (!scheme) throw new NbdUriError(`"${text}" is not an NBD URI: expected nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH`);
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new NbdUriError(`"${text}" is not a valid NBD URI`);
  }
  const tls = scheme[1] === 'nbds';
  const unix = scheme[2] !== undefined;
  let exportName: string;
  try {
    exportName = decodeURIComponent(url.pathname.replace(/^\//, ''));
  } catch {
    throw new NbdUriError(`bad percent-encoding in the export name of "${text}"`);
  }
  if (hasControlCharacters(exportName)) throw new NbdUriError(`the export name of "${text}" contains control characters`);
  if (Buffer.byteLength(exportName) > 4096) throw new NbdUriError(`the export name of "${text}" is over 4096 bytes`);
  for (const key of url.searchParams.keys()) {
    if (key !== 'socket') throw new NbdUriError(`"${text}": query parameter "${key}" is not supported (only socket=PATH with nbd+unix)`);
  }
  if (unix) {
    if (url.host !== '') throw new NbdUriError(`"${text}": an nbd+unix URI has no host (nbd+unix:///EXPORT?socket=PATH)`);
    const path = url.searchParams.get('socket');
    if (!path) throw new NbdUriError(`"${text}": nbd+unix needs ?socket=PATH`);
    return { address: { kind: 'unix', path }, exportName, tls, text };
  }
  if (url.searchParams.has('socket')) throw new NbdUriError(`"${text}": socket= belongs to nbd+unix URIs`);
  const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
  if (!host) throw new NbdUriError(`"${text}" has no host`);
  const port = url.port === '' ? NBD_DEFAULT_PORT : Number(url.port);
  return { address: { kind: 'tcp', host, port }, exportName, tls, text };
}
