import { DEFAULT_IVQN } from '../initiator/remote-device.js';
import { VofError } from '../initiator/vof-error.js';

/**
 * What to try next after an error the user can fix, or undefined. The error's own message is
 * printed first, unchanged: the hint only adds the likely cause.
 */
export function errorHint(err: Error, argv: readonly string[]): string | undefined {
  const text = `${err.message} ${(err.cause as Error | undefined)?.message ?? ''}`;
  const ivqnGiven = argv.includes('--ivqn') || argv.some((a) => a.startsWith('--ivqn='));
  if ((err instanceof VofError && err.statusName === 'EACLREJECTED') || /\bEACLREJECTED\b/.test(text)) {
    return `unknown TVQN or IVQN not allowed; see --ivqn (this initiator presented ${ivqnGiven ? 'the --ivqn given' : `the default IVQN "${DEFAULT_IVQN}"`})`;
  }
  const tlsUrl = argv.some((a) => a.startsWith('tls://'));
  const tcpUrl = argv.some((a) => a.startsWith('tcp://'));
  if (/alert|handshake|SSL|TLS|certificate|self[- ]signed|psk/i.test(text) && tlsUrl) {
    return 'the TLS handshake failed: check --tls-psk FILE (and --tls-psk-identity) or --tls-ca FILE (and --tls-servername) against the target\'s --tls-* settings';
  }
  if (tcpUrl && (err.name === 'VofConnectionError' || /ECONNRESET/.test(text)) && /closed|ECONNRESET|hang up/i.test(text)) {
    return 'the target closed the connection: is this a tls:// listener? (then use tls://… with --tls-psk or --tls-ca)';
  }
  return undefined;
}
