import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { TargetAuth } from '../src/target/target-auth.js';
import {
  BlockDevice,
  CONNECT_BODY_SIZE,
  Opcode,
  SECTOR_SIZE,
  VofAuthError,
  VofError,
  encodeConnectBody,
  statusName,
} from '../src/index.js';
import {
  VOF_F_AUTH,
  VOF_OP_AUTH_NEGOTIATE,
  VOF_OP_AUTH_REPLY,
  encodeAuthCompletion,
  generateSecret,
  initiatorResponse,
  parseSecret,
  targetResponse,
} from '../src/protocol/auth.js';
import { RawQueue } from './helpers/raw-queue.js';
import { vofAsync } from './helpers/vof-cli.js';
import { targetAuthSecrets } from '../src/cli/auth-options.js';
import { TargetFixture } from './helpers/target-fixture.js';
import { pattern } from './helpers/pattern.js';
import { waitFor } from './helpers/wait-for.js';

const st = (c: Buffer) => statusName(c.readUInt16LE(0));
const quiet = { keepaliveIntervalMs: 0 };
const AUTH_BIT = 1n << VOF_F_AUTH;
const field = (c: Buffer) => Buffer.from(c.subarray(4, 16));

/** A raw control queue of `ivqn` with VOF_F_AUTH set; its instance id. */
async function rawControl(port: number, ivqn: string, tvqn = 'disk'): Promise<{ q: RawQueue; id: number }> {
  const q = await RawQueue.open(port);
  const c = await q.connectControl(tvqn, ivqn);
  expect(st(c)).toBe('SUCCESS');
  const f = await q.call({ opcode: Opcode.GetFeature, commandId: 2, featureSelect: 0 });
  expect(f.readBigUInt64LE(8) & AUTH_BIT).toBe(AUTH_BIT);
  expect(st(await q.call({ opcode: Opcode.SetFeature, commandId: 3, featureSelect: 0, feature: AUTH_BIT }))).toBe('SUCCESS');
  return { q, id: c.readUInt16LE(4) };
}

/** A virtqueue Connect (with Connect Body) to instance `id`; its status. */
async function vqConnect(port: number, id: number, ivqn: string, tvqn = 'disk'): Promise<string> {
  const q = await RawQueue.open(port);
  try {
    const c = await q.call(
      { opcode: Opcode.Connect, commandId: 1, deviceInstanceId: id, vqIndex: 0, length: CONNECT_BODY_SIZE, queueSize: 4 },
      encodeConnectBody({ ivqn, tvqn }),
    );
    return st(c);
  } finally {
    q.socket.destroy();
  }
}

describe('in-band authentication over TCP (issue 17)', () => {
  let fx: TargetFixture;
  let url: string;
  const secretA = generateSecret();
  const keyA = parseSecret(secretA);
  beforeAll(async () => {
    fx = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 120000 }, auth: { 'host-a': secretA } });
    await fx.addDisk('disk', 1024 * 1024);
    url = `${await fx.listen()}/disk`;
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('right secret: the device opens, data written reads back, the target logs the authentication', async () => {
    const disk = await BlockDevice.open(url, { ivqn: 'host-a', authSecret: secretA, ...quiet });
    try {
      const data = pattern(8 * SECTOR_SIZE, 1);
      await disk.write(4096, data);
      expect(await disk.read(4096, data.length)).toEqual(data);
      expect(disk.device.ofFeatures & AUTH_BIT).toBe(AUTH_BIT);
    } finally {
      await disk.close();
    }
    expect(fx.logged(/instance \d+ \("host-a" → "disk"\) authenticated/)).toBe(true);
    // The secret is never logged.
    expect(fx.logs.some((l) => l.msg.includes(secretA.slice(10, 30)))).toBe(false);
  });

  it('wrong secret: "authentication failed", an escaped log line, the instance is destroyed', async () => {
    const before = fx.logs.length;
    const err = await BlockDevice.open(url, { ivqn: 'host-a', authSecret: generateSecret(), ...quiet }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VofAuthError);
    expect((err as Error).message).toMatch(/authentication failed/);
    expect((err as VofAuthError).status).toBe(0x1003);
    const lines = fx.logs.slice(before).map((l) => l.msg);
    expect(lines.some((m) => /\("host-a" → "disk"\): authentication failed: the response does not prove the secret/.test(m))).toBe(true);
    await waitFor('the instance to be destroyed', () => fx.target.instanceCount === 0, 2000);
    expect(fx.target.instanceCount).toBe(0);
  });

  it('missing secret: a seed-only initiator claiming the IVQN gets EACLREJECTED on its first device command', async () => {
    const err = await BlockDevice.open(url, { ivqn: 'host-a', ...quiet }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VofError);
    expect((err as VofError).statusName).toBe('EACLREJECTED');
    expect((err as VofError).opcode).toBe(Opcode.GetVendorId);
  });

  it('before authentication: device commands, state changes and virtqueue Connects are refused; after it they work', async () => {
    const { q, id } = await rawControl(fx.port, 'host-a');
    try {
      expect(st(await q.call({ opcode: Opcode.GetVendorId, commandId: 4 }))).toBe('EACLREJECTED');
      expect(st(await q.call({ opcode: Opcode.SetStatus, commandId: 5, status: 1 }))).toBe('EACLREJECTED');
      expect(st(await q.call({ opcode: Opcode.GetConfig, commandId: 6, offset: 0, bytes: 8 }))).toBe('EACLREJECTED');
      expect(st(await q.call({ opcode: Opcode.Keepalive, commandId: 7 }))).toBe('SUCCESS');
      expect(await vqConnect(fx.port, id, 'host-a')).toBe('EACLREJECTED');
      // The binding rule is checked first: a body that does not match is still EBADVQN.
      expect(await vqConnect(fx.port, id, 'host-a', 'other')).toBe('EBADVQN');

      const nonceI = Buffer.alloc(12, 0x5a);
      const n = await q.call({ opcode: VOF_OP_AUTH_NEGOTIATE, commandId: 8, data: nonceI });
      expect(st(n)).toBe('SUCCESS');
      const t = { ivqn: 'host-a', tvqn: 'disk', instanceId: id, nonceI, nonceT: field(n) };
      const r = await q.call({ opcode: VOF_OP_AUTH_REPLY, commandId: 9, data: initiatorResponse(keyA, t) });
      expect(st(r)).toBe('SUCCESS');
      // Bidirectional: the target proved the secret too.
      expect(field(r)).toEqual(targetResponse(keyA, t));

      expect(st(await q.call({ opcode: Opcode.GetVendorId, commandId: 10 }))).toBe('SUCCESS');
      expect(st(await q.call({ opcode: Opcode.SetStatus, commandId: 11, status: 1 }))).toBe('SUCCESS');
      expect(await vqConnect(fx.port, id, 'host-a')).toBe('SUCCESS');
    } finally {
      q.socket.destroy();
    }
  });

  it('a replayed transcript fails: a fresh target nonce every time', async () => {
    // A legitimate exchange, recorded.
    const first = await rawControl(fx.port, 'host-a');
    const nonceI = Buffer.alloc(12, 0x33);
    const n1 = await first.q.call({ opcode: VOF_OP_AUTH_NEGOTIATE, commandId: 8, data: nonceI });
    const t1 = { ivqn: 'host-a', tvqn: 'disk', instanceId: first.id, nonceI, nonceT: field(n1) };
    const recorded = initiatorResponse(keyA, t1);
    expect(st(await first.q.call({ opcode: VOF_OP_AUTH_REPLY, commandId: 9, data: recorded }))).toBe('SUCCESS');
    first.q.socket.destroy();

    // The eavesdropper replays it on a connection of its own.
    const { q } = await rawControl(fx.port, 'host-a');
    const n2 = await q.call({ opcode: VOF_OP_AUTH_NEGOTIATE, commandId: 8, data: nonceI });
    expect(st(n2)).toBe('SUCCESS');
    expect(field(n2)).not.toEqual(field(n1));
    const r = await q.call({ opcode: VOF_OP_AUTH_REPLY, commandId: 9, data: recorded });
    expect(r).toEqual(encodeAuthCompletion(0x1003, 9));
    await q.whenClosed();
  });

  it('steps out of order are refused and close the control queue; the commands need VOF_F_AUTH', async () => {
    const { q } = await rawControl(fx.port, 'host-a');
    expect(st(await q.call({ opcode: VOF_OP_AUTH_REPLY, commandId: 8, data: Buffer.alloc(12) }))).toBe('EACLREJECTED');
    await q.whenClosed();

    const p = await RawQueue.open(fx.port);
    try {
      expect(st(await p.connectControl('disk', 'host-a'))).toBe('SUCCESS');
      expect(st(await p.call({ opcode: VOF_OP_AUTH_NEGOTIATE, commandId: 2, data: Buffer.alloc(12) }))).toBe('ENOCMD');
    } finally {
      p.socket.destroy();
    }
  });

  it('an IVQN without a secret: the seed-only flow works; asking to authenticate it is refused', async () => {
    // Seed-only (vof initiator without a secret) on the same target and export.
    const disk = await BlockDevice.open(url, { ivqn: 'host-b', ...quiet });
    try {
      const data = pattern(2 * SECTOR_SIZE, 9);
      await disk.write(0, data);
      expect(await disk.read(0, data.length)).toEqual(data);
      expect(disk.device.offeredOfFeatures & AUTH_BIT).toBe(AUTH_BIT);
      expect(disk.device.ofFeatures & AUTH_BIT).toBe(0n);
    } finally {
      await disk.close();
    }
    const { q } = await rawControl(fx.port, 'host-b');
    expect(st(await q.call({ opcode: VOF_OP_AUTH_NEGOTIATE, commandId: 8, data: Buffer.alloc(12) }))).toBe('EACLREJECTED');
    await q.whenClosed();
    // The vof initiator with a secret the target does not hold for its IVQN: the target cannot prove it.
    const err = await BlockDevice.open(url, { ivqn: 'host-b', authSecret: secretA, ...quiet }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VofAuthError);
    expect((err as Error).message).toMatch(/target did not prove the secret: it refused to authenticate/);
  });

  it('an instance that does not authenticate within the connect timeout is destroyed, keepalives or not', async () => {
    const slow = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 120000 }, connectTimeoutMs: 300, auth: { 'host-a': secretA } });
    try {
      await slow.addDisk('disk', 1024 * 1024);
      await slow.listen();
      const { q } = await rawControl(slow.port, 'host-a');
      for (let i = 0; i < 50 && !q.closed; i++) {
        q.command({ opcode: Opcode.Keepalive, commandId: 100 + i });
        await new Promise((r) => setTimeout(r, 20));
      }
      await q.whenClosed();
      expect(slow.logged(/\("host-a" → "disk"\): not authenticated within 300 ms; destroying it/)).toBe(true);
      expect(slow.target.instanceCount).toBe(0);
    } finally {
      await slow.close();
    }
  });

  it('a target without authentication cannot pass for one: the initiator with a secret refuses it', async () => {
    const plain = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 120000 } });
    try {
      await plain.addDisk('disk', 1024 * 1024);
      const plainUrl = `${await plain.listen()}/disk`;
      const err = await BlockDevice.open(plainUrl, { ivqn: 'host-a', authSecret: secretA, ...quiet }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(VofAuthError);
      expect((err as Error).message).toMatch(/target did not prove the secret: it does not offer authentication/);
      // And nothing changed for peers of a target without secrets: VOF_F_AUTH is not offered.
      const q = await RawQueue.open(plain.port);
      expect(st(await q.connectControl('disk', 'host-a'))).toBe('SUCCESS');
      expect((await q.call({ opcode: Opcode.GetFeature, commandId: 2, featureSelect: 0 })).readBigUInt64LE(8)).toBe(0n);
      q.socket.destroy();
    } finally {
      await plain.close();
    }
  });

  it('an impostor target that accepts any response is refused: "target did not prove the secret"', async () => {
    const impostor = await impostorTarget();
    try {
      const err = await BlockDevice.open(`tcp://127.0.0.1:${impostor.port}/disk`, { ivqn: 'host-a', authSecret: secretA, ...quiet }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(VofAuthError);
      expect((err as Error).message).toMatch(/target did not prove the secret: its response does not verify/);
      // The initiator stopped there: nothing after AUTH_REPLY reached the impostor.
      expect(impostor.opcodes).toEqual([Opcode.Connect, Opcode.GetFeature, Opcode.SetFeature, VOF_OP_AUTH_NEGOTIATE, VOF_OP_AUTH_REPLY]);
    } finally {
      await impostor.close();
    }
  });
});

describe("the target's authentication deadline", () => {
  it('is cleared when the initiator proves the secret, and fires only for an exchange that never succeeds', () => {
    vi.useFakeTimers();
    try {
      const secret = parseSecret(generateSecret());
      const expired: string[] = [];
      const ok = new TargetAuth(secret, 'host-a', 'disk', 7);
      const never = new TargetAuth(secret, 'host-b', 'disk', 8);
      ok.expireAfter(1000, () => expired.push('ok'));
      never.expireAfter(1000, () => expired.push('never'));
      expect(vi.getTimerCount()).toBe(2);
      const nonceI = Buffer.alloc(12, 1);
      const step = ok.negotiate(nonceI);
      if (!step.ok) throw new Error(step.why);
      const transcript = { ivqn: 'host-a', tvqn: 'disk', instanceId: 7, nonceI, nonceT: step.data };
      expect(ok.reply(initiatorResponse(secret, transcript)).ok).toBe(true);
      // Nothing keeps the authenticated instance waiting on its deadline.
      expect(vi.getTimerCount()).toBe(1);
      vi.advanceTimersByTime(1500);
      expect(expired).toEqual(['never']);
      never.expireAfter(1000, () => expired.push('again'));
      never.stop();
      expect(vi.getTimerCount()).toBe(0);
    } finally {
      vi.useRealTimers();
    }
  });
});

describe('the CLI: vof gen-secret, --auth-secret', () => {
  let fx: TargetFixture;
  let secret: string;
  beforeAll(async () => {
    const gen = await vofAsync(['gen-secret']);
    expect(gen.status).toBe(0);
    secret = gen.stdout.trim();
    expect(parseSecret(secret)).toHaveLength(32);
    fx = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 120000 }, auth: { 'host-a': secret } });
    await fx.addDisk('disk', 1024 * 1024);
    await fx.listen();
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('vof info --auth-secret FILE: the right secret connects, a wrong one says "authentication failed" without showing it', async () => {
    const good = join(fx.dir, 'good.secret');
    const bad = join(fx.dir, 'bad.secret');
    writeFileSync(good, `${secret}\n`, { mode: 0o600 });
    const other = generateSecret();
    writeFileSync(bad, other, { mode: 0o600 });
    const ok = await vofAsync(['info', `${fx.url}/disk`, '--ivqn', 'host-a', '--auth-secret', good, '--json']);
    expect(ok.status, ok.stderr).toBe(0);
    expect(JSON.parse(ok.stdout).virtioOfFeatures.negotiated).toBe(`0x${AUTH_BIT.toString(16)}`);
    const no = await vofAsync(['info', `${fx.url}/disk`, '--ivqn', 'host-a', '--auth-secret', bad]);
    expect(no.status).toBe(1);
    expect(no.stderr).toMatch(/authentication failed/);
    expect(no.stderr).not.toContain(other.slice(10, 40));
    writeFileSync(bad, 'not a secret');
    const junk = await vofAsync(['info', `${fx.url}/disk`, '--auth-secret', bad]);
    expect(junk.status).toBe(1);
    expect(junk.stderr).toContain(`--auth-secret ${bad} is not a secret of the form DHHC-1:00:<base64>:`);
  });

  it('target secrets from --config "auth" (text or {file}) and --auth-secret IVQN=FILE', () => {
    const file = join(fx.dir, 'b.secret');
    const b = generateSecret();
    writeFileSync(file, b);
    const c = generateSecret();
    expect(targetAuthSecrets({ 'host-a': secret, 'host-b': { file } }, [`host-c=${file}`])).toEqual({ 'host-a': secret, 'host-b': b, 'host-c': b });
    expect(c).not.toBe(b);
    expect(() => targetAuthSecrets({ 'host-a': 'DHHC-1:00:AAAA:' })).toThrow(/IVQN "host-a"/);
    expect(() => targetAuthSecrets(['host-a'])).toThrow(/must map IVQNs/);
    expect(() => targetAuthSecrets(undefined, ['host-a'])).toThrow(/IVQN=FILE/);
  });
});

/**
 * A fake target that does not know the secret: it offers VOF_F_AUTH, answers every step with
 * SUCCESS and a made-up response, and records the opcodes it received.
 */
async function impostorTarget(): Promise<{ port: number; opcodes: number[]; close: () => Promise<void> }> {
  const opcodes: number[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    let buf = Buffer.alloc(0);
    s.on('error', () => {});
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (buf.length < 16) return;
        const op = buf.readUInt16LE(0);
        const id = buf.readUInt16LE(2);
        const len = op === Opcode.Connect ? buf.readUInt32LE(8) : 0;
        if (buf.length < 16 + len) return;
        buf = buf.subarray(16 + len);
        opcodes.push(op);
        const c = Buffer.alloc(16);
        c.writeUInt16LE(id, 2);
        if (op === Opcode.GetFeature) c.writeBigUInt64LE(AUTH_BIT, 8);
        if (op === VOF_OP_AUTH_NEGOTIATE || op === VOF_OP_AUTH_REPLY) Buffer.alloc(12, 0x42).copy(c, 4);
        s.write(c);
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    opcodes,
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise((r) => server.close(() => r()));
    },
  };
}
