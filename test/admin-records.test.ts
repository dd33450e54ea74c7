import { describe, expect, it } from 'vitest';
import {
  AdminClass,
  ErrorLogEntryType,
  QueueRole,
  QueueTransport,
  decodeErrorLogPage,
  decodeFormatList,
  decodeHealthTestResult,
  decodeQueueList,
  encodeCommandList,
  encodeErrorLogPage,
  encodeErrorLogRequest,
  encodeFormatList,
  encodeFormatRequest,
  encodeHealthTestResult,
  encodeQueueList,
  seedAdminHeader,
} from '../src/index.js';

/** Bytes written out by hand from docs/PROTOCOL.md's structs (little-endian, no padding). */
const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

describe('admin virtqueue wire format (seed 000 header, vof records)', () => {
  it('the seed header: class, command, data; result, then status_type in the low nibble and status last', () => {
    expect(seedAdminHeader.encodeRequest({ cls: 128, command: 1, data: hex('00100000 00000000') }).toString('hex')).toBe('800100100000' + '00000000');
    expect(seedAdminHeader.decodeRequest(hex('c0 01 aa'))).toEqual({ cls: 192, command: 1, data: hex('aa') });
    expect(seedAdminHeader.decodeRequest(hex('00'))).toBeNull();
    // 8 writable bytes (holding stale bytes): 2 of result, zero padding, then status_type 1 and status 2.
    const w = Buffer.alloc(8, 0xee);
    expect(seedAdminHeader.encodeResponse({ result: hex('abcd'), statusType: 1, status: 2 }, w)).toBe(8);
    expect(w.toString('hex')).toBe('abcd000000000102');
    expect(seedAdminHeader.encodeResponse({ result: hex(''), statusType: 0, status: 0 }, Buffer.alloc(1))).toBe(0);
    // The reserved high nibble is ignored when received.
    expect(seedAdminHeader.decodeResponse(hex('ee f3 04'))).toEqual({ result: hex('ee'), statusType: 3, status: 4 });
    expect(seedAdminHeader.decodeResponse(hex('04'))).toBeNull();
  });

  it('LIST_COMMANDS, READ_ERROR_LOG request, FORMAT request', () => {
    expect(encodeCommandList([{ cls: 0, command: 2 }, { cls: AdminClass.VIRTIO_OF, command: 0 }]).toString('hex')).toBe('0200 0000 0002 4000'.replace(/ /g, ''));
    expect(encodeErrorLogRequest(3, 0x102).toString('hex')).toBe('03000201');
    expect(encodeFormatRequest(4096, 8).toString('hex')).toBe('00100000' + '08000000');
  });

  it('error log page and its 64-byte entries', () => {
    const page = { total: 7, lost: 300, entries: [{ timestampMs: 0x0102030405, type: ErrorLogEntryType.IO_ERROR, vqIndex: 1, instanceId: 9, status: 1, detail: 'IN sector 8: IOERR' }] };
    const b = encodeErrorLogPage(page);
    expect(b.length).toBe(16 + 64);
    expect(b.subarray(0, 16).toString('hex')).toBe('0100 0000 07000000 2c01000000000000'.replace(/ /g, ''));
    expect(b.subarray(16, 32).toString('hex')).toBe('0504030201000000 01 00 0100 0900 0100'.replace(/ /g, ''));
    expect(b.subarray(32, 32 + 18).toString()).toBe('IN sector 8: IOERR');
    expect(b.subarray(32 + 18, 80).every((x) => x === 0)).toBe(true);
    expect(decodeErrorLogPage(b)).toEqual(page);
    // A detail longer than 48 bytes is cut on a character boundary.
    const long = encodeErrorLogPage({ total: 1, lost: 0, entries: [{ ...page.entries[0]!, detail: 'é'.repeat(30) }] });
    expect(decodeErrorLogPage(long).entries[0]!.detail).toBe('é'.repeat(24));
    expect(() => decodeErrorLogPage(b.subarray(0, 40))).toThrow(RangeError);
  });

  it('health test result, 32 bytes', () => {
    const r = { passed: false, samples: 64, errors: 2, durationMs: 5, bytesChecked: 31744, firstError: 1048576n };
    const b = encodeHealthTestResult(r);
    expect(b.toString('hex')).toBe('01000000 40000000 02000000 05000000 007c000000000000 0000100000000000'.replace(/ /g, ''));
    expect(decodeHealthTestResult(b)).toEqual(r);
    expect(decodeHealthTestResult(encodeHealthTestResult({ ...r, passed: true, errors: 0, firstError: null })).firstError).toBeNull();
    expect(encodeHealthTestResult({ ...r, firstError: null }).subarray(24).toString('hex')).toBe('ffffffffffffffff');
  });

  it('queue list entries, 112 bytes', () => {
    const q = { vqIndex: 0xffff, role: QueueRole.CONTROL, transport: QueueTransport.RDMA, queueSize: 32, inFlight: 1, commands: 5, bytesOut: 6, bytesIn: 7, errors: 8, peer: 'rdma://10.0.0.2:4000' };
    const b = encodeQueueList([q]);
    expect(b.length).toBe(8 + 112);
    expect(b.subarray(0, 8).toString('hex')).toBe('0100000000000000');
    expect(b.subarray(8, 48).toString('hex')).toBe(
      'ffff 00 01 2000 0100 0500000000000000 0600000000000000 0700000000000000 0800000000000000'.replace(/ /g, ''),
    );
    expect(b.subarray(48, 48 + q.peer.length).toString()).toBe(q.peer);
    expect(decodeQueueList(b)).toEqual([q]);
  });

  it('format list', () => {
    const formats = [{ blockSize: 512, metadataBytes: 0, supported: true }, { blockSize: 4096, metadataBytes: 8, supported: false }];
    const b = encodeFormatList(formats, 1);
    expect(b.toString('hex')).toBe('0200 01 00 00020000 00 01 0000 00100000 08 00 0000'.replace(/ /g, ''));
    expect(decodeFormatList(b)).toEqual({ formats, current: 1 });
  });
});
