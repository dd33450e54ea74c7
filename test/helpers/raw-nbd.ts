import { createConnection, type Socket } from 'node:net';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import {
  NBD_IHAVEOPT,
  NBD_MAGIC,
  NBD_OPT_REPLY_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NbdOption,
  NbdReply,
  encodeInfoRequest,
  encodeOptionHeader,
  encodeRequestHeader,
} from '../../src/nbd/nbd-protocol.js';

export interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

export interface Reply {
  error: number;
  cookie: bigint;
  data: Buffer | null;
}

/**
 * A hand-driven NBD client for tests: it sends exactly the bytes a test asks for (including
 * malformed ones) and decodes what the server answers.
 */
export class RawNbdClient {
  private buf = Buffer.alloc(0);
  private waiters: Array<() => void> = [];
  closed = false;
  handshakeFlags = 0;
  /** READ lengths by cookie, to know how many data bytes follow a successful simple reply. */
  private readLengths = new Map<bigint, number>();
  private nextCookie = 1n;

  /** The plain socket, then the TLS socket after startTls(). */
  socket: Socket;

  private constructor(socket: Socket) {
    this.socket = socket;
    this.attach(socket);
  }

  private readonly onData = (d: Buffer): void => {
    this.buf = Buffer.concat([this.buf, d]);
    this.wake();
  };

  private attach(socket: Socket): void {
    socket.on('data', this.onData);
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    socket.on('error', (err) => (this.error = err));
  }

  /** The last socket error (a TLS alert, say). */
  error: Error | null = null;

  /**
   * NBD_OPT_STARTTLS; on NBD_REP_ACK, the TLS handshake on the same socket (rejects if it
   * fails). Returns the option reply.
   */
  async startTls(options: ConnectionOptions): Promise<OptionReply> {
    this.sendOption(NbdOption.STARTTLS);
    const r = await this.readOptionReply();
    if (r.type !== NbdReply.ACK) return r;
    if (this.buf.length > 0) throw new Error('bytes after the STARTTLS reply');
    this.socket.off('data', this.onData);
    const t: TLSSocket = tlsConnect({ socket: this.socket, ...options });
    await new Promise<void>((resolve, reject) => {
      t.once('secureConnect', () => resolve());
      t.once('error', reject);
      t.once('close', () => reject(new Error('closed during the TLS handshake')));
    });
    this.socket = t;
    this.attach(t);
    return r;
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  static async connect(socketPath: string): Promise<RawNbdClient> {
    const socket = createConnection(socketPath);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const c = new RawNbdClient(socket);
    const greeting = await c.read(18);
    if (greeting.readBigUInt64BE(0) !== NBD_MAGIC || greeting.readBigUInt64BE(8) !== NBD_IHAVEOPT) throw new Error('bad greeting');
    c.handshakeFlags = greeting.readUInt16BE(16);
    return c;
  }

  /** Resolve with exactly n bytes, or reject if the server closes first. */
  async read(n: number, timeoutMs = 20000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buf.length < n) {
      if (this.closed) throw new Error(`server closed the connection (wanted ${n} bytes, have ${this.buf.length})`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${n} bytes`);
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 200);
      });
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  /** Resolves true once the server has closed the connection (within the timeout). */
  async closedByServer(timeoutMs = 10000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 200);
      });
    }
    return this.closed;
  }

  write(b: Buffer): void {
    this.socket.write(b);
  }

  sendClientFlags(flags = 3): void {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(flags, 0);
    this.write(b);
  }

  sendOption(option: number, data: Buffer = Buffer.alloc(0)): void {
    this.write(Buffer.concat([encodeOptionHeader(option, data.length), data]));
  }

  async readOptionReply(): Promise<OptionReply> {
    const h = await this.read(20);
    if (h.readBigUInt64BE(0) !== NBD_OPT_REPLY_MAGIC) throw new Error(`bad option reply magic ${h.toString('hex')}`);
    const len = h.readUInt32BE(16);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: await this.read(len) };
  }

  /** Option replies up to and including the final one (ACK or an error). */
  async readOptionReplies(): Promise<OptionReply[]> {
    const out: OptionReply[] = [];
    for (;;) {
      const r = await this.readOptionReply();
      out.push(r);
      if (r.type === NbdReply.ACK || r.type >= 0x80000000) return out;
    }
  }

  /** Fixed newstyle handshake ending in NBD_OPT_GO; returns the INFO replies' payloads by type. */
  async go(name: string, infos: number[] = []): Promise<{ size: bigint; flags: number; infos: Map<number, Buffer> }> {
    this.sendOption(NbdOption.GO, encodeInfoRequest(name, infos));
    const replies = await this.readOptionReplies();
    const last = replies[replies.length - 1]!;
    if (last.type !== NbdReply.ACK) throw new Error(`NBD_OPT_GO failed: 0x${last.type.toString(16)} ${last.data.toString()}`);
    const byType = new Map(replies.filter((r) => r.type === NbdReply.INFO).map((r) => [r.data.readUInt16BE(0), r.data] as const));
    const exp = byType.get(0)!;
    return { size: exp.readBigUInt64BE(2), flags: exp.readUInt16BE(10), infos: byType };
  }

  /** Send a request; returns its cookie. `payload` follows the header (WRITE). */
  request(type: number, offset: bigint | number, length: number, flags = 0, payload?: Buffer, magic?: number): bigint {
    const cookie = this.nextCookie++;
    const c = Buffer.alloc(8);
    c.writeBigUInt64BE(cookie);
    if (type === 0) this.readLengths.set(cookie, length);
    this.write(encodeRequestHeader({ flags, type, cookie: c, offset: BigInt(offset), length, ...(magic !== undefined && { magic }) }));
    if (payload) this.write(payload);
    return cookie;
  }

  async readReply(): Promise<Reply> {
    const h = await this.read(16);
    if (h.readUInt32BE(0) !== NBD_SIMPLE_REPLY_MAGIC) throw new Error(`bad reply magic ${h.toString('hex')}`);
    const error = h.readUInt32BE(4);
    const cookie = h.readBigUInt64BE(8);
    const len = this.readLengths.get(cookie);
    this.readLengths.delete(cookie);
    const data = error === 0 && len !== undefined ? await this.read(len) : null;
    return { error, cookie, data };
  }

  /** Send one request and wait for its reply. */
  async call(type: number, offset: bigint | number, length: number, flags = 0, payload?: Buffer): Promise<Reply> {
    const cookie = this.request(type, offset, length, flags, payload);
    const r = await this.readReply();
    if (r.cookie !== cookie) throw new Error(`reply for cookie ${r.cookie}, expected ${cookie}`);
    return r;
  }

  close(): void {
    this.socket.destroy();
  }
}
