import type { ReconnectOptions } from '../initiator/reconnect-policy.js';
import { CliError, parseIntOption } from './cli-error.js';

/** nvme-cli style reconnect knobs, in seconds (fractions allowed); -1 = forever / never. */
export const RECONNECT_OPTIONS = {
  'reconnect-delay': { type: 'string' },
  'ctrl-loss-tmo': { type: 'string' },
  'fast-io-fail-tmo': { type: 'string' },
  'max-redirects': { type: 'string' },
} as const;

/** CLI defaults: reconnect every 2 s for up to 600 s (nvme-cli's ctrl_loss_tmo), I/O held meanwhile. */
export const CLI_RECONNECT_DEFAULTS = { delaySeconds: 2, lossSeconds: 600, fastFailSeconds: -1 };

export const RECONNECT_USAGE = '[--reconnect-delay S] [--ctrl-loss-tmo S|-1] [--fast-io-fail-tmo S|-1] [--max-redirects N]';

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
}): ReconnectOptions & { maxRedirects?: number } {
  const d = CLI_RECONNECT_DEFAULTS;
  const hops = parseIntOption(values['max-redirects'], 'max-redirects', 0, 64);
  return {
    ...(hops !== undefined && { maxRedirects: hops }),
    reconnectDelayMs: ms(seconds(values['reconnect-delay'], 'reconnect-delay', d.delaySeconds, false)),
    ctrlLossTimeoutMs: ms(seconds(values['ctrl-loss-tmo'], 'ctrl-loss-tmo', d.lossSeconds, true)),
    fastIoFailTimeoutMs: ms(seconds(values['fast-io-fail-tmo'], 'fast-io-fail-tmo', d.fastFailSeconds, true)),
  };
}
