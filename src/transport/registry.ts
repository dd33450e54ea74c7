import type { Logger } from '../util/log.js';
import type { Scheme } from './url.js';
import { TcpTransport } from './tcp/tcp-transport.js';
import { TlsTransport } from './tcp/tls-transport.js';
import type { Transport } from './transport.js';

/**
 * The transport for a URL scheme. RDMA is imported only when asked for, so a machine without
 * rdma-core never loads the native addon.
 */
export async function transportFor(scheme: Scheme, log: Logger): Promise<Transport> {
  if (scheme === 'tcp') return new TcpTransport(log);
  if (scheme === 'tls') return new TlsTransport(log);
  // A variable specifier keeps the RDMA module (and its addon) out of TCP-only builds' graph.
  const specifier = './rdma/rdma-transport.js';
  const mod = (await import(specifier)) as { RdmaTransport: new (log: Logger) => Transport };
  return new mod.RdmaTransport(log);
}
