import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BlockDevice,
  CONNECT_BODY_SIZE,
  Opcode,
  RemoteDevice,
  VofRedirectError,
  parsePskFile,
  silentLogger,
  statusName,
  type TlsClientSettings,
} from '../src/index.js';
import { CONTROL_QUEUE_INSTANCE_ID, VIRTIO_OF_CONTROL_QUEUE_SIZE } from '../src/protocol/constants.js';
import { encodeConnectBody } from '../src/protocol/connect-body.js';
import {
  REDIRECT_RECORD_SIZE,
  VOF_CONNECT_F_REDIRECT,
  VOF_STATUS_EREDIRECT,
  decodeRedirectRecord,
  encodeRedirectCompletion,
  encodeRedirectRecord,
  setConnectFlags,
} from '../src/protocol/redirect-record.js';
import { redirectAllowed } from '../src/initiator/control-path.js';
import { parseDeviceUrl } from '../src/transport/url.js';
import { RawQueue } from './helpers/raw-queue.js';
import { TargetFixture } from './helpers/target-fixture.js';
import { vofAsync } from './helpers/vof-cli.js';

/**
 * Security round 2 (TLS identities and redirects): each test here failed on the code before it.
 * - a PSK identity counts only when the handshake used that PSK, never because it was offered;
 * - a PSK initiator refuses a target that answered with a certificate instead of the PSK;
 * - a redirect never lowers the transport the user chose, unless the user allows it;
 * - a redirect's destination is told only to peers the access policy admits.
 */

const DIR = join(import.meta.dirname, 'fixtures/tls');
const pem = (name: string) => readFileSync(join(DIR, name));
const PSKS = parsePskFile(readFileSync(join(DIR, 'psk.txt'), 'utf8'));
const psk = (identity: string, key = PSKS.get(identity)!): TlsClientSettings => ({ psk: { identity, key } });
const quiet = { keepaliveIntervalMs: 0, log: silentLogger };
const MiB = 1024 * 1024;
const portOf = (url: string) => Number(url.split(':').pop());
const st = (c: Buffer) => statusName(c.readUInt16LE(0));

/**
 * The forger's handshake: it offers PSK identity `identity` with a key it does not know, and
 * allows only TLS_AES_256_GCM_SHA384, whose hash does not match the SHA-256 PSK. OpenSSL then
 * drops the PSK without checking its binder and finishes on the target's certificate.
 */
function forgedPsk(identity: string, extra: object = {}) {
  return {
    ciphers: 'TLS_AES_256_GCM_SHA384',
    pskCallback: () => ({ identity, psk: randomBytes(32) }),
    checkServerIdentity: () => undefined,
    rejectUnauthorized: false,
    ...extra,
  };
}

function controlConnect(tvqn: string, ivqn: string, flags = 0) {
  return [
    { opcode: Opcode.Connect, commandId: 1, deviceInstanceId: CONTROL_QUEUE_INSTANCE_ID, vqIndex: 0, length: CONNECT_BODY_SIZE, queueSize: VIRTIO_OF_CONTROL_QUEUE_SIZE },
    setConnectFlags(encodeConnectBody({ ivqn, tvqn }), flags),
  ] as const;
}

describe('TLS identity: only what the handshake proved', () => {
  it('a target with a certificate and PSKs: an offered PSK identity whose key the peer lacks gives no identity', async () => {
    const fx = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 120000 }, tls: { cert: pem('target.crt'), key: pem('target.key'), psk: PSKS } });
    try {
      await fx.addDisk('secure', MiB, { allow: [{ ivqn: 'host-a', identity: 'id-a' }] });
      const url = await fx.target.listen('tls://127.0.0.1:0');
      const q = await RawQueue.openTls(portOf(url), forgedPsk('id-a'));
      const c = await q.call(...controlConnect('secure', 'host-a'));
      expect(st(c)).toBe('EACLREJECTED');
      await q.close();
      expect(fx.logged(/"host-a" → "secure": IVQN not allowed for an unauthenticated peer/)).toBe(true);
      // The real key still works.
      const d = await BlockDevice.open(`${url}/secure`, { ivqn: 'host-a', tls: psk('id-a'), ...quiet });
      await d.close();
    } finally {
      await fx.close();
    }
  });

  it('with a client CA: a peer that offers PSK identity "id-a" and shows host-b\'s certificate is host-b', async () => {
    const fx = new TargetFixture({
      keepalive: { intervalMs: 60000, timeoutMs: 120000 },
      tls: { cert: pem('target.crt'), key: pem('target.key'), ca: pem('ca.crt'), psk: PSKS },
    });
    try {
      await fx.addDisk('secure', MiB, { allow: [{ ivqn: 'host-a', identity: 'id-a' }, { ivqn: 'host-b', identity: 'host-b' }] });
      const url = await fx.target.listen('tls://127.0.0.1:0');
      const q = await RawQueue.openTls(portOf(url), forgedPsk('id-a', { ca: pem('ca.crt'), cert: pem('host-b.crt'), key: pem('host-b.key') }));
      expect(st(await q.call(...controlConnect('secure', 'host-a')))).toBe('EACLREJECTED');
      await q.close();
      expect(fx.logged(/"host-a" → "secure", identity "host-b": IVQN not allowed for identity "host-b"/)).toBe(true);
      // The same certificate is host-b for what host-b is allowed.
      const b = await RawQueue.openTls(portOf(url), forgedPsk('id-a', { ca: pem('ca.crt'), cert: pem('host-b.crt'), key: pem('host-b.key') }));
      expect(st(await b.call(...controlConnect('secure', 'host-b')))).toBe('SUCCESS');
      await b.close();
    } finally {
      await fx.close();
    }
  });

  it('a PSK initiator refuses a target that answers with a (trusted) certificate instead of the PSK', async () => {
    // The impostor: a real vof target with a certificate the initiator's CA trusts, and no PSK.
    const impostor = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 120000 }, tls: { cert: pem('target.crt'), key: pem('target.key') } });
    try {
      await impostor.addDisk('secure', MiB);
      const url = await impostor.target.listen('tls://127.0.0.1:0');
      const err = await RemoteDevice.connect(`${url}/secure`, { ivqn: 'host-a', tls: { ca: pem('ca.crt'), ...psk('id-a') }, connectTimeoutMs: 5000, ...quiet }).then(
        async (d) => {
          await d.close();
          return null;
        },
        (e: Error) => e,
      );
      expect(err?.message).toMatch(/TLS: the target did not use the PSK of identity "id-a" \(it answered with a certificate instead\)/);
      // The IVQN never reached the impostor.
      expect(impostor.logs.filter((l) => l.msg.includes('host-a'))).toEqual([]);
    } finally {
      await impostor.close();
    }
  });

  it('a PSK initiator over the CLI says the same, exit 1', async () => {
    const impostor = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 120000 }, tls: { cert: pem('target.crt'), key: pem('target.key') } });
    try {
      await impostor.addDisk('d', MiB);
      const url = await impostor.target.listen('tls://127.0.0.1:0');
      const r = await vofAsync(['info', `${url}/d`, '--tls-ca', join(DIR, 'ca.crt'), '--tls-psk', join(DIR, 'psk.txt'), '--tls-psk-identity', 'id-a']);
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/did not use the PSK of identity "id-a"/);
    } finally {
      await impostor.close();
    }
  });
});

describe('redirects keep the protection the user chose', () => {
  it('the rule: same scheme, or tcp:// raised to tls://; anything else only when allowed', () => {
    expect(redirectAllowed('tls', 'tls')).toBe(true);
    expect(redirectAllowed('tcp', 'tls')).toBe(true);
    expect(redirectAllowed('rdma', 'rdma')).toBe(true);
    expect(redirectAllowed('tls', 'tcp')).toBe(false);
    expect(redirectAllowed('tls', 'rdma')).toBe(false);
    expect(redirectAllowed('tcp', 'rdma')).toBe(false);
    expect(redirectAllowed('rdma', 'tcp')).toBe(false);
    expect(redirectAllowed('tls', 'tcp', ['tcp'])).toBe(true);
    expect(redirectAllowed('tcp', 'rdma', ['rdma'])).toBe(true);
  });

  /** A tls:// target that redirects "d" to plain TCP, and the TCP target it names. */
  async function tlsToTcp() {
    const dest = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 120000 } });
    await dest.addDisk('d', MiB);
    const tcpUrl = await dest.listen();
    const from = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 120000 }, tls: { cert: pem('target.crt'), key: pem('target.key'), psk: PSKS } });
    from.target.redirect('d', tcpUrl);
    const tlsUrl = await from.target.listen('tls://127.0.0.1:0');
    return { dest, from, tcpUrl, tlsUrl, close: () => Promise.all([dest.close(), from.close()]) };
  }

  it('tls:// → tcp:// is refused before the IVQN is sent in clear; --allow-redirect-to tcp follows it', async () => {
    const t = await tlsToTcp();
    try {
      const err = await RemoteDevice.connect(`${t.tlsUrl}/d`, { ivqn: 'secret-host', tls: psk('id-a'), ...quiet }).then(
        async (d) => {
          await d.close();
          return null;
        },
        (e: Error) => e,
      );
      expect(err).toBeInstanceOf(VofRedirectError);
      expect((err as VofRedirectError).reason).toBe('transport');
      expect(err!.message).toBe(
        `${t.tlsUrl}/d: redirect to ${t.tcpUrl}/d refused: it would leave tls:// for tcp://, which carries the IVQN and data in clear; ` +
          "--allow-redirect-to tcp (library: allowRedirectTo: ['tcp']) allows it",
      );
      expect(t.dest.logs.filter((l) => l.msg.includes('secret-host'))).toEqual([]);

      const cli = await vofAsync(['info', `${t.tlsUrl}/d`, '--tls-psk', join(DIR, 'psk.txt'), '--tls-psk-identity', 'id-a']);
      expect(cli.status).toBe(1);
      expect(cli.stderr).toMatch(/refused: it would leave tls:\/\/ for tcp:\/\/.*--allow-redirect-to tcp/);

      const allowed = await vofAsync(['info', `${t.tlsUrl}/d`, '--tls-psk', join(DIR, 'psk.txt'), '--tls-psk-identity', 'id-a', '--allow-redirect-to', 'tcp']);
      expect(allowed.status, allowed.stderr).toBe(0);
      expect(allowed.stdout).toMatch(new RegExp(`found at +${t.tcpUrl}/d`));
      const bad = await vofAsync(['info', `${t.tlsUrl}/d`, '--allow-redirect-to', 'http']);
      expect([bad.status, bad.stderr]).toEqual([2, expect.stringMatching(/--allow-redirect-to takes a comma-separated list of tcp, tls, rdma, got "http"/)]);
    } finally {
      await t.close();
    }
  });

  it('a drain from tls:// to tcp:// loses the device with that error instead of reconnecting in clear', async () => {
    const dest = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 120000 } });
    const from = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 120000 }, tls: { cert: pem('target.crt'), key: pem('target.key'), psk: PSKS } });
    try {
      await dest.addDisk('d', MiB);
      const tcpUrl = await dest.listen();
      await from.addDisk('d', MiB);
      const tlsUrl = await from.target.listen('tls://127.0.0.1:0');
      const dev = await BlockDevice.open(`${tlsUrl}/d`, { ivqn: 'secret-host', tls: psk('id-a'), ...quiet, reconnectDelayMs: 50, ctrlLossTimeoutMs: 20000 });
      const lost = new Promise<Error>((resolve) => dev.device.once('lost', resolve));
      await from.target.drain('d', tcpUrl, 2000);
      const err = await lost;
      expect(err).toBeInstanceOf(VofRedirectError);
      expect(err.message).toMatch(/refused: it would leave tls:\/\/ for tcp:\/\//);
      expect(dev.device.state).toBe('lost');
      expect(dest.logs.filter((l) => l.msg.includes('secret-host'))).toEqual([]);
      await dev.close();
    } finally {
      await Promise.all([dest.close(), from.close()]);
    }
  });

  it('tcp:// → rdma:// needs --allow-redirect-to rdma; tcp:// → tls:// is followed with the same trust settings', async () => {
    const rdmaSide = new TargetFixture();
    const secure = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 120000 }, tls: { cert: pem('target.crt'), key: pem('target.key'), psk: PSKS } });
    try {
      rdmaSide.target.redirect('r', 'rdma://127.0.0.1:1/r');
      await secure.addDisk('s', MiB, { allow: [{ ivqn: 'host-a', identity: 'id-a' }] });
      const tlsUrl = await secure.target.listen('tls://127.0.0.1:0');
      rdmaSide.target.redirect('s', `${tlsUrl}/s`);
      const tcpUrl = await rdmaSide.listen();
      const err = await BlockDevice.open(`${tcpUrl}/r`, quiet).then(() => null, (e: Error) => e);
      expect((err as VofRedirectError).reason).toBe('transport');
      expect(err!.message).toMatch(/it would move a tcp:\/\/ connection to rdma:\/\/; --allow-redirect-to rdma/);
      // Raised to TLS: the PSK given for the tcp:// URL is what proves the identity there.
      const d = await BlockDevice.open(`${tcpUrl}/s`, { ivqn: 'host-a', tls: psk('id-a'), ...quiet });
      expect(d.device.url).toBe(`${tlsUrl}/s`);
      await d.close();
    } finally {
      await Promise.all([rdmaSide.close(), secure.close()]);
    }
  });
});

describe('a redirect tells its destination only to peers the access policy admits', () => {
  let fx: TargetFixture;
  beforeAll(async () => {
    fx = new TargetFixture();
    // A pure redirect with its own allow-list, and an export that is being drained.
    fx.target.redirect('moved', 'tcp://10.9.8.7:4242/internal', ['host-a']);
    await fx.addDisk('exported', MiB, { allow: ['host-a'] });
    fx.target.redirect('exported', 'tcp://10.9.8.7:4242/elsewhere');
    await fx.listen();
  });
  afterAll(async () => {
    await fx?.close();
  });

  for (const tvqn of ['moved', 'exported']) {
    it(`"${tvqn}": another IVQN gets EACLREJECTED and no record; host-a gets EREDIRECT`, async () => {
      const q = await RawQueue.open(fx.port);
      const c = await q.call(...controlConnect(tvqn, 'host-b', VOF_CONNECT_F_REDIRECT));
      expect(st(c)).toBe('EACLREJECTED');
      // Nothing follows the completion: the connection stays open with no record on it.
      await expect(q.read(1, 300)).rejects.toThrow();
      await q.close();
      expect(fx.logged(new RegExp(`no redirect of "host-b" → "${tvqn}": IVQN not allowed for an unauthenticated peer`))).toBe(true);

      const a = await RawQueue.open(fx.port);
      const [cmd, body] = controlConnect(tvqn, 'host-a', VOF_CONNECT_F_REDIRECT);
      a.command(cmd, body);
      const r = await a.read(16 + REDIRECT_RECORD_SIZE);
      expect(r.readUInt16LE(0)).toBe(VOF_STATUS_EREDIRECT);
      expect(decodeRedirectRecord(r.subarray(16)).host).toBe('10.9.8.7');
      await a.close();
    });
  }
});

describe('peer strings in URLs and redirect records', () => {
  it('URLs with control characters or a non-host are refused at parse time', () => {
    expect(() => parseDeviceUrl('tcp://evil\u001b[2J:1/d')).toThrow(/control characters/);
    expect(() => parseDeviceUrl('tcp://a\nb/d')).toThrow(/control characters/);
    expect(() => parseDeviceUrl('tcp://host/d%0a')).toThrow(/TVQN of .* contains control characters/);
    expect(() => parseDeviceUrl('tcp://ho"st/d')).toThrow(/not a Virtio-oF address/);
    expect(() => parseDeviceUrl('tcp://host/%zz')).toThrow(/bad percent-encoding/);
    expect(parseDeviceUrl('tcp://[fe80::1%rxe0]:15771/d').endpoint.host).toBe('fe80::1%rxe0');
  });

  it('a redirect record whose host or TVQN carries control characters is a bad record, not a hop', async () => {
    const bad = encodeRedirectRecord({ scheme: 'tcp', host: 'x', port: 1, tvqn: 'd' });
    Buffer.from('\u001b[2J\0').copy(bad, 8);
    expect(() => decodeRedirectRecord(bad)).toThrow(/address "\\x1b\[2J" is not a host/);

    // A fake target that redirects to a TVQN with a newline in it.
    const record = encodeRedirectRecord({ scheme: 'tcp', host: '127.0.0.1', port: 1, tvqn: 'x\ny' });
    const server = net.createServer((s) => {
      s.once('data', (d) => s.write(Buffer.concat([encodeRedirectCompletion(d.readUInt16LE(2)), record])));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const port = (server.address() as net.AddressInfo).port;
      const err = await BlockDevice.open(`tcp://127.0.0.1:${port}/d`, quiet).then(() => null, (e: Error) => e);
      expect((err as VofRedirectError).reason).toBe('bad-record');
      expect(err!.message).toMatch(/contains control characters/);
    } finally {
      server.close();
    }
  });
});

describe('TLS handshakes in progress are bounded from the first byte (finding 6)', () => {
  it('connections that never finish their handshake count against the per-host limit: the oldest are closed, a real client gets in', async () => {
    const fx = new TargetFixture({
      keepalive: { intervalMs: 60000, timeoutMs: 120000 },
      quotas: { unboundPerHost: 8, unboundConnections: 16 },
      tls: { cert: pem('target.crt'), key: pem('target.key'), psk: PSKS },
    });
    const idle: net.Socket[] = [];
    try {
      await fx.addDisk('d', MiB);
      const url = await fx.target.listen('tls://127.0.0.1:0');
      for (let i = 0; i < 20; i++) {
        const s = net.connect(portOf(url), '127.0.0.1');
        s.on('error', () => {});
        await new Promise((r) => s.once('connect', r));
        idle.push(s);
      }
      // Let the target see them all (each eviction closes the peer's socket).
      await new Promise((r) => setTimeout(r, 300));
      const open = idle.filter((s) => !s.destroyed && !s.readableEnded).length;
      expect(open).toBeLessThanOrEqual(8);
      expect(fx.logged(/closed during its TLS handshake to make room/)).toBe(true);
      const d = await BlockDevice.open(`${url}/d`, { tls: psk('id-a'), ...quiet });
      await d.close();
    } finally {
      for (const s of idle) s.destroy();
      await fx.close();
    }
  });
});

describe('instance ids are no oracle, and another host cannot take a queue (finding 5)', () => {
  it("from another host, host-a's instance with host-a's exact body answers what an unused id answers; the 4th refusal closes the connection", async () => {
    const fx = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 120000 } });
    try {
      await fx.addDisk('d', MiB, { numQueues: 2, allow: ['host-a'] });
      await fx.listen();
      const a = await BlockDevice.open(`${fx.url}/d`, { ivqn: 'host-a', maxQueues: 1, ...quiet });
      try {
        const id = a.device.instanceId;
        const unused = id ^ 0x4000;
        const body = encodeConnectBody({ ivqn: 'host-a', tvqn: 'd' });
        const vq = (instance: number, vqIndex: number) =>
          [{ opcode: Opcode.Connect, commandId: 9, deviceInstanceId: instance, vqIndex, length: CONNECT_BODY_SIZE, queueSize: 4 }, body] as const;
        const other = await RawQueue.open(fx.port, '127.0.0.1', '127.0.0.2');
        // The free virtqueue 1 of a live instance, with the right IVQN and TVQN: before, SUCCESS.
        expect(st(await other.call(...vq(id, 1)))).toBe('EBADDEV');
        expect(st(await other.call(...vq(unused, 1)))).toBe('EBADDEV');
        expect(st(await other.call(...vq(id, 0)))).toBe('EBADDEV');
        expect(st(await other.call(...vq(unused, 0)))).toBe('EBADDEV');
        await other.whenClosed(5000);
        expect(fx.logged(/unauthenticated connection from tcp:\/\/127\.0\.0\.2, not the control queue's host/)).toBe(true);
        expect(fx.logged(/closing the queue: 4 refused Connects on one connection/)).toBe(true);
        // host-a's own second queue from its own host still attaches.
        const own = await RawQueue.open(fx.port);
        expect(st(await own.call(...vq(id, 1)))).toBe('SUCCESS');
        await own.close();
        await a.write(0, Buffer.alloc(512, 3));
        expect((await a.read(0, 512)).equals(Buffer.alloc(512, 3))).toBe(true);
      } finally {
        await a.close();
      }
    } finally {
      await fx.close();
    }
  });
});

describe("a claimed IVQN counts against the claimant, not the IVQN's owner (finding 8)", () => {
  it('another host that opens the per-IVQN limit of instances as "host-a" does not lock the real host-a out', async () => {
    const fx = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 120000 }, quotas: { instancesPerIvqn: 3 } });
    const squatters: RawQueue[] = [];
    try {
      await fx.addDisk('d', MiB, { allow: ['host-a'] });
      await fx.listen();
      for (let i = 0; i < 4; i++) {
        const q = await RawQueue.open(fx.port, '127.0.0.1', '127.0.0.2');
        squatters.push(q);
        expect(st(await q.connectControl('d', 'host-a'))).toBe(i < 3 ? 'SUCCESS' : 'ENODEV');
      }
      expect(fx.logged(/this IVQN has 3 instances of the export from this peer, its limit/)).toBe(true);
      // Before: ENODEV for the real host-a, its IVQN's count full of someone else's instances.
      const a = await BlockDevice.open(`${fx.url}/d`, { ivqn: 'host-a', ...quiet });
      await a.write(0, Buffer.alloc(512, 1));
      await a.close();
    } finally {
      await Promise.all(squatters.map((q) => q.close().catch(() => {})));
      await fx.close();
    }
  });
});
