import type { ReconnectOptions } from '../util/reconnect-policy.js';
import type { Scheme } from '../transport/url.js';
import { CliError, parseIntOption } from './cli-error.js';
import type { OptionTable } from './options.js';

/** How far redirects (and drains) may lead: every command that connects takes these. */
export const REDIRECT_OPTIONS = {
  'max-redirects': { type: 'string', arg: 'N', group: 'redirect', desc: 'follow at most N redirects (default 8, 0: none)' },
  'allow-redirect-to': {
    type: 'string',
    arg: 'tcp,tls,rdma',
    group: 'redirect',
    desc: 'transports a redirect may move to (default: the URL\'s own, or tcp:// raised to tls://)',
  },
} as const satisfies OptionTable;

const SCHEMES: readonly Scheme[] = ['tcp', 'tls', 'rdma'];

/** --max-redirects N and --allow-redirect-to LIST (comma-separated schemes). */
export function redirectSettings(values: { 'max-redirects'?: string; 'allow-redirect-to'?: string }): {
  maxRedirects?: number;
  allowRedirectTo?: Scheme[];
} {
  const hops = parseIntOption(values['max-redirects'], 'max-redirects', 0, 64);
  const list = values['allow-redirect-to'];
  let allowed: Scheme[] | undefined;
  if (list !== undefined) {
    allowed = list.split(',').map((x) => x.trim().toLowerCase()) as Scheme[];
    const bad = allowed.filter((x) => !SCHEMES.includes(x));
    if (bad.length > 0 || allowed.length === 0) {
      throw new CliError(`--allow-redirect-to takes a comma-separated list of ${SCHEMES.join(', ')}, got "${list}"`);
    }
  }
  return { ...(hops !== undefined && { maxRedirects: hops }), ...(allowed && { allowRedirectTo: allowed }) };
}

/** nvme-cli style reconnect knobs, in seconds (fractions allowed); -1 = forever / never. */
export const RECONNECT_OPTIONS = {
  'reconnect-delay': { type: 'string', arg: 'S', group: 'reconnect', desc: 'seconds between reconnect attempts (default 2)' },
  'ctrl-loss-tmo': { type: 'string', arg: 'S|-1', group: 'reconnect', desc: 'give the disk up after S seconds without a connection (default 600, -1: never)' },
  'fast-io-fail-tmo': { type: 'string', arg: 'S|-1', group: 'reconnect', desc: 'fail held I/O after S seconds disconnected (default -1: hold it)' },
  ...REDIRECT_OPTIONS,
} as const satisfies OptionTable;

/** CLI defaults: reconnect every 2 s for up to 600 s (nvme-cli's ctrl_loss_tmo), I/O held meanwhile. */
export const CLI_RECONNECT_DEFAULTS = { delaySeconds: 2, lossSeconds: 600, fastFailSeconds: -1 };


function seconds(value: string | undefined, name: string, fallback: number, allowForever: boolean): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || (n < 0 && !(allowForever && n === -1)) || n > 1e6) {
    throw new CliError(`--${name} must be a number of seconds${allowForever ? ' or -1' : ''}, got "${value}"`);
  }
  return n;
}

const ms = (s: number) => (s < 0 ? -1 : Math.round(s * 1000));

export function reconnectSettings(values: {
  'reconnect-delay'?: string;
  'ctrl-loss-tmo'?: string;
  'fast-io-fail-tmo'?: string;
  'max-redirects'?: string;
  'allow-redirect-to'?: string;
}): ReconnectOptions & ReturnType<typeof redirectSettings> {
  const d = CLI_RECONNECT_DEFAULTS;
  return {
    ...redirectSettings(values),
    reconnectDelayMs: ms(seconds(values['reconnect-delay'], 'reconnect-delay', d.delaySeconds, false)),
    ctrlLossTimeoutMs: ms(seconds(values['ctrl-loss-tmo'], 'ctrl-loss-tmo', d.lossSeconds, true)),
    fastIoFailTimeoutMs: ms(seconds(values['fast-io-fail-tmo'], 'fast-io-fail-tmo', d.fastFailSeconds, true)),
  };
}
