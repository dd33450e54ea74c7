import { TLS_CLIENT_OPTIONS, clientTlsSettings } from './tls-options.js';
import { AUTH_CLIENT_OPTIONS, clientAuthSettings } from './auth-options.js';
import { AdminError } from '../initiator/admin-client.js';
import { AdminStatusType } from '../protocol/admin-command.js';
import { REDIRECT_OPTIONS, redirectSettings } from './reconnect-options.js';
import { RemoteDevice } from '../initiator/remote-device.js';
import {
  AdminTransportStatus,
  QueueRole,
  QueueTransport,
  adminClassName,
  adminCommandName,
  errorLogEntryTypeName,
  formatAdminStatus,
} from '../protocol/admin-records.js';
import { escapePeerText, jsonForTerminal, quotePeerString } from '../util/escape.js';
import { createLogger } from '../util/log.js';
import { CliError, parseIntOption } from './cli-error.js';
import { formatTable } from './table.js';
import { closest, parseCommand, usage, type CommandSpec } from './options.js';
import { IVQN_OPTION, URL_HELP } from './client-options.js';

/** The admin commands and their arguments: checked before connecting, listed in --help. */
const ADMIN_COMMANDS: Record<string, { args: string; desc: string }> = {
  commands: { args: '', desc: 'the classes and commands the device serves' },
  log: { args: '[--skip N] [--max N]', desc: "the error log, newest first: this instance's entries, or the export's with the grant" },
  health: { args: '[--samples N]', desc: 'run the health test (virtio-blk: read-verify of N blocks)' },
  queues: { args: '', desc: 'this instance\'s queues with their counters' },
  formats: { args: '', desc: 'virtio-blk: the supported formats' },
  format: { args: 'SIZE [--pi BYTES]', desc: 'virtio-blk: format to logical block size SIZE (512, 4096) *' },
  'reset-counters': { args: '', desc: 'zero the queue counters *' },
  'clear-log': { args: '', desc: "empty the export's error log *" },
  raw: { args: 'CLASS COMMAND [HEX]', desc: 'send any command, print the status and result bytes' },
};

export const ADMIN_COMMAND = {
  name: 'admin',
  args: 'URL/TVQN COMMAND [ARGS]',
  summary: 'Send one admin command over the device\'s admin virtqueue and print the answer.',
  details: `${URL_HELP}\ncommands:\n${Object.entries(ADMIN_COMMANDS)
    .map(([n, c]) => `  ${`${n} ${c.args}`.padEnd(30)}${c.desc}`)
    .join('\n')}\n* export-wide: the target must grant the IVQN (vof target --admin IVQN[@IDENTITY], or "admin" in\n  its --config); otherwise refused with TRANSPORT_SPECIFIC ACL_REJECTED.`,
  options: {
    ...IVQN_OPTION,
    json: { type: 'boolean', desc: 'print JSON (queue roles and transports by name, as in the table)' },
    skip: { type: 'string', arg: 'N', desc: 'log: skip the N newest entries' },
    max: { type: 'string', arg: 'N', desc: 'log: at most N entries (0: all)' },
    samples: { type: 'string', arg: 'N', desc: 'health: how many blocks to check (0: the device\'s default)' },
    pi: { type: 'string', arg: 'BYTES', desc: 'format: protection-information bytes per block (default 0)' },
    ...REDIRECT_OPTIONS,
    ...TLS_CLIENT_OPTIONS,
    ...AUTH_CLIENT_OPTIONS,
  },
} as const satisfies CommandSpec;

const roleNames = { [QueueRole.CONTROL]: 'control', [QueueRole.VIRTQUEUE]: 'virtqueue', [QueueRole.ADMIN]: 'admin' } as Record<number, string>;
const transportNames = { [QueueTransport.TCP]: 'tcp', [QueueTransport.RDMA]: 'rdma' } as Record<number, string>;

function replacer(_k: string, v: unknown): unknown {
  return typeof v === 'bigint' ? v.toString() : v;
}

/** vof admin URL COMMAND …: one admin command over the device's admin virtqueue. */
export async function runAdmin(argv: string[]): Promise<number> {
  const parsed = parseCommand(ADMIN_COMMAND, argv);
  if (!parsed) return 0;
  const { values, positionals } = parsed;
  const [url, command, ...args] = positionals;
  if (!url || !command) throw usage(ADMIN_COMMAND, url ? 'which admin command?' : 'which device? (a URL)');
  // Checked before connecting: a typo is a usage error, not a connection and then one.
  if (!Object.hasOwn(ADMIN_COMMANDS, command)) {
    const near = closest(command, Object.keys(ADMIN_COMMANDS));
    throw new CliError(`vof admin: unknown admin command "${command}"${near ? ` (did you mean ${near}?)` : ''}; commands: ${Object.keys(ADMIN_COMMANDS).join(', ')}`);
  }
  const tls = clientTlsSettings(values);
  const dev = await RemoteDevice.connect(url, {
    ...(values.ivqn && { ivqn: values.ivqn }),
    ...(tls && { tls }),
    ...redirectSettings(values),
    ...clientAuthSettings(values),
    queueCount: () => 0,
    log: createLogger('warn'),
  });
  // Everything the target answers is peer data: text goes through the escaper, JSON through
  // jsonForTerminal (JSON.stringify alone lets C1 controls, bidi marks and U+2028 through).
  const print = (json: unknown, text: string) => process.stdout.write(values.json ? `${jsonForTerminal(json, replacer, 2)}\n` : text);
  try {
    const admin = dev.admin;
    switch (command) {
      case 'commands': {
        const list = await admin.listCommands();
        const named = list.map((c) => ({ class: c.cls, className: adminClassName(c.cls), command: c.command, name: adminCommandName(c.cls, c.command) }));
        print(named, formatTable(['CLASS', '', 'CMD', 'NAME'], named.map((c) => [c.class, c.className, c.command, c.name])));
        break;
      }
      case 'log': {
        const page = await admin.errorLog({
          skip: parseIntOption(values.skip, 'skip', 0, 0xffff) ?? 0,
          max: parseIntOption(values.max, 'max', 0, 0xffff) ?? 0,
        });
        const rows = page.entries.map((e) => [
          new Date(e.timestampMs).toISOString(),
          errorLogEntryTypeName(e.type),
          e.vqIndex === 0xffff ? '-' : String(e.vqIndex),
          e.instanceId,
          e.status,
          escapePeerText(e.detail),
        ]);
        const head = `${page.total} entries held, ${page.lost} lost (log full)\n`;
        print(
          { ...page, entries: page.entries.map((e) => ({ ...e, typeName: errorLogEntryTypeName(e.type), time: new Date(e.timestampMs).toISOString() })) },
          head + (rows.length ? formatTable(['TIME', 'TYPE', 'VQ', 'INSTANCE', 'STATUS', 'DETAIL'], rows) : ''),
        );
        break;
      }
      case 'health': {
        const r = await admin.healthTest(parseIntOption(values.samples, 'samples', 0, 0xffffffff) ?? 0);
        print(
          r,
          `${r.passed ? 'PASSED' : 'FAILED'}: ${r.samples} samples, ${r.errors} errors, ${r.bytesChecked} bytes checked in ${r.durationMs} ms` +
            `${r.firstError !== null ? `; first error at ${r.firstError}` : ''}\n`,
        );
        if (!r.passed) return 1;
        break;
      }
      case 'queues': {
        const qs = await admin.queues();
        const rows = qs.map((q) => [
          q.vqIndex === 0xffff ? 'ctrl' : String(q.vqIndex),
          roleNames[q.role] ?? String(q.role),
          transportNames[q.transport] ?? String(q.transport),
          q.queueSize,
          q.inFlight,
          q.commands,
          q.bytesOut,
          q.bytesIn,
          q.errors,
          escapePeerText(q.peer),
        ]);
        // JSON names roles and transports as the table does (and as `commands --json` names its classes).
        const named = qs.map((q) => ({ ...q, role: roleNames[q.role] ?? q.role, transport: transportNames[q.transport] ?? q.transport }));
        print(named, formatTable(['QUEUE', 'ROLE', 'TRANSPORT', 'SIZE', 'IN-FLIGHT', 'COMMANDS', 'BYTES-OUT', 'BYTES-IN', 'ERRORS', 'PEER'], rows));
        break;
      }
      case 'formats': {
        const { formats, current } = await admin.formats();
        const rows = formats.map((f, i) => [i === current ? '*' : '', f.blockSize, f.metadataBytes, f.supported ? 'yes' : 'no']);
        print({ current, formats }, formatTable(['', 'BLOCK-SIZE', 'PI-BYTES', 'SUPPORTED'], rows));
        break;
      }
      case 'format': {
        const size = parseIntOption(args[0], 'format SIZE', 1, 0xffffffff);
        if (size === undefined) throw new CliError('usage: vof admin URL format SIZE [--pi BYTES]');
        const pi = parseIntOption(values.pi, 'pi', 0, 255) ?? 0;
        await admin.format(size, pi);
        print({ blockSize: size, metadataBytes: pi }, `formatted to ${size}-byte blocks${pi ? ` + ${pi}` : ''}\n`);
        break;
      }
      case 'reset-counters':
        await admin.resetCounters();
        print({ ok: true }, 'counters reset\n');
        break;
      case 'clear-log':
        await admin.clearErrorLog();
        print({ ok: true }, 'error log cleared\n');
        break;
      case 'raw': {
        const cls = parseIntOption(args[0], 'raw CLASS', 0, 255);
        const cmd = parseIntOption(args[1], 'raw COMMAND', 0, 255);
        if (cls === undefined || cmd === undefined) throw new CliError('usage: vof admin URL raw CLASS COMMAND [HEX]');
        const hex = args[2] ?? '';
        if (!/^([0-9a-fA-F]{2})*$/.test(hex)) throw new CliError(`raw: "${hex}" is not hex bytes`);
        const r = await admin.raw(cls, cmd, Buffer.from(hex, 'hex'));
        const status = formatAdminStatus(cls, r.statusType, r.status);
        // The seed's result has no length of its own: it is zero-padded to the buffer, so trim.
        let end = r.result.length;
        while (end > 0 && r.result[end - 1] === 0) end--;
        const result = r.result.subarray(0, end).toString('hex');
        print({ statusType: r.statusType, status: r.status, statusName: status, result }, `${status}\n${result ? `${result}\n` : ''}`);
        break;
      }
      default:
        throw new CliError(`unknown admin command "${command}"`);
    }
  } catch (err) {
    if (err instanceof AdminError && err.statusType === AdminStatusType.TRANSPORT_SPECIFIC && err.status === AdminTransportStatus.ACL_REJECTED) {
      // The status alone does not say what to do about it: name the grant that is missing.
      throw new CliError(
        `${err.message}: IVQN ${quotePeerString(dev.ivqn)} has no admin grant on this export; ` +
          `the target must run with --admin ${dev.ivqn} (or "admin" in its --config), or use --ivqn with a granted IVQN`,
        1,
      );
    }
    throw err;
  } finally {
    await dev.close();
  }
  return 0;
}
