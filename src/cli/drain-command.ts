import { controlRequest } from '../target/control-client.js';
import { quotePeerString } from '../util/escape.js';
import { CliError } from './cli-error.js';
import { parseCommand, usage, type CommandSpec } from './options.js';

export const DRAIN_COMMAND = {
  name: 'drain',
  args: '--control PATH (TVQN URL[/TVQN2] | --remove TVQN)',
  summary: 'Ask a running target (its --control socket) to move TVQN to URL, or (--remove) to stop redirecting it.',
  details:
    'Connected initiators get the drain event and reconnect to URL; new Connects are redirected there.\n' +
    'After the grace time what is left is closed; requests still in flight 1 s later are cancelled\n' +
    '(ESTATUS). TVQN must be exported or already redirected by that target (exit 1 otherwise).',
  options: {
    control: { type: 'string', arg: 'PATH', desc: 'the target\'s control socket (vof target --control)' },
    grace: { type: 'string', arg: 'S', desc: 'seconds connected initiators get to move (default 10)' },
    remove: { type: 'string', arg: 'TVQN', desc: 'take the redirect of TVQN away instead' },
    json: { type: 'boolean', desc: 'print the target\'s reply as JSON' },
  },
} as const satisfies CommandSpec;

type Reply = Record<string, unknown> & { ok: boolean; error?: string; told?: number; closed?: number; removed?: boolean };

async function ask(path: string, request: Record<string, unknown>, timeoutMs?: number): Promise<Reply> {
  try {
    return await controlRequest(path, request, timeoutMs);
  } catch (err) {
    throw new CliError((err as Error).message, 1);
  }
}

/**
 * `vof drain --control PATH TVQN URL [--grace S]`: ask a running target to move a TVQN.
 * `vof drain --control PATH --remove TVQN`: take its redirect away (Connects are served here again).
 */
export async function runDrain(argv: string[]): Promise<number> {
  const parsed = parseCommand(DRAIN_COMMAND, argv);
  if (!parsed) return 0;
  const { values, positionals } = parsed;
  if (!values.control) throw usage(DRAIN_COMMAND, 'which target? (--control PATH)');
  if (values.remove !== undefined) {
    if (positionals.length !== 0 || values.grace !== undefined) throw usage(DRAIN_COMMAND);
    const tvqn = values.remove;
    const reply = await ask(values.control, { op: 'unredirect', tvqn });
    if (!reply.ok) throw new CliError(`remove refused: ${reply.error ?? 'unknown error'}`, 1);
    if (values.json) process.stdout.write(`${JSON.stringify(reply)}\n`);
    if (!reply.removed) throw new CliError(`${quotePeerString(tvqn)} is not redirected by this target; nothing removed`, 1);
    if (!values.json) process.stdout.write(`${quotePeerString(tvqn)} is no longer redirected: new Connects for it are answered by this target\n`);
    return 0;
  }
  if (positionals.length !== 2) throw usage(DRAIN_COMMAND);
  const [tvqn, url] = positionals as [string, string];
  let graceMs: number | undefined;
  if (values.grace !== undefined) {
    const s = Number(values.grace);
    if (!Number.isFinite(s) || s < 0 || s > 3600) throw new CliError(`--grace must be 0-3600 seconds, got "${values.grace}"`);
    graceMs = Math.round(s * 1000);
  }
  const reply = await ask(values.control, { op: 'drain', tvqn, url, ...(graceMs !== undefined && { graceMs }) }, 3_700_000);
  if (!reply.ok) throw new CliError(`drain refused: ${reply.error ?? 'unknown error'}`, 1);
  if (values.json) process.stdout.write(`${JSON.stringify(reply)}\n`);
  else process.stdout.write(`drained ${quotePeerString(tvqn)} to ${url}: ${reply.told} instance(s) moved by the drain event, ${reply.closed} closed by the target\n`);
  return 0;
}
