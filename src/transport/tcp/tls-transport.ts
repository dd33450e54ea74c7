import type net from 'node:net';
import tls from 'node:tls';
import { quotePeerString } from '../../util/escape.js';
import type { Logger } from '../../util/log.js';
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
import { dial, serveOn } from './tcp-transport.js';
import { PSK_CIPHERS, TLS_MIN_VERSION, type TlsClientSettings } from './tls-settings.js';

const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;

/**
 * TCP with TLS 1.3 around every connection (tls://HOST[:PORT]). The PDUs inside are exactly the
 * TCP transport's; what TLS adds is confidentiality and an authenticated peer identity, which
 * the target's allow-lists and virtqueue binding rule check (docs/PROTOCOL.md, "TLS").
 */
export class TlsTransport implements Transport {
  readonly scheme = 'tls' as const;
  readonly kind = 'stream' as const;

  constructor(private readonly log: Logger) {}

  listen(
    endpoint: Endpoint,
    options: ListenOptions,
    onConnection: (connection: TargetConnection) => void,
  ): Promise<Listener> {
    const settings = options.tls;
    if (!settings) throw new Error('a tls:// listener needs TLS settings (a certificate and key, and/or PSKs)');
    const hasCert = settings.cert !== undefined && settings.key !== undefined;
    if (!hasCert && !(settings.psk && settings.psk.size > 0)) {
      throw new Error('a tls:// listener needs a certificate and key, or at least one PSK');
    }
    if ((settings.cert === undefined) !== (settings.key === undefined)) throw new Error('TLS: give both a certificate and its key');
    // Which PSK identity each handshake proved (the callback runs before secureConnection).
    const pskIdentities = new WeakMap<tls.TLSSocket, string>();
    const server = tls.createServer({
      // A peer that ends its side still gets the completions of what it sent (as on tcp://).
      allowHalfOpen: true,
      minVersion: TLS_MIN_VERSION,
      handshakeTimeout: settings.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS,
      ...(hasCert && { cert: settings.cert, key: settings.key }),
      // With a client CA, OpenSSL refuses a missing or unverifiable certificate in the handshake
      // with an alert the initiator can report. A PSK handshake has no certificate and is not
      // affected (it counts as authorized).
      ...(settings.ca !== undefined && { ca: settings.ca, requestCert: true, rejectUnauthorized: true }),
      ...(settings.psk && {
        ...(!hasCert && { ciphers: PSK_CIPHERS }),
        pskCallback: (socket: tls.TLSSocket, identity: string) => {
          const key = settings.psk!.get(identity);
          if (!key) {
            this.log.info(`tls://${socket.remoteAddress}:${socket.remotePort}: unknown PSK identity ${quotePeerString(identity)}`);
            return null;
          }
          pskIdentities.set(socket, identity);
          return key;
        },
      }),
    });
    server.on('secureConnection', (socket: tls.TLSSocket) => {
      const peer = `tls://${socket.remoteAddress}:${socket.remotePort}`;
      let identity = pskIdentities.get(socket);
      if (identity === undefined && settings.ca !== undefined) {
        const cn = socket.authorized ? socket.getPeerCertificate().subject?.CN : undefined;
        if (typeof cn !== 'string' || cn === '') {
          const why = socket.authorized ? 'its certificate has no single subject CN' : String(socket.authorizationError ?? 'no client certificate');
          this.log.info(`${peer}: TLS client refused: ${why}`);
          socket.destroy();
          return;
        }
        identity = cn;
      }
      onConnection(
        new TcpTargetConnection(socket, options.maxVqPayload, this.log, { scheme: 'tls', identity }, options.sendStallTimeoutMs ?? 0),
      );
    });
    server.on('tlsClientError', (err: Error & { reason?: string; code?: string }, socket: tls.TLSSocket) => {
      // OpenSSL's message spans lines; its reason is the one-line summary.
      const why = err.reason ?? err.code ?? err.message.split('\n')[0];
      const peer = socket.remoteAddress ? `tls://${socket.remoteAddress}:${socket.remotePort}` : 'tls://(peer gone)';
      this.log.info(`${peer}: TLS handshake failed: ${why}`);
    });
    return serveOn(server as net.Server, endpoint, 'tls', this.log);
  }

  async connect(endpoint: Endpoint, options: ConnectOptions): Promise<InitiatorConnection> {
    const s: TlsClientSettings = options.tls ?? {};
    const psk = s.psk;
    const socket = await dial(
      () =>
        withTlsSummaries(tls.connect({
          host: endpoint.host,
          port: endpoint.port,
          minVersion: TLS_MIN_VERSION,
          // Node checks the certificate against `host` (names and IP addresses) unless told otherwise.
          ...(s.servername !== undefined && { servername: s.servername }),
          ...(s.ca !== undefined && { ca: s.ca }),
          ...(s.cert !== undefined && { cert: s.cert }),
          ...(s.key !== undefined && { key: s.key }),
          ...(psk && {
            ciphers: PSK_CIPHERS,
            pskCallback: () => ({ psk: psk.key, identity: psk.identity }),
            // With a PSK the key proves the target; there is no certificate to check.
            checkServerIdentity: () => undefined,
          }),
        })),
      'secureConnect',
      endpoint,
      'tls',
      options.timeoutMs,
    );
    // TLS 1.3: the target checks a client certificate after the initiator's handshake is done,
    // so its refusal arrives as an alert on the open connection.
    withTlsSummaries(socket);
    return new TcpInitiatorConnection(socket, options.maxVqPayload, 'tls');
  }
}

/**
 * OpenSSL's error messages span several lines of library internals; its `reason` ("tlsv13
 * alert certificate required", "self-signed certificate in certificate chain") is what a user
 * needs. Rewrites the message of every error the socket emits, before other listeners see it.
 */
function withTlsSummaries(socket: tls.TLSSocket): tls.TLSSocket {
  socket.prependListener('error', (err: Error & { reason?: string }) => {
    if (typeof err.reason === 'string' && err.reason !== '') err.message = `TLS: ${err.reason}`;
  });
  return socket;
}
