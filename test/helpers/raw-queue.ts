import net from 'node:net';
import tls from 'node:tls';
import {
  CONNECT_BODY_SIZE,
  CONTROL_QUEUE_INSTANCE_ID,
  Opcode,
  VIRTIO_OF_CONTROL_QUEUE_SIZE,
  encodeCommand,
  encodeConnectBody,
  type Command,
} from '../../src/protocol/index.js';

/**
 * A bare TCP peer for protocol tests: writes whatever bytes it is told and reads completions
 * with the framing of DECISIONS.md item 3, so tests see exactly what the target put on the wire.
 */
export class RawQueue {
  private buf = Buffer.alloc(0);
  private waiters: Array<() => void> = [];
  closed = false;
  private readonly closedP: Promise<void>;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake();
    });
    socket.on('error', () => {});
    this.closedP = new Promise((r) =>
      socket.on('close', () => {
        this.closed = true;
        this.wake();
        r();
      }),
    );
  }

  /** `localAddress`: another loopback address (127.0.0.2, …) plays another host. */
  static open(port: number, host = '127.0.0.1', localAddress?: string): Promise<RawQueue> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ port, host, ...(localAddress && { localAddress }) }, () => resolve(new RawQueue(s)));
      s.once('error', reject);
    });
  }

  /** Over TLS (tls:// listeners): resolves once the handshake is done. */
  static openTls(port: number, options: tls.ConnectionOptions, host = '127.0.0.1'): Promise<RawQueue> {
    return new Promise((resolve, reject) => {
      const s = tls.connect({ port, host, ...options }, () => resolve(new RawQueue(s)));
      s.once('error', reject);
    });
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** One write, so everything given arrives at the target together. */
  send(...parts: Buffer[]): void {
    this.socket.write(Buffer.concat(parts));
  }

  command(cmd: Command, payload?: Buffer): void {
    this.send(encodeCommand(cmd), ...(payload ? [payload] : []));
  }

  /** Next n bytes from the target; rejects if the connection closes first or after timeoutMs. */
  async read(n: number, timeoutMs = 5000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buf.length < n) {
      if (this.closed) throw new Error(`connection closed with ${this.buf.length}/${n} bytes`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${n} bytes (have ${this.buf.length})`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return Buffer.from(out);
  }

  /** Next 16-byte completion, skipping target keepalives (0xffff) unless asked for. */
  async completion(keepKeepalives = false): Promise<Buffer> {
    for (;;) {
      const c = await this.read(16);
      if (keepKeepalives || c.readUInt16LE(2) !== 0xffff) return c;
    }
  }

  /** Resolves when the target closed the connection. */
  whenClosed(timeoutMs = 5000): Promise<void> {
    return Promise.race([
      this.closedP,
      new Promise<void>((_, rej) => setTimeout(() => rej(new Error('connection not closed')), timeoutMs).unref()),
    ]);
  }

  /** Connect as a control queue; resolves with the completion. */
  async connectControl(tvqn: string, ivqn = 'test-initiator', queueSize = VIRTIO_OF_CONTROL_QUEUE_SIZE): Promise<Buffer> {
    this.command(
      { opcode: Opcode.Connect, commandId: 1, deviceInstanceId: CONTROL_QUEUE_INSTANCE_ID, vqIndex: 0, length: CONNECT_BODY_SIZE, queueSize },
      encodeConnectBody({ ivqn, tvqn }),
    );
    return this.completion();
  }

  /** Send one command and return its completion. */
  async call(cmd: Command, payload?: Buffer): Promise<Buffer> {
    this.command(cmd, payload);
    return this.completion();
  }

  close(): Promise<void> {
    this.socket.end();
    return this.closedP;
  }
}
