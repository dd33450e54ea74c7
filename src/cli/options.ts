import { parseArgs } from 'node:util';
import { CliError } from './cli-error.js';

/**
 * The one source of every command's synopsis: each command declares a table of its options
 * (name, type, value placeholder, one-line description), and both node:util parseArgs' config
 * and the --help / `vof help` text are generated from it, so the two cannot drift.
 */
export interface OptionDef {
  readonly type: 'string' | 'boolean';
  readonly multiple?: boolean;
  readonly short?: string;
  /** Placeholder of the value in the help text (FILE, N, URL...); string options only. */
  readonly arg?: string;
  /** One line: what the option does, its default. */
  readonly desc: string;
  /** Options shared by several commands are listed under the group's name in `vof help`. */
  readonly group?: string;
  /** Internal (used by vof itself): parsed, not shown. */
  readonly hidden?: boolean;
}

export type OptionTable = Readonly<Record<string, OptionDef>>;

export interface CommandSpec<T extends OptionTable = OptionTable> {
  readonly name: string;
  /** Positional arguments as shown in the synopsis: `URL/TVQN`, `SRC DST`. */
  readonly args: string;
  /** One line for `vof help`. */
  readonly summary: string;
  /** More lines for `vof CMD --help` (optional). */
  readonly details?: string;
  readonly options: T;
}

type ValueOf<D extends OptionDef> = D['type'] extends 'boolean'
  ? D['multiple'] extends true
    ? boolean[]
    : boolean
  : D['multiple'] extends true
    ? string[]
    : string;

export type OptionValues<T extends OptionTable> = { [K in keyof T]?: ValueOf<T[K]> };

const HELP: OptionDef = { type: 'boolean', short: 'h', desc: 'print this help and exit' };

/** Edit distance, for "did you mean": small strings only (option names). */
function distance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length]!;
}

/** The candidate closest to `word`, when it is close enough to be what was meant. */
export function closest(word: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestD = Infinity;
  for (const c of candidates) {
    const d = distance(word, c);
    if (d < bestD) [best, bestD] = [c, d];
  }
  // A prefix ("--lis" for "--listen") counts as close whatever its length.
  const prefix = candidates.find((c) => c.startsWith(word) && word.length >= 3);
  if (prefix) return prefix;
  return bestD <= Math.max(2, Math.floor(word.length / 3)) ? best : undefined;
}

function optionLabel(name: string, d: OptionDef): string {
  return `--${name}${d.type === 'string' ? ` ${d.arg ?? 'VALUE'}` : ''}`;
}

/**
 * Parses argv against the command's table. Returns null when -h/--help was given (the help is
 * printed on stdout: the caller exits 0). An unknown flag or a missing value is a usage error
 * (CliError, exit 2) naming the flag and the closest valid one.
 */
export function parseCommand<T extends OptionTable>(
  spec: CommandSpec<T>,
  argv: string[],
): { values: OptionValues<T>; positionals: string[] } | null {
  const options: Record<string, { type: 'string' | 'boolean'; multiple?: boolean; short?: string }> = { help: HELP };
  for (const [name, d] of Object.entries(spec.options)) {
    options[name] = { type: d.type, ...(d.multiple && { multiple: true }), ...(d.short && { short: d.short }) };
  }
  let parsed: { values: Record<string, unknown>; positionals: string[] };
  try {
    parsed = parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw usageError(spec, err as Error & { code?: string });
  }
  if (parsed.values['help']) {
    process.stdout.write(commandHelp(spec));
    return null;
  }
  return { values: parsed.values as OptionValues<T>, positionals: parsed.positionals };
}

function usageError(spec: CommandSpec, err: Error & { code?: string }): CliError {
  const names = Object.keys(spec.options).map((n) => `--${n}`);
  if (err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
    // parseArgs' message quotes the flag as given: find it in argv rather than parse the message.
    const flag = /'([^']+)'/.exec(err.message)?.[1] ?? '?';
    const bare = flag.split('=')[0]!;
    const near = bare.startsWith('--') ? closest(bare, [...names, '--help']) : undefined;
    return new CliError(`unknown option ${bare}${near ? ` (did you mean ${near}?)` : ''}; \`vof ${spec.name} --help\` lists the options`);
  }
  if (err.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') {
    const flag = /'(--[^ ']+)/.exec(err.message)?.[1];
    const d = flag ? spec.options[flag.slice(2)] : undefined;
    if (d?.type === 'boolean') return new CliError(`${flag} takes no value`);
    if (d) return new CliError(`${flag} needs a value: ${optionLabel(flag!.slice(2), d)}`);
  }
  return new CliError(`${err.message}; \`vof ${spec.name} --help\` lists the options`);
}

/** `vof NAME ARGS [--opt X]...`, group options folded into [GROUP options], wrapped. */
export function synopsis(spec: CommandSpec, width = 100): string {
  const parts: string[] = [];
  const groups: string[] = [];
  for (const [name, d] of Object.entries(spec.options)) {
    // Shown once: options the argument synopsis already names are not repeated.
    if (d.hidden || new RegExp(`--${name}(?![\\w-])`).test(spec.args)) continue;
    if (d.group) {
      if (!groups.includes(d.group)) groups.push(d.group);
      continue;
    }
    parts.push(`[${optionLabel(name, d)}]${d.multiple ? '...' : ''}`);
  }
  parts.push(...groups.map((g) => `[${g} options]`));
  const head = `vof ${spec.name}${spec.args ? ` ${spec.args}` : ''}`;
  const lines = [head];
  for (const p of parts) {
    if (lines[lines.length - 1]!.length + 1 + p.length > width) lines.push(' '.repeat(5 + spec.name.length) + p);
    else lines[lines.length - 1] += ` ${p}`;
  }
  return lines.join('\n');
}

function optionLines(entries: Array<[string, OptionDef]>): string[] {
  const labels = entries.map(([n, d]) => `${d.short ? `-${d.short}, ` : '    '}${optionLabel(n, d)}${d.multiple ? ' (repeatable)' : ''}`);
  const w = Math.min(40, Math.max(...labels.map((l) => l.length)));
  return entries.map(([, d], i) => {
    const l = labels[i]!;
    return l.length > w ? `  ${l}\n  ${' '.repeat(w)}  ${d.desc}` : `  ${l.padEnd(w)}  ${d.desc}`;
  });
}

/** `vof CMD --help`: synopsis, what it does, every option with its description. */
export function commandHelp(spec: CommandSpec): string {
  const own = Object.entries(spec.options).filter(([, d]) => !d.group && !d.hidden);
  const out = [`usage: ${synopsis(spec)}`, '', `  ${spec.summary}`];
  if (spec.details) out.push(...spec.details.split('\n').map((l) => (l ? `  ${l}` : l)));
  out.push('', 'options:', ...optionLines([...own, ['help', HELP]]));
  const groups = new Map<string, Array<[string, OptionDef]>>();
  for (const [n, d] of Object.entries(spec.options)) if (d.group) groups.set(d.group, [...(groups.get(d.group) ?? []), [n, d]]);
  for (const [g, entries] of groups) out.push('', `${g} options:`, ...optionLines(entries));
  return `${out.join('\n')}\n`;
}

/** The group's options as one bracketed list (for `vof help`'s footer). */
export function groupSynopsis(table: OptionTable, group: string): string {
  return Object.entries(table)
    .filter(([, d]) => d.group === group)
    .map(([n, d]) => `[${optionLabel(n, d)}]`)
    .join(' ');
}

/** A usage error showing the command's synopsis. */
export function usage(spec: CommandSpec, why?: string): CliError {
  return new CliError(`${why ? `${why}\n` : ''}usage: ${synopsis(spec)}\n(\`vof ${spec.name} --help\` describes the options)`);
}

export const LOG_LEVELS = ['debug', 'info', 'warn', 'error', 'silent'] as const;

/** --log LEVEL: an unknown level is a usage error listing the levels (it used to silence everything). */
export function parseLogLevel(value: string | undefined, fallback: (typeof LOG_LEVELS)[number], where = '--log'): (typeof LOG_LEVELS)[number] {
  if (value === undefined) return fallback;
  if ((LOG_LEVELS as readonly string[]).includes(value)) return value as (typeof LOG_LEVELS)[number];
  const near = closest(value, LOG_LEVELS);
  throw new CliError(`${where} must be one of ${LOG_LEVELS.join(', ')}, got "${value}"${near ? ` (did you mean ${near}?)` : ''}`);
}
