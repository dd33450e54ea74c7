import net from 'node:net';
import type { Logger } from '../../util/log.js';
import { formatHostPort } from '../address.js';
import type {
  ConnectOptions,
  Endpoint,
  InitiatorConnection,
  ListenOptions,
  Listener,
  TargetConnection,
  Transport,
} from '../transport.js';
import { CompletionReader } from './completion-reader.js';
import { TcpInitiatorConnection, tcpReadOptions } from './tcp-initiator-connection.js';
import { TcpTargetConnection } from './tcp-target-connection.js';

/** Stream data transfers over TCP: one connection per Virtio-oF queue. */
export class TcpTransport implements Transport {
  readonly scheme = 'tcp' as const;

  constructor(private readonly log: Logger) {}

  listen(
    endpoint: Endpoint,
    options: ListenOptions,
    onConnection: (connection: TargetConnection) => void,
  ): Promise<Listener> {
    // allowHalfOpen: a peer that ends its side still gets the completions of what it sent.
    const server = net.createServer({ pauseOnConnect: true, allowHalfOpen: true }, (socket) => {
      onConnection(new TcpTargetConnection(socket, options.maxVqPayload, this.log, { scheme: 'tcp' }, options.sendStallTimeoutMs ?? 0));
    });
    return serveOn(server, endpoint, 'tcp', this.log);
  }

  async connect(endpoint: Endpoint, options: ConnectOptions): Promise<InitiatorConnection> {
    const reader = new CompletionReader();
    const socket = await dial(() => net.connect({ host: endpoint.host, port: endpoint.port, ...tcpReadOptions(reader) }), 'connect', endpoint, 'tcp', options.timeoutMs);
    return new TcpInitiatorConnection(socket, options.maxVqPayload, 'tcp', reader);
  }
}

/**
 * Listen with `server` (plain or TLS) on `endpoint`. Every accepted socket is tracked from its
 * first byte (before a TLS handshake completes) so that close() drops them all.
 */
export function serveOn(server: net.Server, endpoint: Endpoint, scheme: 'tcp' | 'tls', log: Logger): Promise<Listener> {
  const sockets = new Set<net.Socket>();
  server.on('connection', (socket: net.Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(endpoint.port, endpoint.host, () => {
      server.off('error', reject);
      server.on('error', (err) => log.error(`listener ${endpoint.host}: ${err.message}`));
      const addr = server.address() as net.AddressInfo;
      const bound = { host: endpoint.host, port: addr.port };
      resolve({
        endpoint: bound,
        url: `${scheme}://${formatHostPort(bound.host, bound.port)}`,
        close: () =>
          new Promise<void>((res) => {
            for (const s of sockets) s.destroy();
            server.close(() => res());
          }),
      });
    });
  });
}

/** Open a socket with `open` and resolve when `ready` fires (TCP connect, or TLS handshake done). */
export function dial<S extends net.Socket>(
  open: () => S,
  ready: 'connect' | 'secureConnect',
  endpoint: Endpoint,
  scheme: 'tcp' | 'tls',
  timeoutMs: number,
): Promise<S> {
  const where = `${scheme}://${formatHostPort(endpoint.host, endpoint.port)}`;
  return new Promise((resolve, reject) => {
    const socket = open();
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`connect to ${where} timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`connect to ${where} failed: ${err.message}`));
    });
    socket.once(ready, () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      resolve(socket);
    });
  });
}
