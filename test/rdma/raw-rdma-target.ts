import { COMPLETION_SIZE, silentLogger, type KeyedDescriptor } from '../../src/index.js';
import { decodeKeyedDescriptors } from '../../src/protocol/keyed-descriptor.js';
import { nativeBinding, WrOpcode, type CmEvent, type CmId, type EventChannel } from '../../src/transport/rdma/native-binding.js';
import { RcConnection } from '../../src/transport/rdma/rc-connection.js';
import { readDepths } from '../../src/transport/rdma/rdma-limits.js';
import type { RegisteredPool } from '../../src/transport/rdma/registered-pool.js';
import { RdmaTransport } from '../../src/transport/rdma/rdma-transport.js';
import type { InitiatorConnection, KeyedMemoryOptions } from '../../src/transport/transport.js';

/**
 * A bare RDMA target for key tests: it accepts connections, hands each received command to the
 * test with its keyed descriptors, and does exactly the RDMA READs and WRITEs the test asks
 * for, with whatever descriptors it kept (also after the command completed).
 */
export class RawRdmaTarget {
  private readonly channel: EventChannel;
  private readonly listenId: CmId;
  readonly port: number;
  private readonly accepted: RawTargetConnection[] = [];
  private acceptWaiters: Array<(c: RawTargetConnection) => void> = [];
  private readonly conns = new Map<CmId, RawTargetConnection>();

  constructor(readonly host: string) {
    const binding = nativeBinding();
    this.channel = new binding.EventChannel((ev) => this.onEvent(ev));
    this.listenId = new binding.CmId(this.channel);
    this.listenId.bind(host, 0);
    this.listenId.listen(8);
    this.port = this.listenId.localAddress()!.port;
  }

  private onEvent(ev: CmEvent): void {
    if (ev.type === 'CONNECT_REQUEST' && ev.id) {
      const conn = new RawTargetConnection(ev.id, ev);
      this.conns.set(ev.id, conn);
      const w = this.acceptWaiters.shift();
      if (w) w(conn);
      else this.accepted.push(conn);
      return;
    }
    // DISCONNECTED is left alone: a test still waits for the error completion of an access
    // the initiator refused (its QP errors out and disconnects at about the same time).
  }

  /** The next accepted connection. */
  accept(): Promise<RawTargetConnection> {
    const c = this.accepted.shift();
    if (c) return Promise.resolve(c);
    return new Promise((resolve) => this.acceptWaiters.push(resolve));
  }

  /** An initiator connection to this target through vof's RDMA transport (the code under test). */
  async connect(queueSize: number, keyedMemory?: KeyedMemoryOptions): Promise<{ initiator: InitiatorConnection; target: RawTargetConnection }> {
    const accepted = this.accept();
    const initiator = await new RdmaTransport(silentLogger).connect(
      { host: this.host, port: this.port },
      { timeoutMs: 60000, maxVqPayload: 1 << 24, queueSize, ...(keyedMemory && { keyedMemory }) },
    );
    initiator.maxKeyedDescriptors = 8;
    return { initiator, target: await accepted };
  }

  close(): void {
    for (const c of this.conns.values()) c.destroy();
    this.listenId.destroy();
    this.channel.close();
  }
}

export interface ReceivedCommand {
  readonly command: Buffer;
  readonly descriptors: KeyedDescriptor[];
}

export class RawTargetConnection {
  readonly rc: RcConnection;
  private readonly data: RegisteredPool;
  private readonly received: ReceivedCommand[] = [];
  private waiters: Array<() => void> = [];
  broken: Error | null = null;

  constructor(cmId: CmId, request: CmEvent) {
    const binding = nativeBinding();
    this.rc = new RcConnection(
      binding,
      cmId,
      { recvDepth: 64, recvSize: 16 + 16 * 64, sendDepth: 64, sendSize: COMPLETION_SIZE },
      {
        onMessage: (m) => {
          const command = Buffer.from(m.subarray(0, 16));
          this.received.push({ command, descriptors: m.length > 16 ? decodeKeyedDescriptors(Buffer.from(m), 16) : [] });
          this.wake();
        },
        onBroken: (err) => {
          this.broken = err;
          this.wake();
        },
      },
    );
    this.data = this.rc.createPool(2 * 1024 * 1024, 2, binding.access.LOCAL_WRITE);
    cmId.accept(readDepths(cmId, request));
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  async nextCommand(timeoutMs = 60000): Promise<ReceivedCommand> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const c = this.received.shift();
      if (c) return c;
      if (this.broken) throw this.broken;
      if (Date.now() > deadline) throw new Error('no command arrived');
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 200);
      });
    }
  }

  /** RDMA READ of the bytes `d` describes. */
  async read(d: KeyedDescriptor): Promise<Buffer> {
    const buf = this.data.acquire(d.length);
    try {
      await this.rc.sendQueue.post([{ wrId: 0, opcode: WrOpcode.Read, signaled: true, sg: [buf.mr, buf.offset, d.length], remoteAddrLow: Number(d.addr & 0xffff_ffffn), remoteAddrHigh: Number(d.addr >> 32n), rkey: d.key }], 'RDMA READ');
      return Buffer.from(buf.view);
    } finally {
      buf.release();
    }
  }

  /** RDMA WRITE of `data` to the bytes `d` describes. */
  async write(d: KeyedDescriptor, data: Buffer): Promise<void> {
    const buf = this.data.acquire(data.length);
    data.copy(buf.view);
    try {
      await this.rc.sendQueue.post([{ wrId: 0, opcode: WrOpcode.Write, signaled: true, sg: [buf.mr, buf.offset, data.length], remoteAddrLow: Number(d.addr & 0xffff_ffffn), remoteAddrHigh: Number(d.addr >> 32n), rkey: d.key }], 'RDMA WRITE');
    } finally {
      buf.release();
    }
  }

  /**
   * The VQ completion of `command`: status 0 and `written` bytes; with `invalidateKey`, sent as
   * a SEND with Invalidate ending that initiator key (vof remote invalidation).
   */
  complete(command: Buffer, written: number, invalidateKey: number | null = null): Promise<void> {
    const c = Buffer.alloc(COMPLETION_SIZE);
    c.writeUInt16LE(0, 0);
    c.writeUInt16LE(command.readUInt16LE(2), 2);
    c.writeUInt32LE(written, 4);
    return this.rc.send([c], 'completion', [], invalidateKey);
  }

  destroy(): void {
    this.rc.destroy();
  }
}
