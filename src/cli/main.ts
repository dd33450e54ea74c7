#!/usr/bin/env node
import { runAdmin, ADMIN_COMMAND } from './admin-command.js';
import { runCp, CP_COMMAND } from './cp-command.js';
import { runDrain, DRAIN_COMMAND } from './drain-command.js';
import { runRevalidate, REVALIDATE_COMMAND } from './revalidate-command.js';
import { runDevices, DEVICES_COMMAND } from './devices-command.js';
import { runInfo, INFO_COMMAND } from './info-command.js';
import { runNbd, NBD_COMMAND } from './nbd-command.js';
import { runVduse, VDUSE_COMMAND } from './vduse-command.js';
import { runTarget, TARGET_COMMAND } from './target-command.js';
import { BENCH_COMMAND } from './bench-options.js';
import { CliError } from './cli-error.js';
import { closest, groupSynopsis, synopsis, type CommandSpec } from './options.js';
import { TLS_CLIENT_OPTIONS } from './tls-options.js';
import { RECONNECT_OPTIONS } from './reconnect-options.js';
import { errorHint } from './hints.js';
import { GEN_SECRET_COMMAND, runGenSecret } from './auth-options.js';

const COMMANDS: ReadonlyArray<{ spec: CommandSpec; run: (argv: string[]) => Promise<number> }> = [
  { spec: TARGET_COMMAND, run: runTarget },
  { spec: INFO_COMMAND, run: runInfo },
  { spec: CP_COMMAND, run: runCp },
  { spec: ADMIN_COMMAND, run: runAdmin },
  { spec: NBD_COMMAND, run: runNbd },
  { spec: VDUSE_COMMAND, run: runVduse },
  { spec: DRAIN_COMMAND, run: runDrain },
  { spec: REVALIDATE_COMMAND, run: runRevalidate },
  { spec: DEVICES_COMMAND, run: runDevices },
  { spec: GEN_SECRET_COMMAND, run: async (argv) => runGenSecret(argv) },
  // Loaded on demand: the benchmark brings the charting library, which no other command needs.
  { spec: BENCH_COMMAND, run: async (argv) => (await import('./bench-command.js')).runBench(argv) },
];

/** `vof help`: every command's synopsis, generated from the same tables as its parser. */
function usage(): string {
  const lines = ['vof — Virtio over Fabrics', '', 'Usage:'];
  for (const { spec } of COMMANDS) {
    lines.push(...synopsis(spec, 98).split('\n').map((l) => `  ${l}`), `      ${spec.summary}`);
  }
  lines.push(
    '  vof help | vof COMMAND --help',
    '',
    `TLS options: ${groupSynopsis(TLS_CLIENT_OPTIONS, 'TLS')}`,
    `reconnect options: ${groupSynopsis(RECONNECT_OPTIONS, 'reconnect')}`,
    `redirect options: ${groupSynopsis(RECONNECT_OPTIONS, 'redirect')}`,
    '',
    '`vof COMMAND --help` describes each option. Exit codes: 0 done, 1 failed, 2 usage error, 130 interrupted.',
  );
  return `${lines.join('\n')}\n`;
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === 'help' || cmd === '--help' || cmd === '-h') {
    process.stdout.write(usage());
    return 0;
  }
  // No command is a usage error: the usage goes to stderr, like every usage error.
  if (cmd === undefined) throw new CliError(`a command is needed\n\n${usage()}`);
  const entry = COMMANDS.find((c) => c.spec.name === cmd);
  if (!entry) {
    const near = closest(cmd, COMMANDS.map((c) => c.spec.name));
    throw new CliError(`unknown command "${cmd}"${near ? ` (did you mean ${near}?)` : ''}; commands: ${COMMANDS.map((c) => c.spec.name).join(', ')} (\`vof help\` for more)`);
  }
  return entry.run(rest);
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    const e = err as Error;
    const hint = errorHint(e, process.argv.slice(2));
    process.stderr.write(`vof: ${e instanceof CliError ? e.message : `${e.name}: ${e.message}`}\n${hint ? `vof: hint: ${hint}\n` : ''}`);
    process.exitCode = e instanceof CliError ? e.exitCode : 1;
  },
);
