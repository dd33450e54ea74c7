import { constants as cryptoConstants } from 'node:crypto';
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
import { OldestFirstAdmission } from '../../util/oldest-first-admission.js';
import { formatHostPort } from '../address.js';
import { PSK_CIPHERS, TLS_MIN_VERSION, type TlsClientSettings } from './tls-settings.js';

const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;

/**
 * TCP with TLS 1.3 around every connection (tls://HOST[:PORT]). The PDUs inside are exactly the
 * TCP transport's; what TLS adds is confidentiality and an authenticated peer identity, which
 * the target's allow-lists and virtqueue binding rule check (docs/PROTOCOL.md, "TLS").
 */
export class TlsTransport implements Transport {
  readonly scheme = 'tls' as const;

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
    // The identity whose key pskCallback handed to OpenSSL. That is only what the client
    // *offered*: OpenSSL may still drop the PSK (a suite with another hash, say) and finish the
    // handshake on the certificate without ever checking the binder. It becomes the connection's
    // identity only when the handshake really used it (tlsIdentity below).
    const offeredPsk = new WeakMap<tls.TLSSocket, string>();
    const server = tls.createServer({
      // A peer that ends its side still gets the completions of what it sent (as on tcp://).
      allowHalfOpen: true,
      minVersion: TLS_MIN_VERSION,
      // No session tickets, so no resumption: a resumed session would skip pskCallback and the
      // certificate check, and "the handshake used a PSK" (isSessionReused) would be ambiguous.
      secureOptions: cryptoConstants.SSL_OP_NO_TICKET,
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
          offeredPsk.set(socket, identity);
          return key;
        },
      }),
    });
    // Handshakes in progress are bounded from the first byte (each holds OpenSSL state and a
    // socket), with the target's limits for connections without Connect: oldest first out.
    const limits = options.handshakeLimits;
    const handshaking = limits ? new OldestFirstAdmission<net.Socket>(limits) : null;
    const byPeer = new Map<string, net.Socket>();
    const peerKey = (s: net.Socket) => `${s.remoteAddress}:${s.remotePort}`;
    if (handshaking) {
      server.on('connection', (raw: net.Socket) => {
        const key = peerKey(raw);
        byPeer.set(key, raw);
        raw.once('close', () => {
          handshaking.settle(raw);
          if (byPeer.get(key) === raw) byPeer.delete(key);
        });
        for (const old of handshaking.admit(raw, raw.remoteAddress ?? '')) {
          this.log.warn(`tls://${old.remoteAddress}:${old.remotePort}: closed during its TLS handshake to make room for tls://${key} (limit of connections without Connect reached)`);
          old.destroy();
        }
      });
    }
    server.on('secureConnection', (socket: tls.TLSSocket) => {
      const peer = `tls://${socket.remoteAddress}:${socket.remotePort}`;
      if (handshaking) {
        // Handed to the target, which counts it from here until its Connect.
        const raw = byPeer.get(peerKey(socket));
        if (raw) handshaking.settle(raw);
        byPeer.delete(peerKey(socket));
      }
      const proved = tlsIdentity(socket, offeredPsk.get(socket), settings.ca !== undefined);
      if ('refused' in proved) {
        this.log.info(`${peer}: TLS client refused: ${proved.refused}`);
        socket.destroy();
        return;
      }
      onConnection(
        new TcpTargetConnection(socket, options.maxVqPayload, this.log, { scheme: 'tls', identity: proved.identity }, options.sendStallTimeoutMs ?? 0),
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
    const socket = await dial(
      () =>
        withTlsSummaries(tls.connect({ host: endpoint.host, port: endpoint.port, ...tlsClientOptions(s) })),
      'secureConnect',
      endpoint,
      'tls',
      options.timeoutMs,
    );
    const refused = pskRefusal(socket, s);
    if (refused) {
      socket.destroy();
      throw new Error(`connect to tls://${formatHostPort(endpoint.host, endpoint.port)} failed: TLS: ${refused}`);
    }
    // TLS 1.3: the target checks a client certificate after the initiator's handshake is done,
    // so its refusal arrives as an alert on the open connection.
    withTlsSummaries(socket);
    return new TcpInitiatorConnection(socket, options.maxVqPayload, 'tls');
  }
}

/**
 * A TLS client's options for these settings (vof's initiator, and the target's NBD client of
 * an nbds:// source): TLS 1.3, the trust store or CA, a client certificate, or a PSK.
 */
export function tlsClientOptions(s: TlsClientSettings): tls.ConnectionOptions {
  const psk = s.psk;
  return {
    minVersion: TLS_MIN_VERSION,
    // Node checks the certificate against `servername`, else `host` (names and IP addresses).
    ...(s.servername !== undefined && { servername: s.servername }),
    ...(s.ca !== undefined && { ca: s.ca }),
    ...(s.cert !== undefined && { cert: s.cert }),
    ...(s.key !== undefined && { key: s.key }),
    ...(psk && {
      ciphers: PSK_CIPHERS,
      pskCallback: () => ({ psk: psk.key, identity: psk.identity }),
      // A PSK handshake has no certificate to check; that the PSK was used is checked after it (pskRefusal).
      checkServerIdentity: () => undefined,
    }),
  };
}

/**
 * Why a finished client handshake does not prove the server, or null. With a PSK only the key
 * proves it: a server that ignores the PSK and shows a certificate instead (any the trust store
 * accepts) must not be taken for it. These clients never resume a session, so "reused" means
 * exactly "the handshake used our PSK".
 */
export function pskRefusal(socket: tls.TLSSocket, s: TlsClientSettings, who = 'target'): string | null {
  const psk = s.psk;
  if (!psk || socket.isSessionReused()) return null;
  return (
    `the ${who} did not use the PSK of identity ${quotePeerString(psk.identity)} ` +
    `(it answered with a certificate instead): it does not hold that key, so it is not the ${who} the PSK names`
  );
}

/**
 * The identity a target-side handshake proved, or why the connection is refused. Only what the
 * handshake authenticated counts (docs/PROTOCOL.md, "TLS"):
 * - a PSK identity when the handshake really used that PSK (its binder verified; with tickets
 *   off, OpenSSL marks exactly that as a reused session);
 * - otherwise, with a client CA, the verified certificate's subject CN;
 * - otherwise none (an anonymous TLS peer).
 * `offeredPsk` is the identity pskCallback found a key for: an offer, not a proof.
 */
export function tlsIdentity(
  socket: Pick<tls.TLSSocket, 'isSessionReused' | 'authorized' | 'authorizationError' | 'getPeerCertificate'>,
  offeredPsk: string | undefined,
  clientCa: boolean,
): { identity: string | undefined } | { refused: string } {
  if (offeredPsk !== undefined && socket.isSessionReused()) return { identity: offeredPsk };
  if (!clientCa) return { identity: undefined };
  const cn = socket.authorized ? socket.getPeerCertificate().subject?.CN : undefined;
  if (typeof cn === 'string' && cn !== '') return { identity: cn };
  const why = socket.authorized ? 'its certificate has no single subject CN' : String(socket.authorizationError ?? 'no client certificate');
  return { refused: offeredPsk === undefined ? why : `${why} (it offered PSK identity ${quotePeerString(offeredPsk)} but the handshake did not use it)` };
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
