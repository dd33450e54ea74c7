import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ErrorLogEntryType, NbdServer, Opcode, RemoteDevice, createLogger, type NbdBlockDevice } from '../src/index.js';
import { NbdOption, NbdReply, encodeInfoRequest } from '../src/nbd/nbd-protocol.js';
import { escapePeerText, jsonForTerminal, quotePeerString } from '../src/util/escape.js';
import { RawNbdClient } from './helpers/raw-nbd.js';
import { TargetFixture } from './helpers/target-fixture.js';
import { vofAsync } from './helpers/vof-cli.js';

/**
 * Issue 17, finding 10: peer strings reach a person unescaped. `vof admin URL log` printed what
 * the target's error log holds (an IVQN of ESC[2J… clears the operator's screen), and the NBD
 * bridge quoted client-chosen export names with JSON.stringify, which passes C1 controls, bidi
 * marks and U+2028 through.
 */

/** Anything a terminal would act on or that reorders text: C0 (but \n), DEL, C1, bidi, separators. */
// eslint-disable-next-line no-control-regex
const RAW_DANGER = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]/u;
/** ESC[2J (clear screen), CSI as one C1 byte, a line separator, a right-to-left override. */
const EVIL = '\x1b[2J\u009b31m\u2028\u202eab';

describe('the one escaper: quotePeerString, escapePeerText, jsonForTerminal', () => {
  it('escape every dangerous character; the JSON form reads back as the same string', () => {
    expect(quotePeerString(EVIL)).toBe('"\\x1b[2J\\x9b31m\\u2028\\u202eab"');
    expect(escapePeerText(`${EVIL} "q" \\`)).toBe('\\x1b[2J\\x9b31m\\u2028\\u202eab "q" \\');
    const json = jsonForTerminal({ s: EVIL });
    expect(json).not.toMatch(RAW_DANGER);
    expect(JSON.parse(json)).toEqual({ s: EVIL });
  });
});

describe('vof admin URL log: peer strings in text and JSON output', () => {
  let fx: TargetFixture;
  beforeAll(async () => {
    fx = new TargetFixture();
    // vof admin's default IVQN holds the grant, so it reads the whole export's log (the
    // entries of the ESC-laden initiator's instance among them).
    await fx.addDisk('d', 1024 * 1024, { admin: ['vof-initiator'] });
    await fx.listen();
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('an initiator with an ESC-laden IVQN, and a target reporting raw controls, cannot reach the terminal', async () => {
    // The natural path: the reset entry names the IVQN that reset the device.
    const dev = await RemoteDevice.connect(`${fx.url}/d`, { ivqn: `\x1b[2J\x1b]0;pwned\x07`, queueCount: () => 0, keepaliveIntervalMs: 0 });
    try {
      await dev.command({ opcode: Opcode.ResetDevice });
    } finally {
      await dev.close();
    }
    // What a hostile target could put in an entry: written into the export's log directly.
    fx.target.devices.get('d')!.errorLog.record({ type: ErrorLogEntryType.IO_ERROR, detail: EVIL, vqIndex: 0, instanceId: 1, status: 1 });

    const text = await vofAsync(['admin', `${fx.url}/d`, 'log']);
    expect(text.status, text.stderr).toBe(0);
    expect(text.stdout).toMatch(/RESET/);
    expect(text.stdout).not.toMatch(RAW_DANGER);
    expect(text.stdout).toContain('\\x1b[2J\\x1b]0;pwned\\x07');
    expect(text.stdout).toContain('\\x1b[2J\\x9b31m\\u2028\\u202eab');

    const json = await vofAsync(['admin', `${fx.url}/d`, 'log', '--json']);
    expect(json.status, json.stderr).toBe(0);
    expect(json.stdout).not.toMatch(RAW_DANGER);
    const details = (JSON.parse(json.stdout) as { entries: Array<{ detail: string }> }).entries.map((e) => e.detail);
    expect(details).toContain(EVIL);
  });
});

/** A disk that answers nothing: only the handshake matters here. */
const nullDisk: NbdBlockDevice = {
  capacity: 1024 * 1024,
  blockSize: 512,
  readOnly: true,
  canFlush: false,
  canDiscard: false,
  canWriteZeroes: false,
  read: (_offset, into) => Promise.resolve(into),
  write: () => Promise.reject(new Error('read-only')),
  flush: () => Promise.resolve(),
  discard: () => Promise.reject(new Error('not offered')),
  writeZeroes: () => Promise.reject(new Error('not offered')),
};

describe('NBD bridge log: client-chosen export names', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vof-nbd-escape-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('an unknown export name with C1 controls, bidi marks and U+2028 is escaped in the log and in the reply', async () => {
    const lines: string[] = [];
    const server = new NbdServer(nullDisk, { name: 'mem', log: createLogger('debug', (_l, m) => lines.push(m)) });
    const sock = join(dir, 's.sock');
    await server.listen({ socket: sock });
    try {
      const c = await RawNbdClient.connect(sock);
      c.sendClientFlags(3);
      c.sendOption(NbdOption.GO, encodeInfoRequest(EVIL, []));
      const replies = await c.readOptionReplies();
      const last = replies[replies.length - 1]!;
      expect(last.type).toBe(NbdReply.ERR_UNKNOWN);
      expect(last.data.toString('utf8')).not.toMatch(RAW_DANGER);
      // NBD_OPT_EXPORT_NAME of an unknown name ends the session, and is logged.
      c.sendOption(NbdOption.EXPORT_NAME, Buffer.from(`${EVIL}-2`, 'utf8'));
      expect(await c.closedByServer()).toBe(true);
      c.close();
      const named = lines.filter((l) => l.includes('ab'));
      expect(named.length).toBeGreaterThanOrEqual(2);
      for (const l of named) expect(l, l).not.toMatch(RAW_DANGER);
      expect(named.some((l) => l.includes(quotePeerString(EVIL)))).toBe(true);
      expect(named.some((l) => l.includes(quotePeerString(`${EVIL}-2`)))).toBe(true);
    } finally {
      await server.close();
    }
  });
});
