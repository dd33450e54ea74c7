/**
 * Minimal leveled logger. Protocol violations and lifecycle events go through here so a
 * target operator sees one line per event; tests can capture or silence it.
 */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'silent';
const order: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 99 };

export interface Logger {
  debug(msg: string): void;
  info(msg: string): void;
  warn(msg: string): void;
  error(msg: string): void;
}

export type LogSink = (level: Exclude<LogLevel, 'silent'>, msg: string) => void;

const stderrSink: LogSink = (level, msg) => {
  process.stderr.write(`${new Date().toISOString()} ${level.padEnd(5)} ${msg}\n`);
};

export function createLogger(level: LogLevel = 'info', sink: LogSink = stderrSink, prefix = ''): Logger {
  const min = order[level];
  const at = (l: Exclude<LogLevel, 'silent'>) => (msg: string) => {
    if (order[l] >= min) sink(l, prefix ? `${prefix} ${msg}` : msg);
  };
  return { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

export const silentLogger: Logger = createLogger('silent');

/** Default for library users: warnings and errors only, overridable with VOF_LOG. */
export function defaultLogger(): Logger {
  const env = process.env['VOF_LOG'] as LogLevel | undefined;
  return createLogger(env && env in order ? env : 'warn');
}
