import { controlRequest } from '../target/control-client.js';
import { quotePeerString } from '../util/escape.js';
import { CliError } from './cli-error.js';
import { parseCommand, usage, type CommandSpec } from './options.js';

export const REVALIDATE_COMMAND = {
  name: 'revalidate',
  args: '--control PATH TVQN',
  summary: "Ask a running target (its --control socket) to re-read the size of TVQN's file or block device after it was resized.",
  details:
    'Grow or shrink the backing file (truncate -s) or device (lvextend, ...) first. If the capacity\n' +
    'changed, every connected initiator gets a config change: `vof vduse` passes it to the kernel\n' +
    '(/sys/block/vdX/size), the library updates BlockDevice.capacity. TVQN must be a file or block\n' +
    'device exported by that target (exit 1 otherwise). See docs/VDUSE.md.',
  options: {
    control: { type: 'string', arg: 'PATH', desc: "the target's control socket (vof target --control)" },
    json: { type: 'boolean', desc: "print the target's reply as JSON" },
  },
} as const satisfies CommandSpec;

/** `vof revalidate --control PATH TVQN`: as nvmet's revalidate_size, for a vof target. */
export async function runRevalidate(argv: string[]): Promise<number> {
  const parsed = parseCommand(REVALIDATE_COMMAND, argv);
  if (!parsed) return 0;
  const { values, positionals } = parsed;
  if (!values.control) throw usage(REVALIDATE_COMMAND, 'which target? (--control PATH)');
  if (positionals.length !== 1) throw usage(REVALIDATE_COMMAND, 'which export? (one TVQN)');
  const tvqn = positionals[0]!;
  let reply: Record<string, unknown> & { ok: boolean; error?: string };
  try {
    reply = await controlRequest(values.control, { op: 'revalidate', tvqn });
  } catch (err) {
    throw new CliError((err as Error).message, 1);
  }
  if (!reply.ok) throw new CliError(`revalidate refused: ${reply.error ?? 'unknown error'}`, 1);
  if (values.json) process.stdout.write(`${JSON.stringify(reply)}\n`);
  else {
    const bytes = Number(reply.capacityBytes);
    process.stdout.write(
      `${quotePeerString(tvqn)}: ${bytes} bytes, ${reply.changed ? 'changed: its initiators were sent a config change' : 'unchanged'}\n`,
    );
  }
  return 0;
}
