import { parseArgs } from 'node:util';
import { controlRequest } from '../target/control-client.js';
import { CliError } from './cli-error.js';

/** `vof drain --control PATH TVQN URL [--grace S]`: ask a running target to move a TVQN. */
export async function runDrain(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: { control: { type: 'string' }, grace: { type: 'string' }, json: { type: 'boolean' } },
    allowPositionals: true,
    strict: true,
  });
  if (!values.control || positionals.length !== 2) throw new CliError('usage: vof drain --control PATH TVQN URL[/TVQN2] [--grace S] [--json]');
  const [tvqn, url] = positionals as [string, string];
  let graceMs: number | undefined;
  if (values.grace !== undefined) {
    const s = Number(values.grace);
    if (!Number.isFinite(s) || s < 0 || s > 3600) throw new CliError(`--grace must be 0-3600 seconds, got "${values.grace}"`);
    graceMs = Math.round(s * 1000);
  }
  let reply: Record<string, unknown> & { ok: boolean; error?: string; told?: number; closed?: number };
  try {
    reply = await controlRequest(values.control, { op: 'drain', tvqn, url, ...(graceMs !== undefined && { graceMs }) }, 3_700_000);
  } catch (err) {
    throw new CliError((err as Error).message, 1);
  }
  if (!reply.ok) throw new CliError(`drain refused: ${reply.error ?? 'unknown error'}`, 1);
  if (values.json) process.stdout.write(`${JSON.stringify(reply)}\n`);
  else process.stdout.write(`drained "${tvqn}" to ${url}: ${reply.told} instance(s) moved by the drain event, ${reply.closed} closed by the target\n`);
  return 0;
}
