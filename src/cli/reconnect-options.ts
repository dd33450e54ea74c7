import type { ReconnectOptions } from '../initiator/reconnect-policy.js';
import type { Scheme } from '../url.js';
import { CliError, parseIntOption } from './cli-error.js';

/** How far redirects (and drains) may lead: every command that connects takes these. */
export const REDIRECT_OPTIONS = {
  'max-redirects': { type: 'string' },
  'allow-redirect-to': { type: 'string' },
} as const;

export const REDIRECT_USAGE = '[--max-redirects N] [--allow-redirect-to tcp,tls,rdma]';

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
  'reconnect-delay': { type: 'string' },
  'ctrl-loss-tmo': { type: 'string' },
  'fast-io-fail-tmo': { type: 'string' },
  ...REDIRECT_OPTIONS,
} as const;

/** CLI defaults: reconnect every 2 s for up to 600 s (nvme-cli's ctrl_loss_tmo), I/O held meanwhile. */
export const CLI_RECONNECT_DEFAULTS = { delaySeconds: 2, lossSeconds: 600, fastFailSeconds: -1 };

export const RECONNECT_USAGE = `[--reconnect-delay S] [--ctrl-loss-tmo S|-1] [--fast-io-fail-tmo S|-1] ${REDIRECT_USAGE}`;

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
