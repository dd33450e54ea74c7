import { constants as cryptoConstants } from 'node:crypto';
import { isIP, type Socket } from 'node:net';
import tls from 'node:tls';
import { quotePeerString } from '../util/escape.js';
import type { Logger } from '../util/log.js';
import { PSK_CIPHERS, TLS_MIN_VERSION, type TlsClientSettings, type TlsServerSettings } from '../transport/tcp/tls-settings.js';
import { pskRefusal, tlsClientOptions, tlsIdentity } from '../transport/tcp/tls-transport.js';

/**
 * How the bridge offers TLS (NetworkBlockDevice doc/proto.md, "TLS support"):
 * - 'require' (FORCEDTLS): every option but NBD_OPT_STARTTLS and NBD_OPT_ABORT is refused with
 *   NBD_REP_ERR_TLS_REQD until TLS is up, and NBD_OPT_EXPORT_NAME before it ends the session;
 * - 'on': a client may upgrade with NBD_OPT_STARTTLS, or go on in plain text.
 */
export type NbdTlsMode = 'require' | 'on';

/** The bridge's TLS credentials (as a vof target's: certificate and key, client CA, PSKs) and its mode. */
export interface NbdTlsSettings extends Omit<TlsServerSettings, 'handshakeTimeoutMs'> {
  /** Default 'require'. */
  readonly mode?: NbdTlsMode;
}

/**
 * Whether every client must prove who it is before it gets the disk: TLS is required, and the
 * handshake can only succeed with a client certificate signed by `ca` or with one of the PSKs
 * (PSKs without a server certificate; with one, a client could finish the handshake on the
 * certificate alone, anonymously). Encryption without client authentication does not count.
 */
export function nbdTlsAuthenticatesClients(s: NbdTlsSettings): boolean {
  if ((s.mode ?? 'require') !== 'require') return false;
  if (s.ca !== undefined) return true;
  return s.cert === undefined && s.psk !== undefined && s.psk.size > 0;
}

/**
 * The server side of NBD_OPT_STARTTLS. Each upgrade hands the accepted socket to a fresh,
 * never-listening tls.Server as a new connection: Node's TLS server then runs the handshake and
 * checks the client certificate against the CA (a bare `new TLSSocket(socket, {isServer})`
 * leaves `authorized` unset), and nothing but public API is used. The settings are checked and
 * the PEM files read once, here.
 */
export class NbdTls {
  readonly required: boolean;
  private readonly serverOptions: tls.TlsOptions;
  private readonly clientCa: boolean;

  constructor(
    private readonly settings: NbdTlsSettings,
    private readonly log: Logger,
  ) {
    const hasCert = settings.cert !== undefined && settings.key !== undefined;
    if ((settings.cert === undefined) !== (settings.key === undefined)) throw new Error('NBD TLS: give both a certificate and its key');
    if (!hasCert && !(settings.psk && settings.psk.size > 0)) throw new Error('NBD TLS needs a certificate and key, or at least one PSK');
    if (settings.ca !== undefined && !hasCert) throw new Error("NBD TLS: client certificates (ca) need the server's own certificate and key");
    this.required = (settings.mode ?? 'require') === 'require';
    this.clientCa = settings.ca !== undefined;
    this.serverOptions = {
      // The NBD protocol asks for TLS 1.2 support, which certificates give; PSKs are used with
      // TLS 1.3 only, as everywhere in vof (an external PSK there fixes the hash, and "the
      // handshake used the PSK" can be checked: see tlsIdentity).
      minVersion: hasCert ? 'TLSv1.2' : TLS_MIN_VERSION,
      // No session tickets, so no resumption: a resumed session would skip the PSK and
      // certificate checks.
      secureOptions: cryptoConstants.SSL_OP_NO_TICKET,
      ...(hasCert && { cert: settings.cert, key: settings.key }),
      // With a client CA a certificate is asked for; whether it verified is judged after the
      // handshake (tlsIdentity), so the log can say why a client was refused (with
      // rejectUnauthorized, Node would drop it without a word).
      ...(settings.ca !== undefined && { ca: settings.ca, requestCert: true, rejectUnauthorized: false }),
      ...(!hasCert && { ciphers: PSK_CIPHERS }),
    };
  }

  /**
   * Run the TLS handshake on `raw` (right after NBD_REP_ACK to NBD_OPT_STARTTLS); resolves with
   * the TLS socket and the identity the handshake proved (none for an anonymous client), or
   * rejects with why it failed. Bytes the client already sent wait in `raw`'s read buffer,
   * which the TLS socket consumes first.
   */
  upgrade(raw: Socket, peer: string): Promise<{ socket: tls.TLSSocket; identity: string | undefined }> {
    const psk = this.settings.psk;
    // The identity whose key pskCallback handed to OpenSSL: an offer, not yet a proof.
    let offeredPsk: string | undefined;
    const server = tls.createServer({
      ...this.serverOptions,
      ...(psk && {
        pskCallback: (_socket: tls.TLSSocket, identity: string) => {
          const key = psk.get(identity);
          if (!key) {
            this.log.info(`nbd ${peer}: unknown PSK identity ${quotePeerString(identity)}`);
            return null;
          }
          offeredPsk = identity;
          return key;
        },
      }),
    });
    return new Promise((resolve, reject) => {
      server.once('secureConnection', (socket: tls.TLSSocket) => {
        const proved = tlsIdentity(socket, offeredPsk, this.clientCa);
        if ('refused' in proved) {
          socket.destroy();
          reject(new Error(`client refused: ${proved.refused}`));
          return;
        }
        resolve({ socket, identity: proved.identity });
      });
      server.once('tlsClientError', (err: Error & { reason?: string; code?: string }) => {
        // OpenSSL's message spans lines; its reason is the one-line summary.
        reject(new Error(err.reason ?? err.code ?? err.message.split('\n')[0]));
      });
      raw.once('close', () => reject(new Error('connection closed during the TLS handshake')));
      server.emit('connection', raw);
    });
  }
}

/**
 * The client side of NBD_OPT_STARTTLS, for a target whose storage is an nbds:// source: the TLS
 * handshake on the raw socket right after the server's NBD_REP_ACK, with the same trust rules
 * as vof's own TLS initiator (a CA or Node's bundle and the host name, or a PSK that the server
 * must actually use).
 */
export function nbdClientStartTls(settings: TlsClientSettings, host: string | undefined): (raw: Socket) => Promise<tls.TLSSocket> {
  return (raw) =>
    new Promise((resolve, reject) => {
      // (RFC 6066 allows no IP address as the server name: those are checked through `host`.)
      const servername = settings.servername ?? (host !== undefined && isIP(host) === 0 ? host : undefined);
      const socket = tls.connect({ socket: raw, ...(host !== undefined && { host }), ...(servername !== undefined && { servername }), ...tlsClientOptions(settings) });
      socket.once('error', reject);
      socket.once('secureConnect', () => {
        socket.off('error', reject);
        const refused = pskRefusal(socket, settings, 'NBD server');
        if (refused) {
          socket.destroy();
          return reject(new Error(`TLS: ${refused}`));
        }
        resolve(socket);
      });
    });
}
