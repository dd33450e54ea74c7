import { readFileSync } from 'node:fs';
import { AuthSecretError, SECRET_KEY_SIZES, generateSecret, parseSecret } from '../protocol/auth.js';
import { CliError } from './cli-error.js';
import { parseCommand, type CommandSpec, type OptionTable } from './options.js';

/**
 * vof in-band authentication on the command line (docs/SECURITY.md "In-band authentication"):
 * the initiators' --auth-secret FILE, the target's --auth-secret IVQN=FILE and config "auth",
 * and vof gen-secret. A secret's text never appears in a message: only the file it came from.
 */

/** Initiator flag shared by vof info, cp, admin and nbd. */
export const AUTH_CLIENT_OPTIONS = {
  'auth-secret': {
    type: 'string',
    arg: 'FILE',
    desc: "the IVQN's in-band authentication secret (vof gen-secret): prove it to the target, require the target to prove it back",
  },
} as const satisfies OptionTable;
export const AUTH_CLIENT_USAGE = '[--auth-secret FILE]';

/** A secret file's content, checked; `where` names it in errors. */
function readSecretFile(file: string, where: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new CliError(`cannot read ${where} ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, 1);
  }
  checkSecret(text, `${where} ${file}`);
  return text.trim();
}

function checkSecret(text: string, where: string): void {
  try {
    parseSecret(text, where);
  } catch (err) {
    if (err instanceof AuthSecretError) throw new CliError(err.message, 1);
    throw err;
  }
}

/** { authSecret } for RemoteDevice/BlockDevice options, from --auth-secret FILE (none: {}). */
export function clientAuthSettings(values: { 'auth-secret'?: string | undefined }): { authSecret?: string } {
  const file = values['auth-secret'];
  return file === undefined ? {} : { authSecret: readSecretFile(file, '--auth-secret') };
}

/** The target's flag: --auth-secret IVQN=FILE, repeatable. */
export const AUTH_TARGET_OPTIONS = {
  'auth-secret': {
    type: 'string',
    multiple: true,
    arg: 'IVQN=FILE',
    desc: 'require IVQN to authenticate in-band with the secret in FILE (vof gen-secret; "auth" in --config)',
  },
} as const satisfies OptionTable;

/** Config "auth": { "IVQN": "DHHC-1:00:…:" | { "file": PATH } }. */
export type AuthConfig = Record<string, string | { file: string }>;

/** IVQN → secret text for VofTarget's `auth`, from --config "auth" and the flags (flags win). */
export function targetAuthSecrets(cfg: unknown, flags: readonly string[] = []): Record<string, string> {
  const out: Record<string, string> = {};
  if (cfg !== undefined) {
    if (typeof cfg !== 'object' || cfg === null || Array.isArray(cfg)) throw new CliError('--config: "auth" must map IVQNs to secrets ("DHHC-1:00:…:" or {"file": PATH})');
    for (const [ivqn, v] of Object.entries(cfg as Record<string, unknown>)) {
      const where = `--config "auth" of IVQN "${ivqn}"`;
      if (typeof v === 'string') {
        checkSecret(v, where);
        out[ivqn] = v.trim();
      } else if (typeof v === 'object' && v !== null && typeof (v as { file?: unknown }).file === 'string') {
        out[ivqn] = readSecretFile((v as { file: string }).file, where);
      } else {
        throw new CliError(`${where}: a secret "DHHC-1:00:…:" or {"file": PATH}`);
      }
    }
  }
  for (const spec of flags) {
    const eq = spec.lastIndexOf('=');
    if (eq <= 0 || eq === spec.length - 1) throw new CliError(`--auth-secret expects IVQN=FILE, got "${spec}"`);
    const ivqn = spec.slice(0, eq);
    out[ivqn] = readSecretFile(spec.slice(eq + 1), `--auth-secret for IVQN "${ivqn}":`);
  }
  return out;
}

export const GEN_SECRET_COMMAND = {
  name: 'gen-secret',
  args: '',
  summary: 'Print a new in-band authentication secret (DHHC-1:00:…:) for --auth-secret; keep it in a 0600 file.',
  details: 'A target with --auth-secret IVQN=FILE requires that IVQN to authenticate in-band, on every transport.',
  options: { bytes: { type: 'string', arg: '32|48|64', desc: 'key length in bytes (default 32)' } },
} as const satisfies CommandSpec;

/** vof gen-secret: print a new secret (DHHC-1:00:<base64 of key and CRC-32>:) on stdout. */
export function runGenSecret(argv: string[]): number {
  const parsed = parseCommand(GEN_SECRET_COMMAND, argv);
  if (!parsed) return 0;
  const { values, positionals } = parsed;
  if (positionals.length > 0) throw new CliError(`vof gen-secret takes no arguments, got "${positionals[0]}"`);
  const bytes = values.bytes === undefined ? 32 : Number(values.bytes);
  if (!SECRET_KEY_SIZES.includes(bytes)) throw new CliError('--bytes must be 32, 48 or 64');
  process.stdout.write(`${generateSecret(bytes)}\n`);
  return 0;
}
