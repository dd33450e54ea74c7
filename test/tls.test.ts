import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BlockDevice,
  CONNECT_BODY_SIZE,
  Opcode,
  RemoteDevice,
  SECTOR_SIZE,
  VofError,
  encodeConnectBody,
  parsePskFile,
  statusName,
  type TlsClientSettings,
} from '../src/index.js';
import { startTarget } from '../scripts/start-target.mjs';
import { vofAsync } from './helpers/vof-cli.js';
import { RawQueue } from './helpers/raw-queue.js';
import { TargetFixture } from './helpers/target-fixture.js';
import { pattern } from './helpers/pattern.js';

const DIR = join(import.meta.dirname, 'fixtures/tls');
const pem = (name: string) => readFileSync(join(DIR, name));
const PSKS = parsePskFile(readFileSync(join(DIR, 'psk.txt'), 'utf8'));
const psk = (identity: string, key = PSKS.get(identity)!) => ({ psk: { identity, key } });
const CA = { ca: pem('ca.crt') };
const asHostA: TlsClientSettings = { ...CA, cert: pem('host-a.crt'), key: pem('host-a.key') };
const st = (c: Buffer) => statusName(c.readUInt16LE(0));
const MiB = 1024 * 1024;
const quiet = { keepaliveIntervalMs: 0 };

const vof = vofAsync;

describe('tls:// with PSKs and client certificates, identities in the allow-list', () => {
  let fx: TargetFixture;
  let tlsUrl: string;
  let tcpUrl: string;
  beforeAll(async () => {
    fx = new TargetFixture({
      keepalive: { intervalMs: 60000, timeoutMs: 120000 },
      tls: { cert: pem('target.crt'), key: pem('target.key'), ca: pem('ca.crt'), psk: PSKS },
    });
    await fx.addDisk('secure', 4 * MiB, {
      numQueues: 2,
      allow: [
        { ivqn: 'host-a', identity: 'id-a' },
        { ivqn: 'host-a', identity: 'host-a' },
      ],
    });
    tlsUrl = await fx.target.listen('tls://127.0.0.1:0');
    tcpUrl = await fx.target.listen('tcp://127.0.0.1:0');
  });
  afterAll(async () => {
    await fx?.close();
  });
  const portOf = (url: string) => Number(url.split(':').pop());

  it('an allowed PSK identity works end to end: write, flush, close, reopen, read back', async () => {
    const data = pattern(256 * 1024, 3);
    const d = await BlockDevice.open(`${tlsUrl}/secure`, { ivqn: 'host-a', tls: psk('id-a'), ...quiet });
    expect(d.device.url.startsWith('tls://')).toBe(true);
    await d.write(64 * 1024, data);
    await d.flush();
    await d.close();
    const again = await BlockDevice.open(`${tlsUrl}/secure`, { ivqn: 'host-a', tls: psk('id-a'), ...quiet });
    try {
      expect((await again.read(64 * 1024, data.length)).equals(data)).toBe(true);
      const id = again.device.instanceId;
      expect(fx.logged(new RegExp(`^tls://127\\.0\\.0\\.1:\\d+: instance ${id} created: "host-a" → "secure", identity "id-a"$`))).toBe(true);
      expect(fx.logged(new RegExp(`virtqueue 1 of instance ${id} attached: "host-a" → "secure", identity "id-a"$`))).toBe(true);
    } finally {
      await again.close();
    }
  });

  it('an allowed client certificate (CN = identity, signed by the CA) works end to end', async () => {
    const d = await BlockDevice.open(`${tlsUrl}/secure`, { ivqn: 'host-a', tls: asHostA, ...quiet });
    try {
      await d.write(0, pattern(4096, 5));
      await d.flush();
      expect((await d.read(0, 4096)).equals(pattern(4096, 5))).toBe(true);
      expect(fx.logged(new RegExp(`instance ${d.device.instanceId} created: "host-a" → "secure", identity "host-a"$`))).toBe(true);
    } finally {
      await d.close();
    }
  });

  it('plain TCP to the TLS listener gets no Virtio-oF answer, only a closed connection', async () => {
    const q = await RawQueue.open(portOf(tlsUrl));
    q.command(
      { opcode: Opcode.Connect, commandId: 1, deviceInstanceId: 0xffff, vqIndex: 0, length: CONNECT_BODY_SIZE, queueSize: 32 },
      encodeConnectBody({ ivqn: 'host-a', tvqn: 'secure' }),
    );
    await q.whenClosed(10000);
    await expect(q.read(16, 100)).rejects.toThrow(/closed/);
    const tcpToTls = `tcp://127.0.0.1:${portOf(tlsUrl)}/secure`;
    await expect(BlockDevice.open(tcpToTls, { ivqn: 'host-a', connectTimeoutMs: 5000, ...quiet })).rejects.toThrow();
  });

  it('the IVQN alone is not enough: host-a over plain TCP, or with another identity, is EACLREJECTED', async () => {
    const plain = await BlockDevice.open(`${tcpUrl}/secure`, { ivqn: 'host-a', ...quiet }).catch((e: unknown) => e);
    expect(plain).toBeInstanceOf(VofError);
    expect((plain as VofError).statusName).toBe('EACLREJECTED');
    expect(fx.logged(/"host-a" → "secure": IVQN not allowed for an unauthenticated peer/)).toBe(true);
    for (const tls of [psk('id-b'), { ...CA, cert: pem('host-b.crt'), key: pem('host-b.key') }]) {
      const other = await BlockDevice.open(`${tlsUrl}/secure`, { ivqn: 'host-a', tls, ...quiet }).catch((e: unknown) => e);
      expect((other as VofError).statusName).toBe('EACLREJECTED');
    }
    expect(fx.logged(/IVQN not allowed for identity "id-b"/)).toBe(true);
    expect(fx.logged(/IVQN not allowed for identity "host-b"/)).toBe(true);
  });

  it('wrong keys and certificates fail the handshake: PSK with the wrong key, unknown identity, rogue CA, no certificate, untrusted target', async () => {
    const open = (tls: TlsClientSettings) =>
      RemoteDevice.connect(`${tlsUrl}/secure`, { ivqn: 'host-a', tls, connectTimeoutMs: 5000, ...quiet }).then(
        async (d) => {
          await d.close();
          return 'connected';
        },
        (e: unknown) => String(e),
      );
    expect(await open(psk('id-a', Buffer.alloc(32, 0x55)))).not.toBe('connected');
    expect(await open(psk('id-unknown', Buffer.alloc(32, 0x55)))).not.toBe('connected');
    expect(await open({ ...CA, cert: pem('rogue-host-a.crt'), key: pem('rogue-host-a.key') })).not.toBe('connected');
    expect(await open(CA)).not.toBe('connected'); // no client certificate, no PSK
    expect(await open({ cert: pem('host-a.crt'), key: pem('host-a.key') })).toMatch(/self.signed|unable to verify|certificate/i);
    expect(fx.logged(/unknown PSK identity "id-unknown"/)).toBe(true);
    // Nothing of the above created an instance.
    expect(fx.logs.filter((l) => /instance \d+ created/.test(l.msg) && /rogue|id-unknown/.test(l.msg))).toEqual([]);
  });

  it("a matching Connect Body from another identity cannot join an authenticated instance's virtqueue", async () => {
    const a = await BlockDevice.open(`${tlsUrl}/secure`, { ivqn: 'host-a', tls: psk('id-a'), maxQueues: 1, ...quiet });
    try {
      const id = a.device.instanceId;
      const body = encodeConnectBody({ ivqn: 'host-a', tvqn: 'secure' });
      const connect = { opcode: Opcode.Connect, commandId: 3, deviceInstanceId: id, vqIndex: 1, length: CONNECT_BODY_SIZE, queueSize: 4 } as const;
      // Authenticated, but as someone else (PSK id-b, or host-b's certificate).
      const viaB = await RawQueue.openTls(portOf(tlsUrl), { ciphers: 'TLS_AES_128_GCM_SHA256', pskCallback: () => ({ identity: 'id-b', psk: PSKS.get('id-b')! }), checkServerIdentity: () => undefined });
      // Not the instance's initiator: refused as if the instance did not exist.
      expect(st(await viaB.call(connect, body))).toBe('EBADDEV');
      const viaCert = await RawQueue.openTls(portOf(tlsUrl), { ca: pem('ca.crt'), cert: pem('host-b.crt'), key: pem('host-b.key') });
      expect(st(await viaCert.call(connect, body))).toBe('EBADDEV');
      // Not authenticated at all: plain TCP to the same target.
      const plain = await RawQueue.open(portOf(tcpUrl));
      expect(st(await plain.call(connect, body))).toBe('EBADDEV');
      expect(fx.logged(new RegExp(`virtqueue 1 of instance ${id} refused: connection has identity "id-b", the control queue identity "id-a"`))).toBe(true);
      expect(fx.logged(new RegExp(`virtqueue 1 of instance ${id} refused: the instance's control queue is on tls, not tcp`))).toBe(true);
      // The same identity may: host-a's second queue.
      const own = await RawQueue.openTls(portOf(tlsUrl), { ciphers: 'TLS_AES_128_GCM_SHA256', pskCallback: () => ({ identity: 'id-a', psk: PSKS.get('id-a')! }), checkServerIdentity: () => undefined });
      expect(st(await own.call(connect, body))).toBe('SUCCESS');
      await Promise.all([viaB.close(), viaCert.close(), plain.close(), own.close()]);
      await a.write(0, pattern(512, 1));
      expect((await a.read(0, 512)).equals(pattern(512, 1))).toBe(true);
    } finally {
      await a.close();
    }
  });
});

describe('tls:// without client certificates: anonymous TLS peers have no identity', () => {
  let fx: TargetFixture;
  let url: string;
  beforeAll(async () => {
    fx = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 120000 }, tls: { cert: pem('target.crt'), key: pem('target.key'), psk: PSKS } });
    await fx.addDisk('secure', MiB, { allow: [{ ivqn: 'host-a', identity: 'id-a' }] });
    await fx.addDisk('open', MiB);
    url = await fx.target.listen('tls://127.0.0.1:0');
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('an anonymous TLS peer reaches an open export but not an identity-bound one, nor an authenticated instance with a matching body', async () => {
    const anon = await BlockDevice.open(`${url}/open`, { tls: CA, ...quiet });
    await anon.write(0, pattern(512, 2));
    expect((await anon.read(0, 512)).equals(pattern(512, 2))).toBe(true);
    await anon.close();
    const refused = await BlockDevice.open(`${url}/secure`, { ivqn: 'host-a', tls: CA, ...quiet }).catch((e: unknown) => e);
    expect((refused as VofError).statusName).toBe('EACLREJECTED');

    const a = await BlockDevice.open(`${url}/secure`, { ivqn: 'host-a', tls: psk('id-a'), maxQueues: 1, ...quiet });
    try {
      const q = await RawQueue.openTls(Number(url.split(':').pop()), { ca: pem('ca.crt') });
      const c = await q.call(
        { opcode: Opcode.Connect, commandId: 3, deviceInstanceId: a.device.instanceId, vqIndex: 0, length: CONNECT_BODY_SIZE, queueSize: 4 },
        encodeConnectBody({ ivqn: 'host-a', tvqn: 'secure' }),
      );
      expect(st(c)).toBe('EBADDEV');
      expect(fx.logged(/refused: connection has no identity, the control queue identity "id-a"/)).toBe(true);
      await q.close();
    } finally {
      await a.close();
    }
  });
});

describe('vof CLI over tls://', () => {
  const scratch = new TargetFixture(); // only for its temp dir
  let target: Awaited<ReturnType<typeof startTarget>>;
  let disk: string;
  beforeAll(async () => {
    disk = join(scratch.dir, 'disk.img');
    writeFileSync(disk, Buffer.alloc(2 * MiB));
    target = await startTarget([
      '--listen', 'tls://127.0.0.1:0',
      '--blk', `tls-disk=${disk}`,
      '--allow', 'host-a@id-a',
      '--allow', 'host-a@host-a',
      '--tls-cert', join(DIR, 'target.crt'), '--tls-key', join(DIR, 'target.key'),
      '--tls-ca', join(DIR, 'ca.crt'), '--tls-psk', join(DIR, 'psk.txt'),
    ]);
  });
  afterAll(async () => {
    await target?.stop();
    await scratch.close();
  });

  it('vof info works with a PSK and with a client certificate, and fails without credentials', async () => {
    const url = `${target.urls[0]}/tls-disk`;
    const viaPsk = await vof(['info', url, '--ivqn', 'host-a', '--tls-psk', join(DIR, 'psk.txt'), '--tls-psk-identity', 'id-a', '--json']);
    expect(viaPsk.status, viaPsk.stderr).toBe(0);
    expect(JSON.parse(viaPsk.stdout).blk.capacityBytes).toBe(2 * MiB);
    const viaCert = await vof(['info', url, '--ivqn', 'host-a', '--tls-ca', join(DIR, 'ca.crt'), '--tls-cert', join(DIR, 'host-a.crt'), '--tls-key', join(DIR, 'host-a.key')]);
    expect(viaCert.status, viaCert.stderr).toBe(0);
    expect(viaCert.stdout).toMatch(/^device +tls:\/\/127\.0\.0\.1:\d+\/tls-disk$/m);
    const ambiguous = await vof(['info', url, '--ivqn', 'host-a', '--tls-psk', join(DIR, 'psk.txt')]);
    expect([ambiguous.status, ambiguous.stderr]).toEqual([2, expect.stringMatching(/holds 2 identities: pick one with --tls-psk-identity/)]);
    const none = await vof(['info', url, '--ivqn', 'host-a', '--tls-ca', join(DIR, 'ca.crt')]);
    expect(none.status).toBe(1);
  });

  it('vof cp uploads and downloads over TLS, byte for byte', async () => {
    const url = `${target.urls[0]}/tls-disk`;
    const src = join(scratch.dir, 'up.img');
    const back = join(scratch.dir, 'down.img');
    const content = pattern(2 * MiB, 11);
    writeFileSync(src, content);
    const creds = ['--ivqn', 'host-a', '--tls-psk', join(DIR, 'psk.txt'), '--tls-psk-identity', 'id-a'];
    const up = await vof(['cp', src, url, ...creds]);
    expect(up.status, up.stderr).toBe(0);
    const down = await vof(['cp', url, back, ...creds]);
    expect(down.status, down.stderr).toBe(0);
    expect(readFileSync(back).equals(content)).toBe(true);
    expect(readFileSync(disk).equals(content)).toBe(true);
    expect(target.stderr()).toMatch(/instance \d+ created: "host-a" → "tls-disk", identity "id-a"/);
  });

  it('a tls:// listener without credentials is a usage error', async () => {
    const r = await vof(['target', '--listen', 'tls://127.0.0.1:0', '--blk', `x=${disk}`]);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/a tls:\/\/ listener needs --tls-cert\/--tls-key and\/or --tls-psk/);
  });
});

describe('PSK files', () => {
  it('parse IDENTITY:HEXKEY lines and refuse short keys, bad hex and duplicates', () => {
    expect([...parsePskFile('# c\n\nhost:a:00112233445566778899aabbccddeeff\n').keys()]).toEqual(['host:a']);
    expect(() => parsePskFile('a:0011')).toThrow(/at least 16/);
    expect(() => parsePskFile('a:zz112233445566778899aabbccddeeff')).toThrow(/IDENTITY:HEXKEY/);
    expect(() => parsePskFile('a:00112233445566778899aabbccddeeff\na:00112233445566778899aabbccddeeff')).toThrow(/twice/);
    expect(() => parsePskFile('# nothing\n')).toThrow(/no PSK/);
    expect(SECTOR_SIZE).toBe(512);
  });
});
