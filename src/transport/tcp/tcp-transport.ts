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
import { TcpInitiatorConnection } from './tcp-initiator-connection.js';
import { TcpTargetConnection } from './tcp-target-connection.js';

/** Stream data transfers over TCP: one connection per Virtio-oF queue. */
export class TcpTransport implements Transport {
  readonly scheme = 'tcp' as const;
  readonly kind = 'stream' as const;

  constructor(private readonly log: Logger) {}

  listen(
    endpoint: Endpoint,
    options: ListenOptions,
    onConnection: (connection: TargetConnection) => void,
  ): Promise<Listener> {
    const sockets = new Set<net.Socket>();
    // allowHalfOpen: a peer that ends its side still gets the completions of what it sent.
    const server = net.createServer({ pauseOnConnect: true, allowHalfOpen: true }, (socket) => {
      sockets.add(socket);
      socket.once('close', () => sockets.delete(socket));
      onConnection(new TcpTargetConnection(socket, options.maxVqPayload, this.log, options.sendStallTimeoutMs ?? 0));
    });
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(endpoint.port, endpoint.host, () => {
        server.off('error', reject);
        server.on('error', (err) => this.log.error(`listener ${endpoint.host}: ${err.message}`));
        const addr = server.address() as net.AddressInfo;
        const bound = { host: endpoint.host, port: addr.port };
        resolve({
          endpoint: bound,
          url: `tcp://${formatHostPort(bound.host, bound.port)}`,
          close: () =>
            new Promise<void>((res) => {
              for (const s of sockets) s.destroy();
              server.close(() => res());
            }),
        });
      });
    });
  }

  connect(endpoint: Endpoint, options: ConnectOptions): Promise<InitiatorConnection> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: endpoint.host, port: endpoint.port });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`connect to tcp://${formatHostPort(endpoint.host, endpoint.port)} timed out after ${options.timeoutMs} ms`));
      }, options.timeoutMs);
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(new Error(`connect to tcp://${formatHostPort(endpoint.host, endpoint.port)} failed: ${err.message}`));
      });
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.removeAllListeners('error');
        resolve(new TcpInitiatorConnection(socket, options.maxVqPayload));
      });
    });
  }
}
