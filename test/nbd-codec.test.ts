import { describe, expect, it } from 'vitest';
import {
  NbdInfo,
  NbdOption,
  NbdReply,
  decodeInfoRequest,
  decodeRequestHeader,
  encodeExportNameReply,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoRequest,
  encodeOptionReply,
  encodeServerGreeting,
  encodeSimpleReply,
} from '../src/nbd/nbd-protocol.js';
import { formatNbdUri } from '../src/nbd/nbd-server.js';
import { RangeLock } from '../src/nbd/range-lock.js';

/** Expected bytes written out by hand from doc/proto.md's message layouts (big-endian). */
const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

describe('NBD codec (golden bytes)', () => {
  it('server greeting: NBDMAGIC, IHAVEOPT, handshake flags', () => {
    expect(encodeServerGreeting(3)).toEqual(hex('4e42444d41474943 49484156454f5054 0003'));
  });

  it('option reply: magic, option, type, length, data', () => {
    expect(encodeOptionReply(NbdOption.GO, NbdReply.ACK)).toEqual(hex('0003e889045565a9 00000007 00000001 00000000'));
    expect(encodeOptionReply(0x4242, NbdReply.ERR_UNSUP, Buffer.from('no'))).toEqual(hex('0003e889045565a9 00004242 80000001 00000002 6e6f'));
  });

  it('NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE payloads', () => {
    expect(encodeInfoExport(0x2000000n, 0x016d)).toEqual(hex('0000 0000000002000000 016d'));
    expect(encodeInfoBlockSize({ minimum: 512, preferred: 4096, maximum: 32 << 20 })).toEqual(hex('0003 00000200 00001000 02000000'));
  });

  it('NBD_OPT_EXPORT_NAME reply, with and without the 124 zero bytes', () => {
    expect(encodeExportNameReply(1024n, 1, true)).toEqual(hex('0000000000000400 0001'));
    const padded = encodeExportNameReply(1024n, 1, false);
    expect(padded.length).toBe(134);
    expect(padded.subarray(10).every((b) => b === 0)).toBe(true);
  });

  it('NBD_OPT_GO data round trip, and lengths that do not add up are refused', () => {
    const d = encodeInfoRequest('d0', [NbdInfo.BLOCK_SIZE]);
    expect(d).toEqual(hex('00000002 6430 0001 0003'));
    expect(decodeInfoRequest(d)).toEqual({ name: 'd0', infos: [3] });
    expect(decodeInfoRequest(hex('00000002 6430 0001'))).toBeNull(); // one info announced, none sent
    expect(decodeInfoRequest(hex('00000002 6430 0000 00'))).toBeNull(); // trailing byte
    expect(decodeInfoRequest(hex('ffffffff 0000'))).toBeNull();
  });

  it('request header decode and simple reply encode', () => {
    const h = decodeRequestHeader(hex('25609513 0001 0001 0102030405060708 0000000000100000 00001000'));
    expect(h).toEqual({ magic: 0x25609513, flags: 1, type: 1, cookie: hex('0102030405060708'), offset: 0x100000n, length: 4096 });
    expect(encodeSimpleReply(22, h.cookie)).toEqual(hex('67446698 00000016 0102030405060708'));
  });

  it('NBD URIs per doc/uri.md', () => {
    expect(formatNbdUri({ socket: '/run/vof/a b.sock' }, 'disk0')).toBe('nbd+unix:///disk0?socket=/run/vof/a%20b.sock');
    expect(formatNbdUri({ host: '127.0.0.1', port: 10809 }, 'my disk')).toBe('nbd://127.0.0.1:10809/my%20disk');
    expect(formatNbdUri({ host: '::1', port: 0x2a29 }, '')).toBe('nbd://[::1]:10793/');
    expect(formatNbdUri({ socket: '/s?&=' }, 'a/b?c')).toBe('nbd+unix:///a%2Fb%3Fc?socket=/s%3F%26%3D');
  });
});

describe('RangeLock', () => {
  it('shared holders overlap, an exclusive one waits for earlier overlapping holders and blocks later ones', async () => {
    const lock = new RangeLock();
    const order: string[] = [];
    const a = await lock.acquire(0, 1024, false);
    const b = await lock.acquire(512, 2048, false); // shared + shared: both granted
    const c = lock.acquire(0, 512, true).then((r) => (order.push('c'), r));
    const d = lock.acquire(4096, 8192, true).then((r) => (order.push('d'), r)); // disjoint: at once
    const e = lock.acquire(256, 300, false).then((r) => (order.push('e'), r)); // behind c
    await new Promise((r) => setTimeout(r, 10));
    expect(order).toEqual(['d']);
    b();
    await new Promise((r) => setTimeout(r, 10));
    expect(order).toEqual(['d']); // a still overlaps c
    a();
    (await c)();
    (await e)();
    (await d)();
    expect(order).toEqual(['d', 'c', 'e']);
    expect(lock.size).toBe(0);
  });
});
