import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTarget, type StartedTarget } from '../scripts/start-target.mjs';
import { BlockDevice, silentLogger, statusName } from '../src/index.js';
import { CONNECT_BODY_SIZE, CONTROL_QUEUE_INSTANCE_ID, Opcode, VIRTIO_OF_CONTROL_QUEUE_SIZE } from '../src/protocol/constants.js';
import { encodeConnectBody } from '../src/protocol/connect-body.js';
import {
  REDIRECT_RECORD_SIZE,
  VOF_CONNECT_F_REDIRECT,
  VOF_STATUS_EREDIRECT,
  decodeRedirectRecord,
  encodeRedirectRecord,
  setConnectFlags,
} from '../src/protocol/redirect-record.js';
import { VofRedirectError } from '../src/initiator/vof-error.js';
import { RawQueue } from './helpers/raw-queue.js';
import { vofAsync } from './helpers/vof-cli.js';

/**
 * Issue 13, redirect: three real `vof target` processes. A target answers a control-queue
 * Connect for a moved TVQN with EREDIRECT (0x10f0) and a 520-byte redirect record, but only to
 * an initiator whose Connect Body announced VOF_CONNECT_F_REDIRECT.
 */

const SLOW = 60_000;
let dir: string;
const started: StartedTarget[] = [];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vof-redirect-'));
});
afterAll(async () => {
  for (const t of started) if (t.child.exitCode === null) t.child.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

async function target(...args: string[]): Promise<{ t: StartedTarget; url: string; port: number }> {
  const t = await startTarget(['--listen', 'tcp://127.0.0.1:0', ...args]);
  started.push(t);
  return { t, url: t.urls[0]!, port: Number(new URL(t.urls[0]!.replace('tcp:', 'http:')).port) };
}

function disk(name: string): string {
  const f = join(dir, name);
  writeFileSync(f, Buffer.alloc(1 << 20));
  return f;
}

/** A free port that nothing listens on yet, for a target started later. */
async function reservePort(): Promise<number> {
  const { createServer } = await import('node:net');
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

describe('redirect', () => {
  it('record codec: golden bytes, and a record from an untrusted target is checked', () => {
    const rec = encodeRedirectRecord({ scheme: 'rdma', host: '10.0.0.2', port: 15771, tvqn: 'disk1' });
    expect(rec.length).toBe(REDIRECT_RECORD_SIZE);
    expect(rec.subarray(0, 8).toString('hex')).toBe('02009b3d00000000');
    expect(rec.subarray(8, 17).toString()).toBe('10.0.0.2\0');
    expect(rec.subarray(264, 270).toString()).toBe('disk1\0');
    expect(decodeRedirectRecord(rec)).toEqual({ scheme: 'rdma', host: '10.0.0.2', port: 15771, tvqn: 'disk1' });
    const bad = Buffer.from(rec);
    bad[0] = 9;
    expect(() => decodeRedirectRecord(bad)).toThrow(/unknown transport 9/);
    const noNul = Buffer.from(rec);
    noNul.fill(0x41, 8, 264);
    expect(() => decodeRedirectRecord(noNul)).toThrow(/address is not NUL-terminated/);
    const path = encodeRedirectRecord({ scheme: 'tcp', host: 'evil/x', port: 1, tvqn: 'd' });
    expect(() => decodeRedirectRecord(path)).toThrow(/is not a host/);
  });

  it('A redirects to B and B serves: the initiator follows, data lands on B, device.url is B', async () => {
    const fileB = disk('b.img');
    const b = await target('--blk', `d=${fileB}`);
    const a = await target('--redirect', `d=${b.url}`);
    const logs: string[] = [];
    const log = { ...silentLogger, info: (m: string) => logs.push(m) };
    const d = await BlockDevice.open(`${a.url}/d`, { log });
    expect(d.device.url).toBe(`${b.url}/d`);
    expect(d.device.requestedUrl).toBe(`${a.url}/d`);
    await d.write(4096, Buffer.alloc(4096, 0x5b));
    await d.flush();
    await d.close();
    expect(readFileSync(fileB).subarray(4096, 8192).equals(Buffer.alloc(4096, 0x5b))).toBe(true);
    expect(logs.some((l) => l.includes(`${a.url}/d: redirected to ${b.url}/d (hop 1 of at most 8)`))).toBe(true);
    expect(a.t.stderr()).toMatch(/Connect for "d" → EREDIRECT to tcp:\/\/127\.0\.0\.1:\d+\/d/);
  }, SLOW);

  it('on the wire: EREDIRECT 0x10f0 + record to an initiator that asks for it; EACLREJECTED to a seed-only initiator', async () => {
    const a = await target('--redirect', 'd=tcp://10.9.8.7:4242/other');
    const seed = await RawQueue.open(a.port);
    const c = await seed.connectControl('d');
    expect(statusName(c.readUInt16LE(0))).toBe('EACLREJECTED');
    await seed.close();

    const q = await RawQueue.open(a.port);
    const body = setConnectFlags(encodeConnectBody({ ivqn: 'x', tvqn: 'd' }), VOF_CONNECT_F_REDIRECT);
    q.command({ opcode: Opcode.Connect, commandId: 7, deviceInstanceId: CONTROL_QUEUE_INSTANCE_ID, vqIndex: 0, length: CONNECT_BODY_SIZE, queueSize: VIRTIO_OF_CONTROL_QUEUE_SIZE }, body);
    const r = await q.read(16 + REDIRECT_RECORD_SIZE);
    expect(r.readUInt16LE(0)).toBe(VOF_STATUS_EREDIRECT);
    expect(r.readUInt16LE(2)).toBe(7);
    expect(r.readUInt16LE(4)).toBe(0xffff);
    expect(r.readUInt16LE(6)).toBe(REDIRECT_RECORD_SIZE);
    expect(r.subarray(8, 16).equals(Buffer.alloc(8))).toBe(true);
    expect(decodeRedirectRecord(r.subarray(16))).toEqual({ scheme: 'tcp', host: '10.9.8.7', port: 4242, tvqn: 'other' });
    await q.close();
  }, SLOW);

  it('A → B → A ends in a VofRedirectError (loop) naming the chain', async () => {
    const pa = await reservePort();
    const b = await target('--redirect', `d=tcp://127.0.0.1:${pa}`);
    const a = await startTarget(['--listen', `tcp://127.0.0.1:${pa}`, '--redirect', `d=${b.url}`]);
    started.push(a);
    const err = await BlockDevice.open(`tcp://127.0.0.1:${pa}/d`, { log: silentLogger }).then(() => null, (e: Error) => e);
    expect(err).toBeInstanceOf(VofRedirectError);
    expect((err as VofRedirectError).reason).toBe('loop');
    expect(err!.message).toBe(`redirect loop: tcp://127.0.0.1:${pa}/d → ${b.url}/d → tcp://127.0.0.1:${pa}/d`);
  }, SLOW);

  it('hop limit: A → B → C is refused with maxRedirects 1, followed with 2; the CLI says why', async () => {
    const c = await target('--blk', `d2=${disk('c.img')}`);
    const b = await target('--redirect', `d=${c.url}/d2`);
    const a = await target('--redirect', `d=${b.url}`);
    const err = await BlockDevice.open(`${a.url}/d`, { log: silentLogger, maxRedirects: 1 }).then(() => null, (e: Error) => e);
    expect(err).toBeInstanceOf(VofRedirectError);
    expect((err as VofRedirectError).reason).toBe('hop-limit');
    expect((err as VofRedirectError).hops).toEqual([`${a.url}/d`, `${b.url}/d`, `${c.url}/d2`]);
    const d = await BlockDevice.open(`${a.url}/d`, { log: silentLogger, maxRedirects: 2 });
    expect(d.device.url).toBe(`${c.url}/d2`);
    expect(d.device.tvqn).toBe('d2');
    await d.close();
    const r = await vofAsync(['info', `${a.url}/d`]);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`device +${a.url}/d`));
    expect(r.stdout).toMatch(new RegExp(`found at +${c.url}/d2`));
    const limited = await vofAsync(['info', `${a.url}/d`, '--max-redirects', '1']);
    expect(limited.status).toBe(1);
    expect(limited.stderr).toMatch(/vof: VofRedirectError: more than 1 redirects: /);
  }, SLOW);

  it('vof target refuses a --redirect it cannot carry', async () => {
    const r = await vofAsync(['target', '--listen', 'tcp://127.0.0.1:0', '--redirect', 'd=http://x']);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/--redirect: "http:\/\/x\/d" is not a Virtio-oF address/);
  }, SLOW);
});
