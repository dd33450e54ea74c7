import { describe, expect, it } from 'vitest';
import {
  COMMAND_ID_CONFIG_CHANGE,
  COMMAND_ID_KEEPALIVE,
  CONNECT_BODY_SIZE,
  Opcode,
  Status,
  VIRTIO_OF_CONTROL_QUEUE_SIZE,
  VIRTIO_OF_F_KEYED_NUM_DESCS,
  decodeAdminCommand,
  decodeAdminStatus,
  decodeCommand,
  decodeCompletion,
  decodeConnectBody,
  decodeKeyedDescriptors,
  encodeAdminStatus,
  encodeBareCompletion,
  encodeCommand,
  encodeConfigChangeCompletion,
  encodeConnectBody,
  encodeConnectCompletion,
  encodeFeatureCompletion,
  encodeGetConfigCompletion,
  encodeKeepaliveCompletion,
  encodeKeyedDescriptor,
  encodeKeyedNumDescsCompletion,
  encodeU32Completion,
  encodeVqCompletion,
  encodeVqSizeCompletion,
  formatStatus,
  validateKeyedDescriptors,
  type Command,
} from '../src/protocol/index.js';

/** Bytes written out by hand from the seed's struct layouts (little-endian, no padding). */
const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

describe('constants from the seed', () => {
  it('opcodes', () => {
    expect(Opcode).toEqual({
      Connect: 0x0000,
      Disconnect: 0x0001,
      Keepalive: 0x0002,
      GetFeature: 0x0004,
      SetFeature: 0x0005,
      GetKeyedNumDescs: 0x0100,
      Vq: 0x0fff,
      GetVendorId: 0x1000,
      GetDeviceId: 0x1001,
      ResetDevice: 0x1003,
      GetStatus: 0x1004,
      SetStatus: 0x1005,
      GetDeviceFeature: 0x1006,
      SetDriverFeature: 0x1009,
      GetVqSize: 0x100a,
      GetConfig: 0x100c,
      SetConfig: 0x100d,
    });
  });
  it('status codes', () => {
    expect(Status).toEqual({
      SUCCESS: 0x0000,
      ENOCMD: 0x0001,
      ECMDQUOT: 0x0002,
      ENOTGT: 0x1001,
      ENODEV: 0x1002,
      EACLREJECTED: 0x1003,
      EBADDEV: 0x1010,
      EBADVQN: 0x1011,
      EQUEUEQUOT: 0x1020,
      EQSIZEQUOT: 0x1021,
      EFEATURE: 0x2000,
      ESTATUS: 0x2010,
      EDEVFEATURE: 0x2020,
      ECONFOFF: 0x2030,
      ECONFBYTES: 0x2031,
      EOUTVQBUF: 0x20f0,
      EINVQBUF: 0x20f1,
    });
    expect(formatStatus(0x1003)).toBe('EACLREJECTED (0x1003)');
  });
  it('reserved ids, queue size, feature bit', () => {
    expect(COMMAND_ID_CONFIG_CHANGE).toBe(0xfffe);
    expect(COMMAND_ID_KEEPALIVE).toBe(0xffff);
    expect(VIRTIO_OF_CONTROL_QUEUE_SIZE).toBe(32);
    expect(VIRTIO_OF_F_KEYED_NUM_DESCS).toBe(0n);
  });
});

const commands: Array<[string, Command, string]> = [
  [
    'connect (control queue)',
    { opcode: Opcode.Connect, commandId: 0x1234, deviceInstanceId: 0xffff, vqIndex: 0, length: 1024, queueSize: 32 },
    '0000 3412 ffff 0000 00040000 2000 0000',
  ],
  [
    'connect (virtqueue 3, no body)',
    { opcode: Opcode.Connect, commandId: 1, deviceInstanceId: 7, vqIndex: 3, length: 0, queueSize: 128 },
    '0000 0100 0700 0300 00000000 8000 0000',
  ],
  ['disconnect', { opcode: Opcode.Disconnect, commandId: 0xabcd }, '0100 cdab 000000000000000000000000'],
  ['keepalive', { opcode: Opcode.Keepalive, commandId: 2 }, '0200 0200 000000000000000000000000'],
  ['get feature', { opcode: Opcode.GetFeature, commandId: 3, featureSelect: 1 }, '0400 0300 01000000 0000000000000000'],
  [
    'set feature',
    { opcode: Opcode.SetFeature, commandId: 4, featureSelect: 0, feature: 0x0102030405060708n },
    '0500 0400 00000000 0807060504030201',
  ],
  ['get keyed num descs', { opcode: Opcode.GetKeyedNumDescs, commandId: 5 }, '0001 0500 000000000000000000000000'],
  [
    'vq',
    { opcode: Opcode.Vq, commandId: 6, outLength: 0x10, inLength: 0x1001 },
    'ff0f 0600 00000000 10000000 01100000',
  ],
  ['get vendor id', { opcode: Opcode.GetVendorId, commandId: 7 }, '0010 0700 000000000000000000000000'],
  ['get device id', { opcode: Opcode.GetDeviceId, commandId: 8 }, '0110 0800 000000000000000000000000'],
  ['reset device', { opcode: Opcode.ResetDevice, commandId: 9 }, '0310 0900 000000000000000000000000'],
  ['get status', { opcode: Opcode.GetStatus, commandId: 10 }, '0410 0a00 000000000000000000000000'],
  ['set status', { opcode: Opcode.SetStatus, commandId: 11, status: 0x0f }, '0510 0b00 0f000000 0000000000000000'],
  [
    'get device feature',
    { opcode: Opcode.GetDeviceFeature, commandId: 12, featureSelect: 1 },
    '0610 0c00 01000000 0000000000000000',
  ],
  [
    'set driver feature',
    { opcode: Opcode.SetDriverFeature, commandId: 13, featureSelect: 0, feature: 1n << 32n },
    '0910 0d00 00000000 0000000001000000',
  ],
  ['get vq size', { opcode: Opcode.GetVqSize, commandId: 14, vqIndex: 2 }, '0a10 0e00 0200 00000000000000000000'],
  ['get config', { opcode: Opcode.GetConfig, commandId: 15, offset: 0x22, bytes: 2 }, '0c10 0f00 2200 02 000000000000000000'],
  [
    'set config',
    { opcode: Opcode.SetConfig, commandId: 16, offset: 0x20, bytes: 1, config: 0x01n },
    '0d10 1000 2000 01 00 0100000000000000',
  ],
];

describe('commands: encode and decode against hand-written bytes', () => {
  for (const [name, cmd, bytes] of commands) {
    it(name, () => {
      const wire = hex(bytes);
      expect(wire.length).toBe(16);
      expect(encodeCommand(cmd).equals(wire)).toBe(true);
      expect(decodeCommand(wire)).toEqual(cmd);
    });
  }
  it('ignores reserved bytes when decoding', () => {
    const wire = hex('0200 0200 ffffffffffffffffffffffff');
    expect(decodeCommand(wire)).toEqual({ opcode: Opcode.Keepalive, commandId: 2 });
  });
  it('reports an unknown opcode without throwing', () => {
    expect(decodeCommand(hex('3412 0100 000000000000000000000000'))).toEqual({ opcode: 0x1234, commandId: 1, unknown: true });
  });
  it('refuses a short command', () => {
    expect(() => decodeCommand(Buffer.alloc(15))).toThrow(RangeError);
  });
});

describe('completions: encode and decode against hand-written bytes', () => {
  it('connect', () => {
    const wire = hex('0000 3412 0500 00000000000000000000');
    expect(encodeConnectCompletion(0, 0x1234, 5).equals(wire)).toBe(true);
    expect(decodeCompletion(wire, Opcode.Connect)).toEqual({ kind: 'connect', status: 0, commandId: 0x1234, deviceInstanceId: 5 });
  });
  it('error status on a bare completion', () => {
    const wire = hex('0310 0100 000000000000000000000000');
    expect(encodeBareCompletion(Status.EACLREJECTED, 1).equals(wire)).toBe(true);
    expect(decodeCompletion(wire, Opcode.Disconnect)).toEqual({ kind: 'bare', status: 0x1003, commandId: 1 });
  });
  it('get feature / get device feature: le64 at offset 8', () => {
    const wire = hex('0000 0200 00000000 0100000001000000');
    expect(encodeFeatureCompletion(0, 2, 0x0000000100000001n).equals(wire)).toBe(true);
    expect(decodeCompletion(wire, Opcode.GetDeviceFeature)).toEqual({ kind: 'feature', status: 0, commandId: 2, feature: 0x100000001n });
  });
  it('get keyed num descs: u8 at offset 4', () => {
    const wire = hex('0000 0300 40 0000000000000000000000');
    expect(encodeKeyedNumDescsCompletion(0, 3, 64).equals(wire)).toBe(true);
    expect(decodeCompletion(wire, Opcode.GetKeyedNumDescs)).toEqual({ kind: 'keyedNumDescs', status: 0, commandId: 3, descs: 64 });
  });
  it('vq: le32 length at offset 4', () => {
    const wire = hex('0000 0400 01020000 0000000000000000');
    expect(encodeVqCompletion(0, 4, 0x201).equals(wire)).toBe(true);
    expect(decodeCompletion(wire, Opcode.Vq)).toEqual({ kind: 'vq', status: 0, commandId: 4, length: 0x201 });
  });
  it('get vendor id / device id / status: le32 at offset 4', () => {
    const wire = hex('0000 0500 f41a0000 0000000000000000');
    expect(encodeU32Completion(0, 5, 0x1af4).equals(wire)).toBe(true);
    expect(decodeCompletion(wire, Opcode.GetVendorId)).toEqual({ kind: 'u32', status: 0, commandId: 5, value: 0x1af4 });
    expect(decodeCompletion(wire, Opcode.GetStatus)).toEqual({ kind: 'u32', status: 0, commandId: 5, value: 0x1af4 });
  });
  it('get vq size: le16 at offset 4', () => {
    const wire = hex('0000 0600 8000 00000000000000000000');
    expect(encodeVqSizeCompletion(0, 6, 128).equals(wire)).toBe(true);
    expect(decodeCompletion(wire, Opcode.GetVqSize)).toEqual({ kind: 'vqSize', status: 0, commandId: 6, size: 128 });
  });
  it('get config: generation le32 at 4, config le64 at 8', () => {
    const wire = hex('0000 0700 09000000 0080000000000000');
    expect(encodeGetConfigCompletion(0, 7, 9, 0x8000n).equals(wire)).toBe(true);
    expect(decodeCompletion(wire, Opcode.GetConfig)).toEqual({ kind: 'config', status: 0, commandId: 7, generation: 9, config: 0x8000n });
  });
  it('config change and keepalive events', () => {
    expect(encodeConfigChangeCompletion(3).equals(hex('0000 feff 03000000 0000000000000000'))).toBe(true);
    expect(encodeKeepaliveCompletion().equals(hex('0000 ffff 000000000000000000000000'))).toBe(true);
  });
});

describe('connect body', () => {
  it('NUL-pads ivqn[256], tvqn[256], reserved[512]', () => {
    const body = encodeConnectBody({ ivqn: 'ini', tvqn: 'tgt' });
    expect(body.length).toBe(CONNECT_BODY_SIZE);
    const want = Buffer.alloc(1024);
    want.write('ini', 0, 'ascii');
    want.write('tgt', 256, 'ascii');
    expect(body.equals(want)).toBe(true);
    expect(decodeConnectBody(want)).toEqual({ ivqn: 'ini', tvqn: 'tgt' });
  });
  it('accepts 255-byte UTF-8 VQNs and refuses 256', () => {
    const long = 'é'.repeat(127) + 'x'; // 255 bytes
    expect(decodeConnectBody(encodeConnectBody({ ivqn: long, tvqn: 't' }))).toEqual({ ivqn: long, tvqn: 't' });
    expect(() => encodeConnectBody({ ivqn: 'x'.repeat(256), tvqn: 't' })).toThrow(/at most 255/);
    expect(() => encodeConnectBody({ ivqn: 'i', tvqn: '' })).toThrow(/empty/);
    const noNul = Buffer.alloc(1024, 0x41);
    expect(decodeConnectBody(noNul)).toBeNull();
  });
});

describe('keyed descriptor', () => {
  it('le64 addr, le32 length, le32 key', () => {
    const wire = hex('0807060504030201 00100000 efbeadde');
    const out = Buffer.alloc(16);
    encodeKeyedDescriptor({ addr: 0x0102030405060708n, length: 0x1000, key: 0xdeadbeef }, out);
    expect(out.equals(wire)).toBe(true);
    const pdu = Buffer.concat([Buffer.alloc(16), wire, wire]);
    expect(decodeKeyedDescriptors(pdu, 16)).toEqual([
      { addr: 0x0102030405060708n, length: 0x1000, key: 0xdeadbeef },
      { addr: 0x0102030405060708n, length: 0x1000, key: 0xdeadbeef },
    ]);
  });
  it('validates count, sum and the read/write boundary', () => {
    const d = (length: number) => ({ addr: 0n, length, key: 1 });
    expect(validateKeyedDescriptors([d(16), d(512), d(1)], 16, 513, 4)).toBe('none');
    expect(validateKeyedDescriptors([d(16), d(512)], 16, 513, 4)).toBe('lengths do not add up to out_length + in_length');
    expect(validateKeyedDescriptors([d(20), d(509)], 16, 513, 4)).toBe('descriptor straddles the readable/writable boundary');
    expect(validateKeyedDescriptors([d(16), d(512), d(1)], 16, 513, 2)).toBe('too many descriptors');
    // None at all is its own problem (it was reported as "too many descriptors").
    expect(validateKeyedDescriptors([], 0, 0, 2)).toBe('no descriptors');
  });
});

describe('admin command format (seed 000)', () => {
  it('class, command, data; status type in the low four bits', () => {
    expect(decodeAdminCommand(hex('40 02 aabb'))).toEqual({ cls: 0x40, command: 2, data: hex('aabb') });
    expect(decodeAdminCommand(hex('40'))).toBeNull();
    expect(encodeAdminStatus(3, 4).equals(hex('03 04'))).toBe(true);
    expect(decodeAdminStatus(hex('ffff f3 04'))).toEqual({ statusType: 3, status: 4 });
  });
});

describe('vof in-band authentication (docs/PROTOCOL.md "In-band authentication")', async () => {
  const auth = await import('../src/protocol/auth.js');
  // The worked example of PROTOCOL.md; the key, responses and secret were also computed with
  // Python's hmac/hashlib/zlib, independently of Node's crypto.
  const key = Buffer.from([...Array(32).keys()]);
  const t = {
    ivqn: 'host-a',
    tvqn: 'disk0',
    instanceId: 0x1234,
    nonceI: hex('0102030405060708090a0b0c'),
    nonceT: hex('a1a2a3a4a5a6a7a8a9aaabac'),
  };

  it('constants', () => {
    expect(auth.VOF_F_AUTH).toBe(58n);
    expect(auth.VOF_OP_AUTH_NEGOTIATE).toBe(0x00f0);
    expect(auth.VOF_OP_AUTH_REPLY).toBe(0x00f1);
    expect(auth.AUTH_RECORD_FIELDS.map((f) => [f.offset, f.size])).toEqual([[0, 2], [2, 2], [4, 12]]);
  });

  it('commands and completions, byte for byte', () => {
    const neg = encodeCommand({ opcode: auth.VOF_OP_AUTH_NEGOTIATE, commandId: 3, data: t.nonceI });
    expect(neg).toEqual(hex('f000 0300 0102030405060708090a0b0c'));
    expect(decodeCommand(neg)).toEqual({ opcode: 0x00f0, commandId: 3, data: t.nonceI });
    const negC = auth.encodeAuthCompletion(Status.SUCCESS, 3, t.nonceT);
    expect(negC).toEqual(hex('0000 0300 a1a2a3a4a5a6a7a8a9aaabac'));
    expect(decodeCompletion(negC, auth.VOF_OP_AUTH_NEGOTIATE)).toEqual({ kind: 'auth', status: 0, commandId: 3, data: t.nonceT });
    const rep = encodeCommand({ opcode: auth.VOF_OP_AUTH_REPLY, commandId: 4, data: auth.initiatorResponse(key, t) });
    expect(rep).toEqual(hex('f100 0400 d45770f8a1a9a6e04cbf8838'));
    expect(auth.encodeAuthCompletion(Status.SUCCESS, 4, auth.targetResponse(key, t))).toEqual(hex('0000 0400 7068a4bce56444c4ca38fe7f'));
    expect(auth.encodeAuthCompletion(Status.EACLREJECTED, 4)).toEqual(hex('0310 0400 000000000000000000000000'));
  });

  it('key derivation: HKDF-SHA256(secret, nonce_i || nonce_t, info), HMAC labels', () => {
    expect(auth.authInfo(t)).toEqual(hex('766f662d617574682d7631 00 686f73742d61 00 6469736b30 00 3412'));
    expect(auth.authSessionKey(key, t)).toEqual(hex('41dd16478da8acaf559fdfa4e2367d6f6aa44596e95b4d40422aac7c4141215d'));
    // Each side's response is bound to everything in the transcript.
    for (const other of [{ ...t, ivqn: 'host-b' }, { ...t, tvqn: 'disk1' }, { ...t, instanceId: 0x1235 }, { ...t, nonceT: hex('a1a2a3a4a5a6a7a8a9aaabad') }]) {
      expect(auth.initiatorResponse(key, other)).not.toEqual(auth.initiatorResponse(key, t));
    }
    expect(auth.initiatorResponse(key, t)).not.toEqual(auth.targetResponse(key, t));
  });

  it('secret representation: DHHC-1:00:<base64 of key and CRC-32 LE>:', () => {
    const text = 'DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:';
    expect(auth.formatSecret(key)).toBe(text);
    expect(auth.parseSecret(`${text}\n`)).toEqual(key);
    const bad = text.replace('AAEC', 'AAED');
    expect(() => auth.parseSecret(bad)).toThrow(/CRC-32/);
    expect(() => auth.parseSecret(bad)).not.toThrow(/AAED/); // never repeats the secret
    expect(() => auth.parseSecret(text.replace(':00:', ':01:'))).toThrow(/not supported/);
    expect(() => auth.parseSecret('hunter2')).toThrow(/DHHC-1/);
    for (const n of [32, 48, 64]) expect(auth.parseSecret(auth.generateSecret(n))).toHaveLength(n);
  });
});
