import { COMMAND_SIZE, COMPLETION_SIZE, CONNECT_BODY_SIZE } from '../../protocol/constants.js';
import { REDIRECT_RECORD_SIZE, VOF_STATUS_EREDIRECT } from '../../protocol/redirect-record.js';
import { encodeKeyedDescriptor, type KeyedDescriptor } from '../../protocol/keyed-descriptor.js';
import { carriesInline, inlineRequestMessageSize, inlineRequestParts } from '../../protocol/inline-data.js';
import type { Logger } from '../../util/log.js';
import { formatRdmaPeer, numericHost } from '../address.js';
import type { ConnectOptions, Endpoint, InitiatorConnection, InitiatorConnectionHandler } from '../transport.js';
import { MemoryRegistrationCache } from './memory-registration-cache.js';
import type { CmEvent, CmId, EventChannel, NativeBinding } from './native-binding.js';
import { RcConnection } from './rc-connection.js';
import { initiatorConnParam } from './rdma-limits.js';
import type { RegisteredBuffer, RegisteredPool } from './registered-pool.js';

/** Buffers at least this large are registered and moved in place; smaller ones are copied. */
const DIRECT_MIN = 16 * 1024;
const BOUNCE_CHUNK = 64 * 1024;
const RECV_SIZE = 64;
/** A control queue may receive an EREDIRECT completion with its redirect record in one SEND. */
const CONTROL_RECV_SIZE = COMPLETION_SIZE + REDIRECT_RECORD_SIZE;

interface PendingVq {
  /** Device-writable bounce copies: [destination, source] pairs in in-stream order. */
  readonly copyBack: Array<{ readonly to: Buffer; readonly from: Buffer; readonly at: number }>;
  readonly release: Array<() => void>;
}

interface Placement {
  readonly descs: KeyedDescriptor[];
  readonly copyBack: PendingVq['copyBack'];
}

/**
 * Initiator end of one RDMA CM connection. Commands go out as one SEND each; a VQ command's
 * buffers are described by keyed descriptors: large caller buffers registered in place (a read
 * lands directly in the caller's memory), small ones packed into registered bounce chunks.
 * Device-readable memory is registered REMOTE_READ only, device-writable REMOTE_WRITE only.
 */
export class RdmaInitiatorConnection implements InitiatorConnection {
  readonly kind = 'keyed' as const;
  maxKeyedDescriptors = 1;
  private handler: InitiatorConnectionHandler | null = null;
  private readonly rc: RcConnection;
  private readonly outBounce: RegisteredPool;
  private readonly inBounce: RegisteredPool;
  private readonly registrations: MemoryRegistrationCache;
  private readonly pending = new Map<number, PendingVq>();
  private closed = false;
  private disconnected: (() => void) | null = null;
  /** vof inline data: readable parts up to this size go in the SEND (0: seed layout only). */
  private readonly inlineDataBytes: number;

  private constructor(
    private readonly binding: NativeBinding,
    private readonly channel: EventChannel,
    private readonly cmId: CmId,
    readonly peer: string,
    queueDepth: number,
    private readonly log: Logger,
    controlQueue = false,
    inlineData?: ConnectOptions['inlineData'],
  ) {
    this.inlineDataBytes = inlineData?.bytes ?? 0;
    const sendSize = Math.max(COMMAND_SIZE + CONNECT_BODY_SIZE, inlineData ? inlineRequestMessageSize(inlineData.maxDescriptors, inlineData.bytes) : 0);
    this.rc = new RcConnection(
      binding,
      cmId,
      { recvDepth: queueDepth + 64, recvSize: controlQueue ? CONTROL_RECV_SIZE : RECV_SIZE, sendDepth: queueDepth + 16, sendSize },
      { onMessage: (m) => this.onMessage(m), onBroken: (err) => this.teardown(err) },
    );
    this.outBounce = this.rc.createPool(BOUNCE_CHUNK, 32, binding.access.REMOTE_READ);
    this.inBounce = this.rc.createPool(BOUNCE_CHUNK, 32, binding.access.REMOTE_WRITE);
    this.registrations = new MemoryRegistrationCache(this.rc.pd, 64);
  }

  static async connect(binding: NativeBinding, endpoint: Endpoint, options: ConnectOptions, log: Logger): Promise<RdmaInitiatorConnection> {
    const host = await numericHost(endpoint.host);
    const peer = formatRdmaPeer(endpoint.host, endpoint.port);
    const events: CmEvent[] = [];
    let wake: (() => void) | null = null;
    let conn: RdmaInitiatorConnection | null = null;
    const channel = new binding.EventChannel((ev) => {
      if (conn && conn.established) return conn.onCmEvent(ev);
      events.push(ev);
      wake?.();
    });
    const cmId = new binding.CmId(channel);
    const deadline = Date.now() + options.timeoutMs;
    const expect = async (type: string, what: string): Promise<CmEvent> => {
      for (;;) {
        const ev = events.shift();
        if (ev) {
          if (ev.type === type) return ev;
          const reason = ev.type === 'REJECTED' ? 'connection refused (no Virtio-oF target listening there?)' : `${ev.type} (status ${ev.status})`;
          throw new Error(`${what} ${peer} failed: ${reason}`);
        }
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`${what} ${peer} timed out after ${options.timeoutMs} ms`);
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, left);
          wake = () => {
            clearTimeout(t);
            wake = null;
            resolve();
          };
        });
      }
    };
    try {
      const timeout = Math.max(1, Math.min(options.timeoutMs, 2000));
      cmId.resolveAddr(host, endpoint.port, timeout);
      await expect('ADDR_RESOLVED', 'resolving the RDMA address of');
      cmId.resolveRoute(timeout);
      await expect('ROUTE_RESOLVED', 'resolving the route to');
      // A control queue holds at most 32 commands (VIRTIO_OF_CONTROL_QUEUE_SIZE) plus events.
      conn = options.controlQueue ? new RdmaInitiatorConnection(binding, channel, cmId, peer, 64, log, true) : new RdmaInitiatorConnection(binding, channel, cmId, peer, 256, log, false, options.inlineData);
      cmId.connect(initiatorConnParam(cmId));
      await expect('ESTABLISHED', 'connecting to');
      conn.established = true;
      return conn;
    } catch (err) {
      if (conn) conn.teardown();
      else {
        cmId.destroy();
        channel.close();
      }
      throw err;
    }
  }

  private established = false;

  private onCmEvent(ev: CmEvent): void {
    if (ev.type === 'DISCONNECTED' || ev.type === 'DEVICE_REMOVAL') {
      if (this.disconnected) this.disconnected();
      else this.teardown(new Error(`${this.peer}: target disconnected`));
    }
  }

  start(handler: InitiatorConnectionHandler): void {
    this.handler = handler;
  }

  private onMessage(msg: Buffer): void {
    if (this.closed) return;
    if (msg.length === CONTROL_RECV_SIZE && msg.readUInt16LE(0) === VOF_STATUS_EREDIRECT) {
      // vof redirect: the record rides in the completion's SEND (docs/PROTOCOL.md "Redirect").
      // QueueClient checks that it answers a Connect that announced redirect support.
      const completion = Buffer.from(msg.subarray(0, COMPLETION_SIZE));
      const problem = this.handler?.expectedPayload(completion);
      if (typeof problem === 'string') {
        this.teardown(new Error(`${this.peer}: ${problem}`));
        return;
      }
      // Delivered like a stream payload: into the buffers the queue client hands out for it.
      let at = COMPLETION_SIZE;
      for (const into of this.handler?.payloadBuffers(completion) ?? []) at += msg.copy(into, 0, at);
      this.handler?.onCompletion(completion);
      return;
    }
    if (msg.length !== COMPLETION_SIZE) {
      this.log.warn(`${this.peer}: ${msg.length}-byte completion message (expected ${COMPLETION_SIZE}): closing`);
      this.teardown(new Error(`malformed completion from ${this.peer}`));
      return;
    }
    const completion = Buffer.from(msg);
    const pending = this.pending.get(completion.readUInt16LE(2));
    if (pending) {
      this.pending.delete(completion.readUInt16LE(2));
      if (completion.readUInt16LE(0) === 0) {
        const written = completion.readUInt32LE(4);
        for (const c of pending.copyBack) {
          if (c.at >= written) break;
          c.from.copy(c.to, 0, 0, Math.min(c.from.length, written - c.at));
        }
      }
      for (const r of pending.release) r();
    }
    this.handler?.onCompletion(completion);
  }

  sendCommand(command: Buffer, body?: Buffer): void {
    const parts = body && body.length > 0 ? [command, body] : [command];
    this.rc.send(parts, 'command').catch((err: Error) => this.teardown(err));
  }

  sendVq(command: Buffer, out: readonly Buffer[], inBuffers: readonly Buffer[]): void {
    const release: Array<() => void> = [];
    // vof inline data: the readable bytes ride in the SEND; descriptors describe the writable part only.
    const inline = carriesInline(this.inlineDataBytes, command.readUInt32LE(8));
    const placeOut = inline ? [] : out;
    let placement: { out: Placement; in: Placement };
    try {
      placement = {
        out: this.place(placeOut, this.outBounce, this.binding.access.REMOTE_READ, release, false),
        in: this.place(inBuffers, this.inBounce, this.binding.access.REMOTE_WRITE, release, false),
      };
      if (placement.out.descs.length + placement.in.descs.length > this.maxKeyedDescriptors) {
        // Too many pieces for the target: one bounce descriptor per direction instead.
        for (const r of release.splice(0)) r();
        placement = {
          out: this.place(placeOut, this.outBounce, this.binding.access.REMOTE_READ, release, true),
          in: this.place(inBuffers, this.inBounce, this.binding.access.REMOTE_WRITE, release, true),
        };
        if (placement.out.descs.length + placement.in.descs.length > this.maxKeyedDescriptors) {
          throw new Error(`a VQ command needs ${placement.out.descs.length + placement.in.descs.length} keyed descriptors; the target allows ${this.maxKeyedDescriptors}`);
        }
      }
    } catch (err) {
      for (const r of release) r();
      this.teardown(err as Error);
      return;
    }
    const descs = [...placement.out.descs, ...placement.in.descs];
    this.pending.set(command.readUInt16LE(2), { copyBack: placement.in.copyBack, release });
    if (inline) {
      this.rc.send(inlineRequestParts(command, descs, out), 'VQ command').catch((err: Error) => this.teardown(err));
      return;
    }
    const body = Buffer.allocUnsafe(descs.length * 16);
    descs.forEach((d, i) => encodeKeyedDescriptor(d, body, i * 16));
    this.rc.send([command, body], 'VQ command').catch((err: Error) => this.teardown(err));
  }

  /**
   * Keyed descriptors for one direction. Large buffers are registered in place; runs of small
   * ones share a bounce chunk. With `coalesce`, everything goes through one bounce buffer.
   */
  private place(bufs: readonly Buffer[], bounce: RegisteredPool, access: number, release: Array<() => void>, coalesce: boolean): Placement {
    const descs: KeyedDescriptor[] = [];
    const copyBack: Placement['copyBack'] = [];
    const isIn = bounce === this.inBounce;
    let bounced = 0;
    for (const b of bufs) if (b.length > 0 && (coalesce || b.length < DIRECT_MIN)) bounced += b.length;
    let chunk: RegisteredBuffer | null = null;
    if (bounced > 0) {
      chunk = bounce.acquire(bounced);
      release.push(chunk.release);
    }
    let chunkAt = 0;
    let runStart = -1;
    let streamAt = 0;
    const closeRun = () => {
      if (runStart >= 0 && chunk) {
        descs.push({ addr: chunk.mr.address + BigInt(chunk.offset + runStart), length: chunkAt - runStart, key: chunk.mr.rkey });
      }
      runStart = -1;
    };
    for (const b of bufs) {
      if (b.length === 0) continue;
      if (coalesce || b.length < DIRECT_MIN) {
        if (runStart < 0) runStart = chunkAt;
        const view = chunk!.view.subarray(chunkAt, chunkAt + b.length);
        if (isIn) copyBack.push({ to: b, from: view, at: streamAt });
        else b.copy(view);
        chunkAt += b.length;
      } else {
        closeRun();
        const reg = this.registrations.acquire(b, access);
        release.push(reg.release);
        descs.push({ addr: reg.mr.address + BigInt(reg.offset), length: b.length, key: reg.mr.rkey });
      }
      streamAt += b.length;
    }
    closeRun();
    return { descs, copyBack };
  }

  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = setTimeout(done, 2000);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.disconnected = () => {
        this.teardown();
        done();
      };
      try {
        this.cmId.disconnect();
      } catch {
        this.teardown();
        done();
      }
    }).then(() => this.teardown());
  }

  /** Release everything once; the handler hears about it exactly once. */
  teardown(reason?: Error): void {
    if (this.closed) return;
    this.closed = true;
    for (const p of this.pending.values()) for (const r of p.release) r();
    this.pending.clear();
    this.registrations.clear();
    this.rc.destroy();
    this.channel.close();
    const h = this.handler;
    this.handler = null;
    h?.onClose(reason);
  }
}
