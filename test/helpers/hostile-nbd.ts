import net from 'node:net';
import { NBD_STRUCTURED_REPLY_MAGIC } from '../../src/nbd/nbd-client.js';
import {
  NBD_IHAVEOPT,
  NBD_MAGIC,
  NbdCommand,
  NbdOption,
  NbdReply,
  TransmissionFlag,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeOptionReply,
} from '../../src/nbd/nbd-protocol.js';

/**
 * A server that completes the handshake honestly, then answers the first request with what
 * `reply` makes of it: the client must disconnect and fail the request, never write outside it.
 */
export async function hostileServer(reply: (header: Buffer) => Buffer): Promise<{ port: number; close: () => void }> {
  // allowHalfOpen: the server does not close when the client ends its side (as a server ignoring NBD_CMD_DISC would).
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    s.on('error', () => {});
    s.write(Buffer.concat([u64(NBD_MAGIC), u64(NBD_IHAVEOPT), u16(1 | 2)]));
    let buf = Buffer.alloc(0);
    let phase: 'flags' | 'options' | 'transmission' = 'flags';
    s.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (phase === 'flags') {
          if (buf.length < 4) return;
          buf = buf.subarray(4);
          phase = 'options';
        } else if (phase === 'options') {
          if (buf.length < 16) return;
          const opt = buf.readUInt32BE(8);
          const len = buf.readUInt32BE(12);
          if (buf.length < 16 + len) return;
          buf = buf.subarray(16 + len);
          if (opt === NbdOption.STRUCTURED_REPLY) s.write(encodeOptionReply(opt, NbdReply.ACK));
          else if (opt === NbdOption.GO) {
            s.write(encodeOptionReply(opt, NbdReply.INFO, encodeInfoExport(1024n * 1024n, TransmissionFlag.HAS_FLAGS | TransmissionFlag.SEND_FLUSH)));
            s.write(encodeOptionReply(opt, NbdReply.INFO, encodeInfoBlockSize({ minimum: 1, preferred: 4096, maximum: 1 << 20 })));
            s.write(encodeOptionReply(opt, NbdReply.ACK));
            phase = 'transmission';
          } else s.write(encodeOptionReply(opt, NbdReply.ERR_UNSUP));
        } else {
          if (buf.length < 28) return;
          const payload = buf.readUInt16BE(6) === NbdCommand.WRITE ? buf.readUInt32BE(24) : 0;
          if (buf.length < 28 + payload) return;
          s.write(reply(buf.subarray(0, 28)));
          buf = buf.subarray(28 + payload);
        }
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { port: (server.address() as net.AddressInfo).port, close: () => server.close() };
}

export const u16 = (v: number) => Buffer.from([v >> 8, v & 0xff]);
export const u32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b;
};
export const u64 = (v: bigint) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(v);
  return b;
};
export const cookie = (h: Buffer) => h.subarray(8, 16);
export const chunk = (h: Buffer, flags: number, type: number, payload: Buffer) => Buffer.concat([u32(NBD_STRUCTURED_REPLY_MAGIC), u16(flags), u16(type), cookie(h), u32(payload.length), payload]);

