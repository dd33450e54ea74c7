/**
 * TLS credentials for the tls:// variant of the TCP transport (docs/PROTOCOL.md, "TLS").
 * Two ways to authenticate, usable together on one target:
 * - PSK: the initiator proves it holds the key of a PSK identity (TLS 1.3 external PSK);
 * - certificates: the target presents cert/key; with `ca`, every initiator without a PSK must
 *   present a client certificate that CA signed, and its subject CN is its identity.
 */
export interface TlsServerSettings {
  /** PEM certificate (chain) of the target. */
  readonly cert?: string | Buffer;
  /** PEM private key of `cert`. */
  readonly key?: string | Buffer;
  /** PEM CA certificate(s) that sign client certificates; requires client certificates. */
  readonly ca?: string | Buffer;
  /** PSK identity → key (at least 16 bytes). */
  readonly psk?: ReadonlyMap<string, Buffer>;
  /** Drop a connection whose handshake has not completed after this long (default 10 s). */
  readonly handshakeTimeoutMs?: number;
}

export interface TlsClientSettings {
  /** PEM CA certificate(s) trusted for the target's certificate (default: Node's bundled CAs). */
  readonly ca?: string | Buffer;
  /** PEM client certificate and key, for targets that require one. */
  readonly cert?: string | Buffer;
  readonly key?: string | Buffer;
  /** Authenticate with a pre-shared key instead of certificates. */
  readonly psk?: { readonly identity: string; readonly key: Buffer };
  /** Name the target's certificate must carry (default: the URL's host). */
  readonly servername?: string;
}

/** TLS 1.3 only; PSKs are used with the SHA-256 suites (an external PSK fixes the hash). */
export const TLS_MIN_VERSION = 'TLSv1.3';
export const PSK_CIPHERS = 'TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256';
export const MIN_PSK_BYTES = 16;

/**
 * A PSK file: one `IDENTITY:HEXKEY` per line (the identity is everything before the last ":");
 * blank lines and lines starting with "#" are ignored.
 */
export function parsePskFile(text: string, what = 'PSK file'): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (!line || line.startsWith('#')) return;
    const colon = line.lastIndexOf(':');
    const identity = colon > 0 ? line.slice(0, colon) : '';
    const hex = colon > 0 ? line.slice(colon + 1) : '';
    if (!identity || !/^(?:[0-9a-fA-F]{2})+$/.test(hex)) {
      throw new Error(`${what} line ${i + 1}: expected IDENTITY:HEXKEY`);
    }
    const key = Buffer.from(hex, 'hex');
    if (key.length < MIN_PSK_BYTES) throw new Error(`${what} line ${i + 1}: key of ${key.length} bytes, at least ${MIN_PSK_BYTES}`);
    if (out.has(identity)) throw new Error(`${what} line ${i + 1}: identity "${identity}" appears twice`);
    out.set(identity, key);
  });
  if (out.size === 0) throw new Error(`${what} lists no PSK`);
  return out;
}
