import { encodeRedirectRecord, redirectUrl, type RedirectRecord } from '../protocol/redirect-record.js';
import { parseDeviceUrl, UrlError } from '../transport/url.js';

/** Where a TVQN has moved: its record (sent after EREDIRECT) and the URL it names. */
export interface Redirect {
  readonly url: string;
  readonly record: Buffer;
}

/**
 * `URL` or `URL/TVQN2` → a redirect for `tvqn` (same TVQN when the URL has no path). Throws
 * UrlError on anything a record cannot carry.
 */
export function makeRedirect(tvqn: string, url: string): Redirect {
  const hasPath = /^[a-z]+:\/\/(\[[^\]]+\]|[^/]+)\/./.test(url);
  const addr = parseDeviceUrl(hasPath ? url : `${url.replace(/\/$/, '')}/${encodeURIComponent(tvqn)}`);
  if (addr.endpoint.port === 0) throw new UrlError(`redirect ${url}: port 0 cannot be redirected to`);
  const r: RedirectRecord = { scheme: addr.scheme, host: addr.endpoint.host, port: addr.endpoint.port, tvqn: addr.tvqn };
  try {
    return { url: redirectUrl(r), record: encodeRedirectRecord(r) };
  } catch (err) {
    throw new UrlError(`redirect ${url}: ${(err as Error).message}`);
  }
}

/** `TVQN=URL[/TVQN2]`, the --redirect flag. */
export function parseRedirectSpec(spec: string): { tvqn: string; url: string } {
  const eq = spec.indexOf('=');
  if (eq <= 0 || eq === spec.length - 1) throw new UrlError(`--redirect expects TVQN=URL[/TVQN2], got "${spec}"`);
  return { tvqn: spec.slice(0, eq), url: spec.slice(eq + 1) };
}
