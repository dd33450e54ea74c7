import { createConnection } from 'node:net';
import { parseArgs } from 'node:util';
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
  const reply = await new Promise<{ ok: boolean; error?: string; told?: number; closed?: number }>((resolve, reject) => {
    const sock = createConnection(values.control!);
    let buf = '';
    sock.setEncoding('utf8');
    sock.on('error', (err) => reject(new CliError(`cannot reach the target's control socket ${values.control}: ${err.message}`, 1)));
    sock.on('connect', () => sock.write(`${JSON.stringify({ op: 'drain', tvqn, url, ...(graceMs !== undefined && { graceMs }) })}\n`));
    sock.on('data', (d: string) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      sock.end();
      try {
        resolve(JSON.parse(buf.slice(0, nl)) as { ok: boolean });
      } catch {
        reject(new CliError('the control socket answered something that is not JSON', 1));
      }
    });
  });
  if (!reply.ok) throw new CliError(`drain refused: ${reply.error ?? 'unknown error'}`, 1);
  if (values.json) process.stdout.write(`${JSON.stringify(reply)}\n`);
  else process.stdout.write(`drained "${tvqn}" to ${url}: ${reply.told} instance(s) moved by the drain event, ${reply.closed} closed by the target\n`);
  return 0;
}
