import { describe, expect, it } from 'vitest';
import {
  DEFAULT_INLINE_DATA_SIZE,
  MAX_INLINE_DATA_SIZE,
  Opcode,
  Status,
  VIRTIO_OF_F_KEYED_NUM_DESCS,
  VOF_F_INLINE_DATA,
  VOF_OP_GET_INLINE_DATA_SIZE,
  carriesInline,
  decodeCommand,
  decodeCompletion,
  decodeInlineRequest,
  encodeCommand,
  encodeU32Completion,
  inlineRequestMessageSize,
  inlineRequestParts,
  inlineSizeProblem,
} from '../src/protocol/index.js';

/** Bytes written out by hand from docs/PROTOCOL.md "Inline data on keyed queues". */
const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const vq = (commandId: number, outLength: number, inLength: number) => encodeCommand({ opcode: Opcode.Vq, commandId, outLength, inLength });

describe('inline data: constants and the Get Inline Data Size command', () => {
  it('feature bit 56, far from the seed bit 0; opcode 0x01f0 outside the seed table', () => {
    expect(VOF_F_INLINE_DATA).toBe(56n);
    expect(VOF_F_INLINE_DATA).not.toBe(VIRTIO_OF_F_KEYED_NUM_DESCS);
    expect(VOF_OP_GET_INLINE_DATA_SIZE).toBe(0x01f0);
    expect(Object.values(Opcode)).not.toContain(VOF_OP_GET_INLINE_DATA_SIZE);
    expect([DEFAULT_INLINE_DATA_SIZE, MAX_INLINE_DATA_SIZE]).toEqual([4112, 65536]);
  });

  it('command and completion bytes', () => {
    const cmd = encodeCommand({ opcode: VOF_OP_GET_INLINE_DATA_SIZE, commandId: 9 });
    expect(cmd).toEqual(hex('f001 0900 00000000 00000000 00000000'));
    expect(decodeCommand(cmd)).toEqual({ opcode: VOF_OP_GET_INLINE_DATA_SIZE, commandId: 9 });
    const c = encodeU32Completion(Status.SUCCESS, 9, 8192);
    expect(c).toEqual(hex('0000 0900 00200000 0000000000000000'));
    expect(decodeCompletion(c, VOF_OP_GET_INLINE_DATA_SIZE)).toEqual({ kind: 'u32', status: 0, commandId: 9, value: 8192 });
  });

  it('the size an initiator may use: 1..65536', () => {
    expect(inlineSizeProblem(1)).toBeNull();
    expect(inlineSizeProblem(65536)).toBeNull();
    expect(inlineSizeProblem(0)).toMatch(/outside 1\.\.65536/);
    expect(inlineSizeProblem(65537)).toMatch(/outside/);
    expect(inlineSizeProblem(0xffffffff)).toMatch(/outside/);
  });
});

describe('inline data: which requests travel inline', () => {
  it('out_length <= S when negotiated (S > 0); never when S is 0', () => {
    const S = 4112;
    expect([carriesInline(S, 0), carriesInline(S, 16), carriesInline(S, S - 1), carriesInline(S, S), carriesInline(S, S + 1)]).toEqual([true, true, true, true, false]);
    expect([carriesInline(0, 0), carriesInline(0, 16)]).toEqual([false, false]);
  });

  it('receive buffers hold the command, the most descriptors and S bytes', () => {
    expect(inlineRequestMessageSize(32, 8192)).toBe(16 + 32 * 16 + 8192);
  });
});

describe('inline data: request layout byte for byte', () => {
  const status = { addr: 0x1122334455667788n, length: 1, key: 0xdeadbeef };

  it('command, then the writable part\'s descriptors, then the readable bytes', () => {
    const wire = Buffer.concat(inlineRequestParts(vq(7, 5, 1), [status], [Buffer.from('hi'), Buffer.alloc(0), Buffer.from('!!!')]));
    expect(wire).toEqual(
      hex(`
        ff0f 0700 00000000 05000000 01000000
        8877665544332211 01000000 efbeadde
        6869212121`),
    );
    const r = decodeInlineRequest(wire, 32);
    expect(r.problem).toBeNull();
    expect(r.writable).toEqual([status]);
    expect(r.readable.toString()).toBe('hi!!!');
  });

  it('the example of docs/PROTOCOL.md: a 4 KiB virtio-blk write at sector 16', () => {
    const header = hex('01000000 00000000 1000000000000000');
    const data = Buffer.alloc(4096, 0x42);
    const wire = Buffer.concat(inlineRequestParts(vq(7, 4112, 1), [{ addr: 0x7f0000001000n, length: 1, key: 0x1234 }], [header, data]));
    expect(wire.subarray(0, 48)).toEqual(hex('ff0f 0700 00000000 10100000 01000000  00100000007f0000 01000000 34120000  01000000 00000000 1000000000000000'));
    expect(wire.length).toBe(16 + 16 + 4112);
    expect(wire.subarray(48).equals(data)).toBe(true);
  });

  it('no writable part: no descriptor at all; several writable descriptors in order', () => {
    const none = Buffer.concat(inlineRequestParts(vq(1, 3, 0), [], [Buffer.from('abc')]));
    expect(none).toEqual(hex('ff0f 0100 00000000 03000000 00000000 616263'));
    expect(decodeInlineRequest(none, 32)).toMatchObject({ writable: [], problem: null });
    const two = [
      { addr: 0x1000n, length: 512, key: 1 },
      { addr: 0x2000n, length: 1, key: 2 },
    ];
    const r = decodeInlineRequest(Buffer.concat(inlineRequestParts(vq(2, 16, 513), two, [Buffer.alloc(16, 0xaa)])), 32);
    expect([r.problem, r.writable, r.readable.equals(Buffer.alloc(16, 0xaa))]).toEqual([null, two, true]);
  });

  it('out_length 0: descriptors only, nothing after them', () => {
    const r = decodeInlineRequest(Buffer.concat(inlineRequestParts(vq(3, 0, 1), [status], [])), 32);
    expect([r.problem, r.readable.length, r.writable.length]).toEqual([null, 0, 1]);
  });
});

describe('inline data: malformed requests (the target answers EOUTVQBUF)', () => {
  const d = (length: number) => ({ addr: 0x5000n, length, key: 7 });
  const msg = (cmd: Buffer, descs: number[], tail: Buffer) => Buffer.concat(inlineRequestParts(cmd, descs.map(d), [tail]));

  it('fewer bytes than out_length after the command', () => {
    expect(decodeInlineRequest(Buffer.concat([vq(1, 100, 0), Buffer.alloc(99)]), 32).problem).toMatch(/fewer than out_length 100/);
  });
  it('bytes between command and data that are not whole descriptors', () => {
    expect(decodeInlineRequest(Buffer.concat([vq(1, 4, 1), Buffer.alloc(15 + 4)]), 32).problem).toMatch(/not whole keyed descriptors/);
  });
  it('more descriptors than Get Keyed Number Descriptors allows', () => {
    const lengths = Array.from({ length: 33 }, () => 1);
    expect(decodeInlineRequest(msg(vq(1, 2, 33), lengths, Buffer.alloc(2)), 32).problem).toMatch(/too many descriptors \(33, limit 32\)/);
    expect(decodeInlineRequest(msg(vq(1, 2, 32), lengths.slice(1), Buffer.alloc(2)), 32).problem).toBeNull();
  });
  it('descriptor lengths that do not add up to in_length', () => {
    expect(decodeInlineRequest(msg(vq(1, 2, 2), [1], Buffer.alloc(2)), 32).problem).toMatch(/add up to 1, not in_length 2/);
    // A seed-layout request (readable part described by a descriptor) read as inline: also refused.
    expect(decodeInlineRequest(msg(vq(1, 16, 1), [16, 1], Buffer.alloc(0)), 32).problem).not.toBeNull();
  });
  it('a malformed request hands out no bytes', () => {
    const r = decodeInlineRequest(Buffer.concat([vq(1, 100, 0), Buffer.alloc(50)]), 32);
    expect([r.readable.length, r.writable.length]).toEqual([0, 0]);
  });
});
