import { describe, expect, it } from 'vitest';
import * as adminCommand from '../src/protocol/admin-command.js';
import * as admin from '../src/protocol/admin-records.js';
import { AUTH_COMMAND, AUTH_COMPLETION, VOF_OP_AUTH_NEGOTIATE, encodeAuthCompletion } from '../src/protocol/auth.js';
import * as cmd from '../src/protocol/command.js';
import * as cpl from '../src/protocol/completion.js';
import { CONNECT_BODY } from '../src/protocol/connect-body.js';
import { COMMAND_SIZE, COMPLETION_SIZE, CONNECT_BODY_SIZE, KEYED_DESCRIPTOR_SIZE, Opcode } from '../src/protocol/constants.js';
import type { Field, FieldTable } from '../src/protocol/fields.js';
import { tableSize } from '../src/protocol/fields.js';
import { COMMAND_HEADER, COMPLETION_HEADER } from '../src/protocol/header.js';
import { VOF_OP_GET_INLINE_DATA_SIZE } from '../src/protocol/inline-data.js';
import { KEYED_DESCRIPTOR, decodeKeyedDescriptor, descriptorAddrHigh, descriptorAddrLow, descriptorKey, descriptorLength, encodeKeyedDescriptor } from '../src/protocol/keyed-descriptor.js';
import {
  REDIRECT_COMPLETION,
  REDIRECT_RECORD,
  REDIRECT_RECORD_SIZE,
  connectFlags,
  decodeRedirectRecord,
  encodeRedirectCompletion,
  encodeRedirectRecord,
  setConnectFlags,
} from '../src/protocol/redirect-record.js';
import * as nbd from '../src/nbd/nbd-protocol.js';
import * as blk from '../src/protocol/virtio-blk.js';

/**
 * Issue 21 item 3: every wire record has one field table that drives its encoder and decoder.
 * Here: each table tiles its record exactly (no overlap, no gap, the record's length), every
 * field round-trips at its minimum and maximum, and one case per record family is checked
 * against bytes written out by hand from the spec's struct.
 */

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const MAX = { u8: 0xff, u16: 0xffff, u32: 0xffffffff, u64: 0xffff_ffff_ffff_ffffn } as const;

/** Every record's table and the size its spec gives it. */
const RECORDS: ReadonlyArray<readonly [string, FieldTable, number]> = [
  ['COMMAND_HEADER (prefix)', COMMAND_HEADER, 4],
  ['COMPLETION_HEADER (prefix)', COMPLETION_HEADER, 4],
  ['CONNECT_COMMAND', cmd.CONNECT_COMMAND, COMMAND_SIZE],
  ['BARE_COMMAND', cmd.BARE_COMMAND, COMMAND_SIZE],
  ['GET_FEATURE_COMMAND', cmd.GET_FEATURE_COMMAND, COMMAND_SIZE],
  ['SET_FEATURE_COMMAND', cmd.SET_FEATURE_COMMAND, COMMAND_SIZE],
  ['VQ_COMMAND', cmd.VQ_COMMAND, COMMAND_SIZE],
  ['SET_STATUS_COMMAND', cmd.SET_STATUS_COMMAND, COMMAND_SIZE],
  ['GET_VQ_SIZE_COMMAND', cmd.GET_VQ_SIZE_COMMAND, COMMAND_SIZE],
  ['GET_CONFIG_COMMAND', cmd.GET_CONFIG_COMMAND, COMMAND_SIZE],
  ['SET_CONFIG_COMMAND', cmd.SET_CONFIG_COMMAND, COMMAND_SIZE],
  ['AUTH_COMMAND', AUTH_COMMAND, COMMAND_SIZE],
  ['BARE_COMPLETION', cpl.BARE_COMPLETION, COMPLETION_SIZE],
  ['CONNECT_COMPLETION', cpl.CONNECT_COMPLETION, COMPLETION_SIZE],
  ['FEATURE_COMPLETION', cpl.FEATURE_COMPLETION, COMPLETION_SIZE],
  ['KEYED_NUM_DESCS_COMPLETION', cpl.KEYED_NUM_DESCS_COMPLETION, COMPLETION_SIZE],
  ['U32_COMPLETION', cpl.U32_COMPLETION, COMPLETION_SIZE],
  ['VQ_COMPLETION', cpl.VQ_COMPLETION, COMPLETION_SIZE],
  ['GET_VQ_SIZE_COMPLETION', cpl.GET_VQ_SIZE_COMPLETION, COMPLETION_SIZE],
  ['GET_CONFIG_COMPLETION', cpl.GET_CONFIG_COMPLETION, COMPLETION_SIZE],
  ['CONFIG_CHANGE_COMPLETION', cpl.CONFIG_CHANGE_COMPLETION, COMPLETION_SIZE],
  ['AUTH_COMPLETION', AUTH_COMPLETION, COMPLETION_SIZE],
  ['REDIRECT_COMPLETION', REDIRECT_COMPLETION, COMPLETION_SIZE],
  ['REDIRECT_RECORD', REDIRECT_RECORD, REDIRECT_RECORD_SIZE],
  ['KEYED_DESCRIPTOR', KEYED_DESCRIPTOR, KEYED_DESCRIPTOR_SIZE],
  ['CONNECT_BODY', CONNECT_BODY, CONNECT_BODY_SIZE],
  ['ADMIN_COMMAND (prefix)', adminCommand.ADMIN_COMMAND, 2],
  ['ADMIN_STATUS', adminCommand.ADMIN_STATUS, 2],
  ['NEEDED_RESULT', adminCommand.NEEDED_RESULT, adminCommand.NEEDED_RESULT_SIZE],
  ['COMMAND_LIST (header)', admin.COMMAND_LIST, admin.COMMAND_LIST_HEADER_SIZE],
  ['COMMAND_LIST_ENTRY', admin.COMMAND_LIST_ENTRY, admin.COMMAND_LIST_ENTRY_SIZE],
  ['ERROR_LOG_REQUEST', admin.ERROR_LOG_REQUEST, admin.ERROR_LOG_REQUEST_SIZE],
  ['ERROR_LOG (header)', admin.ERROR_LOG, admin.ERROR_LOG_HEADER_SIZE],
  ['ERROR_LOG_ENTRY', admin.ERROR_LOG_ENTRY, admin.ERROR_LOG_ENTRY_SIZE],
  ['HEALTH_TEST_REQUEST', admin.HEALTH_TEST_REQUEST, admin.HEALTH_TEST_REQUEST_SIZE],
  ['HEALTH_TEST_RESULT', admin.HEALTH_TEST_RESULT, admin.HEALTH_TEST_RESULT_SIZE],
  ['QUEUE_LIST (header)', admin.QUEUE_LIST, admin.QUEUE_LIST_HEADER_SIZE],
  ['QUEUE_ENTRY', admin.QUEUE_ENTRY, admin.QUEUE_ENTRY_SIZE],
  ['FORMAT_LIST (header)', admin.FORMAT_LIST, admin.FORMAT_LIST_HEADER_SIZE],
  ['FORMAT_LIST_ENTRY', admin.FORMAT_LIST_ENTRY, admin.FORMAT_LIST_ENTRY_SIZE],
  ['FORMAT_REQUEST', admin.FORMAT_REQUEST, admin.FORMAT_REQUEST_SIZE],
  ['NBD SERVER_GREETING', nbd.SERVER_GREETING, nbd.SERVER_GREETING_SIZE],
  ['NBD CLIENT_FLAGS', nbd.CLIENT_FLAGS, nbd.CLIENT_FLAGS_SIZE],
  ['NBD OPTION_HEADER', nbd.OPTION_HEADER, nbd.OPTION_HEADER_SIZE],
  ['NBD OPTION_REPLY (header)', nbd.OPTION_REPLY, nbd.OPTION_REPLY_SIZE],
  ['NBD INFO (prefix)', nbd.INFO, 2],
  ['NBD INFO_EXPORT', nbd.INFO_EXPORT, nbd.INFO_EXPORT_SIZE],
  ['NBD INFO_BLOCK_SIZE', nbd.INFO_BLOCK_SIZE, nbd.INFO_BLOCK_SIZE_SIZE],
  ['NBD EXPORT_NAME_REPLY', nbd.EXPORT_NAME_REPLY, 10 + nbd.EXPORT_NAME_ZEROES],
  ['NBD REQUEST_HEADER', nbd.REQUEST_HEADER, nbd.REQUEST_HEADER_SIZE],
  ['NBD SIMPLE_REPLY', nbd.SIMPLE_REPLY, nbd.SIMPLE_REPLY_SIZE],
  ['NBD STRUCTURED_REPLY', nbd.STRUCTURED_REPLY, nbd.STRUCTURED_REPLY_SIZE],
  ['NBD OFFSET_DATA_CHUNK', nbd.OFFSET_DATA_CHUNK, nbd.OFFSET_DATA_CHUNK_SIZE],
  ['NBD OFFSET_HOLE_CHUNK', nbd.OFFSET_HOLE_CHUNK, 12],
  ['NBD ERROR_CHUNK', nbd.ERROR_CHUNK, nbd.ERROR_CHUNK_SIZE],
  ['NBD SERVER_REPLY_DATA (prefix)', nbd.SERVER_REPLY_DATA, 4],
  ['NBD INFO_REQUEST (prefix)', nbd.INFO_REQUEST, 4],
  ['NBD INFO_REQUEST_LIST (prefix)', nbd.INFO_REQUEST_LIST, 2],
  ['NBD INFO_REQUEST_ENTRY', nbd.INFO_REQUEST_ENTRY, 2],
  ['virtio-blk REQUEST_HEADER', blk.REQUEST_HEADER, blk.REQUEST_HEADER_SIZE],
  ['virtio-blk SEGMENT', blk.SEGMENT, blk.SEGMENT_SIZE],
];

const WIDTH = { u8: 1, u16: 2, u32: 4, u64: 8 } as const;

describe('every record has one field table that tiles it', () => {
  it.each(RECORDS)('%s: no overlap, no gap, the record length', (_name, table, size) => {
    const fields = Object.values(table) as Field[];
    expect(fields.length).toBeGreaterThan(0);
    const owner: (string | undefined)[] = new Array(size).fill(undefined);
    for (const [name, f] of Object.entries(table)) {
      if (f.kind !== 'bytes') expect(f.width, name).toBe(WIDTH[f.kind]);
      expect(f.offset + f.width, `${name} ends past the record`).toBeLessThanOrEqual(size);
      for (let i = f.offset; i < f.offset + f.width; i++) {
        expect(owner[i], `byte ${i} is in both ${owner[i]} and ${name}`).toBeUndefined();
        owner[i] = name;
      }
    }
    expect(owner.findIndex((o) => o === undefined), 'a byte no field covers').toBe(-1);
    expect(tableSize(table)).toBe(size);
    expect(Object.isFrozen(table)).toBe(true);
  });

  it('every command and completion table starts with the shared header', () => {
    const wire = RECORDS.filter(([name]) => /_(COMMAND|COMPLETION)$/.test(name));
    expect(wire.length).toBe(21);
    for (const [name, table] of wire) {
      const head = name.endsWith('_COMMAND') ? COMMAND_HEADER : COMPLETION_HEADER;
      for (const [k, f] of Object.entries(head)) expect(table[k], `${name}.${k}`).toBe(f);
    }
  });
});

/** 16 bytes holding `value` little-endian at `at` of `width` bytes, the rest zero. */
function leBytes(at: number, width: number, value: bigint): Buffer {
  const b = Buffer.alloc(16);
  for (let i = 0; i < width; i++) b[at + i] = Number((value >> BigInt(8 * i)) & 0xffn);
  return b;
}

describe('commands: encode → decode at every field’s min and max', () => {
  // One command per struct, each numeric field named as in its table.
  const cases: ReadonlyArray<readonly [number, FieldTable]> = [
    [Opcode.Connect, cmd.CONNECT_COMMAND],
    [Opcode.GetFeature, cmd.GET_FEATURE_COMMAND],
    [Opcode.GetDeviceFeature, cmd.GET_FEATURE_COMMAND],
    [Opcode.SetFeature, cmd.SET_FEATURE_COMMAND],
    [Opcode.SetDriverFeature, cmd.SET_FEATURE_COMMAND],
    [Opcode.Vq, cmd.VQ_COMMAND],
    [Opcode.SetStatus, cmd.SET_STATUS_COMMAND],
    [Opcode.GetVqSize, cmd.GET_VQ_SIZE_COMMAND],
    [Opcode.GetConfig, cmd.GET_CONFIG_COMMAND],
    [Opcode.SetConfig, cmd.SET_CONFIG_COMMAND],
    [Opcode.Disconnect, cmd.BARE_COMMAND],
    [VOF_OP_GET_INLINE_DATA_SIZE, cmd.BARE_COMMAND],
  ];
  const numeric = (t: FieldTable) => Object.entries(t).filter(([k, f]) => f.kind !== 'bytes' && k !== 'reserved' && k !== 'opcode');
  const value = (f: Field, max: boolean) => (f.kind === 'u64' ? (max ? MAX.u64 : 0n) : max ? MAX[f.kind as 'u8'] : 0);

  it.each(cases)('opcode 0x%s', (opcode, table) => {
    for (const max of [false, true]) {
      const c: Record<string, unknown> = { opcode };
      for (const [k, f] of numeric(table)) c[k] = value(f, max);
      const bytes = encodeCommand(c);
      expect(cmd.decodeCommand(bytes)).toEqual(c);
      // Each field alone at its max lands on exactly its bytes (the rest zero but the opcode).
      for (const [k, f] of numeric(table)) {
        const one: Record<string, unknown> = { opcode };
        for (const [k2, f2] of numeric(table)) one[k2] = k2 === k ? value(f2, true) : value(f2, false);
        const expected = leBytes(f.offset, f.width, f.kind === 'u64' ? MAX.u64 : BigInt(MAX[f.kind as 'u8']));
        expected.writeUInt16LE(opcode, 0);
        expect(encodeCommand(one), `${k}`).toEqual(expected);
      }
    }
  });

  function encodeCommand(c: Record<string, unknown>): Buffer {
    return cmd.encodeCommand(c as unknown as cmd.Command);
  }

  it('auth command: the 12-byte data field', () => {
    for (const fill of [0x00, 0xff]) {
      const data = Buffer.alloc(12, fill);
      const b = cmd.encodeCommand({ opcode: VOF_OP_AUTH_NEGOTIATE, commandId: fill * 0x101, data });
      expect(cmd.decodeCommand(b)).toEqual({ opcode: VOF_OP_AUTH_NEGOTIATE, commandId: fill * 0x101, data });
    }
  });

  it('bytes from the seed’s structs, written by hand', () => {
    // struct virtio_of_command_connect: opcode 0, command_id 0x1234, device_instance_id 0xffff,
    // vq_index 2, length 1024, queue_size 128, reserved[2].
    expect(cmd.encodeCommand({ opcode: Opcode.Connect, commandId: 0x1234, deviceInstanceId: 0xffff, vqIndex: 2, length: 1024, queueSize: 128 })).toEqual(
      hex('0000 3412 ffff 0200 00040000 8000 0000'),
    );
    // struct virtio_of_command_vq: opcode 0x0fff, command_id 7, reserved[4], out_length, in_length.
    expect(cmd.encodeCommand({ opcode: Opcode.Vq, commandId: 7, outLength: 0x11223344, inLength: 0x55667788 })).toEqual(hex('ff0f 0700 00000000 44332211 88776655'));
    // struct virtio_of_command_set_config: offset 0x0102, bytes 8, reserved, config.
    expect(cmd.encodeCommand({ opcode: Opcode.SetConfig, commandId: 1, offset: 0x0102, bytes: 8, config: 0x0807060504030201n })).toEqual(
      hex('0d10 0100 0201 08 00 0102030405060708'),
    );
  });
});

describe('completions: encode → decode at every field’s min and max', () => {
  const m = (max: boolean) => (max ? 0xffff : 0);
  it.each([false, true])('max %s', (max) => {
    const s = m(max);
    const id = m(max);
    const u32 = max ? MAX.u32 : 0;
    const u64 = max ? MAX.u64 : 0n;
    const u8 = max ? MAX.u8 : 0;
    expect(cpl.decodeCompletion(cpl.encodeBareCompletion(s, id), Opcode.Disconnect)).toEqual({ kind: 'bare', status: s, commandId: id });
    expect(cpl.decodeCompletion(cpl.encodeConnectCompletion(s, id, m(max)), Opcode.Connect)).toEqual({ kind: 'connect', status: s, commandId: id, deviceInstanceId: m(max) });
    expect(cpl.decodeCompletion(cpl.encodeFeatureCompletion(s, id, u64), Opcode.GetFeature)).toEqual({ kind: 'feature', status: s, commandId: id, feature: u64 });
    expect(cpl.decodeCompletion(cpl.encodeKeyedNumDescsCompletion(s, id, u8), Opcode.GetKeyedNumDescs)).toEqual({ kind: 'keyedNumDescs', status: s, commandId: id, descs: u8 });
    expect(cpl.decodeCompletion(cpl.encodeU32Completion(s, id, u32), Opcode.GetVendorId)).toEqual({ kind: 'u32', status: s, commandId: id, value: u32 });
    expect(cpl.decodeCompletion(cpl.encodeVqCompletion(s, id, u32, Buffer.alloc(16, 0xaa)), Opcode.Vq)).toEqual({ kind: 'vq', status: s, commandId: id, length: u32 });
    expect(cpl.decodeCompletion(cpl.encodeVqSizeCompletion(s, id, m(max)), Opcode.GetVqSize)).toEqual({ kind: 'vqSize', status: s, commandId: id, size: m(max) });
    expect(cpl.decodeCompletion(cpl.encodeGetConfigCompletion(s, id, u32, u64), Opcode.GetConfig)).toEqual({ kind: 'config', status: s, commandId: id, generation: u32, config: u64 });
    expect(cpl.decodeConfigChangeGeneration(cpl.encodeConfigChangeCompletion(u32))).toBe(u32);
    const data = Buffer.alloc(12, u8);
    expect(cpl.decodeCompletion(encodeAuthCompletion(s, id, data), VOF_OP_AUTH_NEGOTIATE)).toEqual({ kind: 'auth', status: s, commandId: id, data });
  });

  it('bytes from the seed’s structs, written by hand', () => {
    // struct virtio_of_completion_get_config: status 0, command_id 5, generation 0x0a0b0c0d, config.
    expect(cpl.encodeGetConfigCompletion(0, 5, 0x0a0b0c0d, 0x1122334455667788n)).toEqual(hex('0000 0500 0d0c0b0a 8877665544332211'));
    // struct virtio_of_completion_vq: status 0x20f1 (EINVQBUF), command_id 0xff, length 0x200.
    expect(cpl.encodeVqCompletion(0x20f1, 0xff, 0x200)).toEqual(hex('f120 ff00 00020000 0000000000000000'));
    // struct vof_completion_redirect: EREDIRECT, command_id 9, device_instance_id 0xffff, record_length 520.
    expect(encodeRedirectCompletion(9)).toEqual(hex('f010 0900 ffff 0802 0000000000000000'));
  });
});

describe('the other Virtio-oF records', () => {
  it('keyed descriptor: encode → decode, and the data path’s accessors, at min and max', () => {
    for (const [addr, length, key] of [[0n, 0, 0], [MAX.u64, MAX.u32, MAX.u32]] as const) {
      const b = Buffer.alloc(32);
      encodeKeyedDescriptor({ addr, length, key }, b, 16);
      expect(decodeKeyedDescriptor(b, 16)).toEqual({ addr, length, key });
      expect(BigInt(descriptorAddrHigh(b, 16)) * 2n ** 32n + BigInt(descriptorAddrLow(b, 16))).toBe(addr);
      expect([descriptorLength(b, 16), descriptorKey(b, 16)]).toEqual([length, key]);
    }
    // struct virtio_of_keyed_desc { le64 addr; le32 length; le32 key; }
    const b = Buffer.alloc(16);
    encodeKeyedDescriptor({ addr: 0x0102030405060708n, length: 0x1000, key: 0xdeadbeef }, b);
    expect(b).toEqual(hex('0807060504030201 00100000 efbeadde'));
  });

  it('redirect record at the port’s min and max; connect flags at byte 512', () => {
    for (const port of [1, 65535]) {
      const r = { scheme: 'rdma' as const, host: 'h', port, tvqn: 't' };
      const b = encodeRedirectRecord(r);
      expect(decodeRedirectRecord(b)).toEqual(r);
      expect(b.subarray(0, 8)).toEqual(Buffer.from([2, 0, port & 0xff, port >> 8, 0, 0, 0, 0]));
      expect(b[8]).toBe(0x68);
      expect(b[8 + 256]).toBe(0x74);
    }
    const body = Buffer.alloc(CONNECT_BODY_SIZE);
    for (const flags of [0, MAX.u32]) {
      setConnectFlags(body, flags);
      expect(connectFlags(body)).toBe(flags);
      expect(body.readUInt32LE(512)).toBe(flags);
    }
  });
});

describe('admin records: encode → decode at min and max', () => {
  it('status, command, needed', () => {
    for (const v of [0, 0xff]) {
      expect(adminCommand.decodeAdminStatus(adminCommand.encodeAdminStatus(v & 0x0f, v))).toEqual({ statusType: v & 0x0f, status: v });
      expect(adminCommand.decodeAdminCommand(adminCommand.encodeAdminCommand({ cls: v, command: v, data: Buffer.from([1]) }))).toEqual({ cls: v, command: v, data: Buffer.from([1]) });
    }
  });

  it('command list, error log request, error log page, health test, queue list, format list, format request', () => {
    for (const max of [false, true]) {
      const u8 = max ? 0xff : 0;
      const u16 = max ? 0xffff : 0;
      const u32 = max ? MAX.u32 : 0;
      // Fields decoded into a JS number: its largest exact integer.
      const n64 = max ? Number.MAX_SAFE_INTEGER : 0;
      expect(admin.decodeCommandList(admin.encodeCommandList([{ cls: u8, command: u8 }]))).toEqual([{ cls: u8, command: u8 }]);
      expect(admin.decodeErrorLogRequest(admin.encodeErrorLogRequest(u16, u16))).toEqual({ skip: u16, maxEntries: u16 });
      const page = { total: u32, lost: n64, entries: [{ timestampMs: n64, type: u8, vqIndex: u16, instanceId: u16, status: u16, detail: max ? 'd'.repeat(48) : '' }] };
      expect(admin.decodeErrorLogPage(admin.encodeErrorLogPage(page))).toEqual(page);
      expect(admin.decodeHealthTestRequest(admin.encodeHealthTestRequest(u32))).toBe(u32);
      const health = { passed: !max, samples: u32, errors: u32, durationMs: u32, bytesChecked: n64, firstError: max ? MAX.u64 - 1n : 0n };
      expect(admin.decodeHealthTestResult(admin.encodeHealthTestResult(health))).toEqual(health);
      const q = { vqIndex: u16, role: u8, transport: u8, queueSize: u16, inFlight: u16, commands: n64, bytesOut: n64, bytesIn: n64, errors: n64, peer: max ? 'p'.repeat(72) : '' };
      expect(admin.decodeQueueList(admin.encodeQueueList([q]))).toEqual([q]);
      const formats = [{ blockSize: u32, metadataBytes: u8, supported: max }];
      expect(admin.decodeFormatList(admin.encodeFormatList(formats, u8))).toEqual({ formats, current: u8 });
      expect(admin.decodeFormatRequest(admin.encodeFormatRequest(u32, u8))).toEqual({ blockSize: u32, metadataBytes: u8 });
    }
  });

  it('bytes from docs/PROTOCOL.md’s structs, written by hand', () => {
    // struct virtio_admin_health_test_result: result 1; reserved[3]; samples 2; errors 3;
    // duration_ms 4; bytes_checked 5; first_error none (all ones).
    const r = admin.encodeHealthTestResult({ passed: false, samples: 2, errors: 3, durationMs: 4, bytesChecked: 5, firstError: null });
    expect(r).toEqual(hex('01000000 02000000 03000000 04000000 0500000000000000 ffffffffffffffff'));
    // struct virtio_admin_blk_format_list with one entry: count 1, current 0, reserved; 4096, 0, supported.
    expect(admin.encodeFormatList([{ blockSize: 4096, metadataBytes: 0, supported: true }], 0)).toEqual(hex('0100 00 00 00100000 00 01 0000'));
  });
});

describe('NBD records: encode → decode at min and max', () => {
  it('request header, option header, simple reply, info request', () => {
    for (const max of [false, true]) {
      const cookie = Buffer.alloc(8, max ? 0xff : 0);
      const h = { magic: nbd.NBD_REQUEST_MAGIC, flags: max ? 0xffff : 0, type: max ? 0xffff : 0, cookie, offset: max ? MAX.u64 : 0n, length: max ? MAX.u32 : 0 };
      expect(nbd.decodeRequestHeader(nbd.encodeRequestHeader(h))).toEqual(h);
      const o = nbd.decodeOptionHeader(nbd.encodeOptionHeader(max ? MAX.u32 : 0, max ? MAX.u32 : 0));
      expect(o).toEqual({ magic: nbd.NBD_IHAVEOPT, option: max ? MAX.u32 : 0, length: max ? MAX.u32 : 0 });
      expect(nbd.decodeSimpleReply(nbd.encodeSimpleReply(max ? MAX.u32 : 0, cookie))).toEqual({ magic: nbd.NBD_SIMPLE_REPLY_MAGIC, error: max ? MAX.u32 : 0, cookie });
      const infos = max ? [0xffff, 0] : [];
      expect(nbd.decodeInfoRequest(nbd.encodeInfoRequest(max ? 'n'.repeat(4096) : '', infos))).toEqual({ name: max ? 'n'.repeat(4096) : '', infos });
    }
  });

  it('bytes from proto.md, written by hand (big-endian)', () => {
    // C: NBD_REQUEST_MAGIC, flags FUA, type WRITE, cookie, offset 0x1000, length 512.
    const h = nbd.encodeRequestHeader({ flags: 1, type: 1, cookie: hex('0102030405060708'), offset: 0x1000n, length: 512 });
    expect(h).toEqual(hex('25609513 0001 0001 0102030405060708 0000000000001000 00000200'));
    // NBD_INFO_BLOCK_SIZE: type 3, 512, 4096, 32 MiB.
    expect(nbd.encodeInfoBlockSize({ minimum: 512, preferred: 4096, maximum: 32 << 20 })).toEqual(hex('0003 00000200 00001000 02000000'));
    expect(nbd.encodeServerGreeting(3)).toEqual(hex('4e42444d41474943 49484156454f5054 0003'));
  });
});

describe('virtio-blk records', () => {
  it('request header and segment bytes, written by hand from the virtio spec', () => {
    // struct virtio_blk_outhdr { le32 type; le32 reserved; le64 sector; }: OUT (1), sector 0x100.
    expect(blk.encodeRequestHeader(1, 0x100n)).toEqual(hex('01000000 00000000 0001000000000000'));
    // struct virtio_blk_discard_write_zeroes { le64 sector; le32 num_sectors; le32 flags; }
    expect(blk.encodeSegment(MAX.u64, MAX.u32, 1)).toEqual(hex('ffffffffffffffff ffffffff 01000000'));
  });
});
