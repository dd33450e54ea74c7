import {
  CONNECT_BODY_SIZE,
  CONTROL_QUEUE_INSTANCE_ID,
  DeviceStatus,
  Opcode,
  Status,
  VIRTIO_F_VERSION_1,
  VIRTIO_OF_CONTROL_QUEUE_SIZE,
  encodeCommand,
  encodeConnectBody,
  encodeKeyedDescriptor,
  silentLogger,
  type Command,
  type KeyedDescriptor,
} from '../../src/index.js';
import type { MemoryRegion, ProtectionDomain } from '../../src/transport/rdma/native-binding.js';
import type { ConnectOptions, InitiatorConnection } from '../../src/transport/transport.js';
import { RdmaTransport } from '../../src/transport/rdma/rdma-transport.js';
import { parseListenUrl } from '../../src/transport/url.js';

/**
 * A bare RDMA peer for protocol tests: each send() is one RDMA SEND of exactly the bytes given
 * (a request PDU, or a malformed one), and completions are read back as the target sent them.
 */
export class RawRdmaQueue {
  private readonly received: Buffer[] = [];
  private waiters: Array<() => void> = [];
  closed = false;
  closeReason: Error | undefined;

  private constructor(readonly connection: InitiatorConnection) {
    connection.start({
      onCompletion: (c) => {
        this.received.push(Buffer.from(c));
        this.wake();
      },
      expectedPayload: () => 0, // keyed: completions never carry payload
      payloadBuffers: () => [],
      onClose: (reason) => {
        this.closed = true;
        this.closeReason = reason;
        this.wake();
      },
    });
  }

  /** `inlineData`: size the send buffers for vof inline requests (docs/PROTOCOL.md). */
  static async open(url: string, inlineData?: ConnectOptions['inlineData']): Promise<RawRdmaQueue> {
    const { endpoint } = parseListenUrl(url);
    const conn = await new RdmaTransport(silentLogger).connect(endpoint, { timeoutMs: 30000, maxVqPayload: 1 << 20, ...(inlineData && { inlineData }) });
    return new RawRdmaQueue(conn);
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** One message: the 16-byte command followed by `rest` (Connect Body, keyed descriptors, junk). */
  send(command: Buffer, rest?: Buffer): void {
    this.connection.sendCommand(command, rest);
  }

  command(cmd: Command, rest?: Buffer): void {
    this.send(encodeCommand(cmd), rest);
  }

  /** Next completion, skipping target keepalives; rejects if the connection closes first. */
  async completion(timeoutMs = 30000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const c = this.received.shift();
      if (c) {
        if (c.readUInt16LE(2) === 0xffff) continue;
        return c;
      }
      if (this.closed) throw new Error(`connection closed${this.closeReason ? `: ${this.closeReason.message}` : ''}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('timed out waiting for a completion');
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  async call(cmd: Command, rest?: Buffer): Promise<Buffer> {
    this.command(cmd, rest);
    return this.completion();
  }

  async whenClosed(timeoutMs = 30000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed) {
      if (Date.now() > deadline) throw new Error('connection not closed');
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  connectControl(tvqn: string, ivqn = 'test-initiator'): Promise<Buffer> {
    return this.call(
      { opcode: Opcode.Connect, commandId: 1, deviceInstanceId: CONTROL_QUEUE_INSTANCE_ID, vqIndex: 0, length: CONNECT_BODY_SIZE, queueSize: VIRTIO_OF_CONTROL_QUEUE_SIZE },
      encodeConnectBody({ ivqn, tvqn }),
    );
  }

  /**
   * Control queue Connect, VERSION_1, status up to DRIVER_OK; returns the instance id.
   * `afterConnect` runs right after the Connect (Virtio-oF feature negotiation, say).
   */
  async bringUp(tvqn: string, afterConnect?: () => Promise<void>): Promise<number> {
    const c = await this.connectControl(tvqn);
    if (c.readUInt16LE(0) !== Status.SUCCESS) throw new Error(`Connect failed with 0x${c.readUInt16LE(0).toString(16)}`);
    await afterConnect?.();
    const steps: Command[] = [
      { opcode: Opcode.SetStatus, commandId: 2, status: DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER },
      { opcode: Opcode.SetDriverFeature, commandId: 3, featureSelect: 0, feature: 1n << VIRTIO_F_VERSION_1 },
      { opcode: Opcode.SetStatus, commandId: 4, status: DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK },
      { opcode: Opcode.SetStatus, commandId: 5, status: DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK | DeviceStatus.DRIVER_OK },
    ];
    for (const s of steps) {
      const r = await this.call(s);
      if (r.readUInt16LE(0) !== Status.SUCCESS) throw new Error(`${s.opcode} failed with 0x${r.readUInt16LE(0).toString(16)}`);
    }
    return c.readUInt16LE(4);
  }

  /** Virtqueue Connect without a body (reuses the control queue's). */
  connectVq(instanceId: number, vqIndex: number, queueSize = 16): Promise<Buffer> {
    return this.call({ opcode: Opcode.Connect, commandId: 1, deviceInstanceId: instanceId, vqIndex, length: 0, queueSize });
  }

  /** Register `buf` in this queue's protection domain, for memory the target may use. */
  register(buf: Buffer, access: number): MemoryRegion {
    const rc = (this.connection as unknown as { rc: { pd: ProtectionDomain } }).rc;
    return rc.pd.registerMemory(buf, access);
  }

  close(): Promise<void> {
    return this.connection.close();
  }
}

/** Keyed descriptors as they follow a VQ command in one SEND. */
export function descriptors(list: readonly KeyedDescriptor[]): Buffer {
  const b = Buffer.alloc(list.length * 16);
  list.forEach((d, i) => encodeKeyedDescriptor(d, b, i * 16));
  return b;
}
