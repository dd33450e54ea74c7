import { DEFAULT_PORT } from '../protocol/constants.js';
import type { Endpoint } from './transport.js';
import { hasControlCharacters, quotePeerString } from '../util/escape.js';

export type Scheme = 'tcp' | 'tls' | 'rdma';

export interface ListenAddress {
  readonly scheme: Scheme;
  readonly endpoint: Endpoint;
}

export interface DeviceAddress extends ListenAddress {
  readonly tvqn: string;
}

export class UrlError extends Error {
  override name = 'UrlError';
}

/** The characters of a host name, an IPv4 literal, or (inside brackets) an IPv6 literal with its zone. */
const HOST = /^(?:\[[0-9A-Za-z:.%_-]+\]|[0-9A-Za-z._-]+)$/;

function parse(url: string): { scheme: Scheme; endpoint: Endpoint; path: string } {
  // A URL reaches logs, terminals and redirect records: refuse what could forge or hide text there.
  if (hasControlCharacters(url)) throw new UrlError(`${quotePeerString(url)} contains control characters: not a Virtio-oF address`);
  const m = /^(tcp|tls|rdma):\/\/(\[[^\]]+\]|[^/:]+)(?::(\d+))?(\/.*)?$/.exec(url);
  if (!m || !HOST.test(m[2]!)) throw new UrlError(`"${url}" is not a Virtio-oF address: expected tcp://HOST[:PORT], tls://HOST[:PORT] or rdma://HOST[:PORT]`);
  const host = m[2]!.startsWith('[') ? m[2]!.slice(1, -1) : m[2]!;
  const port = m[3] === undefined ? DEFAULT_PORT : Number(m[3]);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new UrlError(`bad port in "${url}"`);
  return { scheme: m[1] as Scheme, endpoint: { host, port }, path: m[4] ?? '' };
}

/** tcp://HOST[:PORT] (default port 15771, DECISIONS.md item 5). */
export function parseListenUrl(url: string): ListenAddress {
  const { scheme, endpoint, path } = parse(url);
  if (path !== '' && path !== '/') throw new UrlError(`a listen address has no path: "${url}"`);
  return { scheme, endpoint };
}

/** tcp://HOST[:PORT]/TVQN; the TVQN is percent-decoded. */
export function parseDeviceUrl(url: string): DeviceAddress {
  const { scheme, endpoint, path } = parse(url);
  let tvqn: string;
  try {
    tvqn = decodeURIComponent(path.slice(1));
  } catch {
    throw new UrlError(`bad percent-encoding in the TVQN of "${url}"`);
  }
  if (hasControlCharacters(tvqn)) throw new UrlError(`the TVQN of "${url}" contains control characters`);
  if (!tvqn) throw new UrlError(`no TVQN in "${url}": expected ${scheme}://HOST[:PORT]/TVQN`);
  return { scheme, endpoint, tvqn };
}
