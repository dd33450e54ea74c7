import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';

/** "HOST:PORT", with IPv6 hosts bracketed, for URLs and log lines. */
export function formatHostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

export function formatRdmaPeer(host: string, port: number): string {
  return `rdma://${formatHostPort(host, port)}`;
}

/** A numeric address for `host`: itself when it already is one, else its first DNS answer. */
export async function numericHost(host: string): Promise<string> {
  return isIP(host) ? host : (await lookup(host)).address;
}
