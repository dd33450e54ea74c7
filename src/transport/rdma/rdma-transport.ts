import type { Logger } from '../../util/log.js';
import { OldestFirstAdmission, type AdmissionLimits } from '../../util/oldest-first-admission.js';
import { formatRdmaPeer, numericHost } from '../address.js';
import type {
  ConnectOptions,
  Endpoint,
  InitiatorConnection,
  ListenOptions,
  Listener,
  TargetConnection,
  Transport,
} from '../transport.js';
import { nativeBinding, type CmEvent, type CmId, type NativeBinding } from './native-binding.js';
import { RdmaInitiatorConnection } from './rdma-initiator-connection.js';
import { RdmaTargetConnection, type RdmaTargetOptions } from './rdma-target-connection.js';
import { DEFAULT_NIC_MEMORY_BYTES, nicMemories } from './nic-memory.js';
import { deviceOf, followDeviceRemoval } from './device-removal.js';
import { DEFAULT_MAX_BACKLOG } from './send-queue.js';

/** Keyed descriptors the target accepts per VQ command (Get Keyed Number Descriptors). */
export const DEFAULT_MAX_KEYED_DESCRIPTORS = 32;

const TARGET_DEFAULTS: Omit<RdmaTargetOptions, 'maxVqPayload' | 'inlineDataBytes'> = {
  maxKeyedDescriptors: DEFAULT_MAX_KEYED_DESCRIPTORS,
  recvDepth: 288,
  sendDepth: 512,
  deviceMemoryBytes: DEFAULT_NIC_MEMORY_BYTES,
  sendStallTimeoutMs: 10000,
  maxSendBacklog: DEFAULT_MAX_BACKLOG,
};

/**
 * Keyed data transfers over RDMA CM reliable connections (DECISIONS.md items 2 and 4). The
 * native addon is loaded when this transport is first constructed.
 */
export class RdmaTransport implements Transport {
  readonly scheme = 'rdma' as const;
  private readonly binding: NativeBinding;

  constructor(private readonly log: Logger) {
    this.binding = nativeBinding();
  }

  async listen(endpoint: Endpoint, options: ListenOptions, onConnection: (connection: TargetConnection) => void): Promise<Listener> {
    const host = await numericHost(endpoint.host);
    const targetOptions: RdmaTargetOptions = {
      ...TARGET_DEFAULTS,
      maxVqPayload: options.maxVqPayload,
      inlineDataBytes: options.inlineDataBytes ?? 0,
      ...(options.sendStallTimeoutMs !== undefined && { sendStallTimeoutMs: options.sendStallTimeoutMs }),
      ...(options.deviceMemoryBytes !== undefined && { deviceMemoryBytes: options.deviceMemoryBytes }),
    };
    const admission = { limits: options.handshakeLimits, timeoutMs: options.handshakeTimeoutMs ?? 0 };
    return new RdmaListener(this.binding, host, endpoint.port, targetOptions, admission, this.log, onConnection);
  }

  connect(endpoint: Endpoint, options: ConnectOptions): Promise<InitiatorConnection> {
    return RdmaInitiatorConnection.connect(this.binding, endpoint, options, this.log);
  }
}

/**
 * How connections between their CONNECT_REQUEST and ESTABLISHED are bounded: the target's limits
 * for connections without Connect (absent: unbounded), and how long one may take (0: forever).
 */
interface PendingAdmission {
  readonly limits: AdmissionLimits | undefined;
  readonly timeoutMs: number;
}

/**
 * A listening CM id; accepted connections share its event channel. A connection counts from its
 * CONNECT_REQUEST: until ESTABLISHED hands it to the target (which counts it from there until its
 * Connect), it holds a QP and a small receive ring, so it is counted per peer host and in total
 * with the target's limits for connections without Connect, oldest closed first as on tls://,
 * and destroyed if it is not established within the target's connect timeout.
 */
class RdmaListener implements Listener {
  readonly endpoint: Endpoint;
  readonly url: string;
  private readonly channel;
  /** Null while the RDMA device is gone (DEVICE_REMOVAL): listening again is retried. */
  private listenId: CmId | null;
  private relistenTimer: NodeJS.Timeout | null = null;
  private readonly connections = new Map<CmId, RdmaTargetConnection>();
  private closing: Promise<void> | null = null;
  private whenEmpty: (() => void) | null = null;
  private readonly pending: OldestFirstAdmission<RdmaTargetConnection> | null;
  private readonly pendingTimers = new Map<RdmaTargetConnection, NodeJS.Timeout>();

  constructor(
    private readonly binding: NativeBinding,
    host: string,
    port: number,
    private readonly options: RdmaTargetOptions,
    private readonly admission: PendingAdmission,
    private readonly log: Logger,
    private readonly onConnection: (connection: TargetConnection) => void,
  ) {
    this.pending = admission.limits ? new OldestFirstAdmission(admission.limits) : null;
    this.channel = new binding.EventChannel((ev) => this.onEvent(ev));
    this.listenId = new binding.CmId(this.channel);
    try {
      this.listenId.bind(host, port);
      this.listenId.listen(128);
    } catch (err) {
      this.listenId.destroy();
      this.channel.close();
      const e = err as Error & { code?: string };
      const hint = e.code === 'EADDRNOTAVAIL' || e.code === 'ENODEV' ? ' (is there an RDMA device on that address?)' : '';
      throw new Error(`cannot listen on ${formatRdmaPeer(host, port)}: ${e.message}${hint}`, { cause: err });
    }
    const bound = this.listenId!.localAddress();
    this.endpoint = { host, port: bound?.port ?? port };
    this.url = formatRdmaPeer(host, this.endpoint.port);
  }

  /**
   * The CM event callback: the boundary between the addon and JS, where nothing may escape (a
   * throw there ends the process). A connection whose event handling throws is closed.
   */
  private onEvent(ev: CmEvent): void {
    const conn = ev.id && ev.type !== 'CONNECT_REQUEST' ? this.connections.get(ev.id) : undefined;
    try {
      if (ev.type === 'DEVICE_REMOVAL') {
        // Before the handlers below destroy the id (which the device's release waits for).
        const device = deviceOf(ev.id);
        followDeviceRemoval(this.binding, device);
        if (device !== null) nicMemories.forget(device);
      }
      if (ev.type === 'CONNECT_REQUEST' && ev.id) return this.onConnectRequest(ev, ev.id);
      if (ev.type === 'DEVICE_REMOVAL' && ev.id && ev.id === this.listenId) return this.onListenerRemoved();
      conn?.onCmEvent(ev);
    } catch (err) {
      this.log.warn(`${conn?.peer ?? this.url}: RDMA CM ${ev.type} event handler failed (${(err as Error).message}): closing the connection`);
      try {
        conn?.close();
      } catch {
        conn?.teardown(err as Error);
      }
    }
  }

  private onConnectRequest(ev: CmEvent, id: CmId): void {
    if (this.closing) {
      rejectAndDestroy(id);
      return;
    }
    try {
      const conn = new RdmaTargetConnection(
        this.binding,
        id,
        ev,
        this.options,
        this.log,
        (c) => {
          this.settle(c);
          this.onConnection(c);
        },
        (c) => {
          this.settle(c);
          this.connections.delete(id);
          if (this.connections.size === 0) this.whenEmpty?.();
        },
      );
      this.connections.set(id, conn);
      this.admit(conn, id.peerAddress()?.host ?? '?');
    } catch (err) {
      this.log.warn(`${this.url}: cannot accept a connection: ${(err as Error).message}`);
      rejectAndDestroy(id);
    }
  }

  /**
   * The RDMA device under the listening address went away (rxe removed, NIC unplugged): the
   * kernel has dropped the listen, and the id must be destroyed for the device to go. The
   * connections on it get their own DEVICE_REMOVAL. Listening on the same address and port is
   * retried every second, so initiators find the target again once the device is back.
   */
  private onListenerRemoved(): void {
    this.log.warn(`${this.url}: the RDMA device went away (DEVICE_REMOVAL): not listening until it is back`);
    this.listenId?.destroy();
    this.listenId = null;
    this.relisten();
  }

  private relisten(): void {
    this.relistenTimer = null;
    if (this.closing) return;
    const id = new this.binding.CmId(this.channel);
    try {
      id.bind(this.endpoint.host, this.endpoint.port);
      id.listen(128);
    } catch {
      id.destroy();
      this.relistenTimer = setTimeout(() => this.relisten(), 1000);
      return;
    }
    this.listenId = id;
    this.log.info(`${this.url}: listening again`);
  }

  /** Count a connection from its CONNECT_REQUEST; close the oldest pending ones over the limits. */
  private admit(conn: RdmaTargetConnection, host: string): void {
    for (const old of this.pending?.admit(conn, host) ?? []) {
      this.log.warn(`${old.peer}: closed before its RDMA connection was established to make room for ${conn.peer} (limit of connections without Connect reached)`);
      old.teardown(new Error('closed to make room for newer connections'));
    }
    if (this.admission.timeoutMs > 0) {
      const timer = setTimeout(() => {
        this.pendingTimers.delete(conn);
        this.log.warn(`${conn.peer}: RDMA connection not established within ${this.admission.timeoutMs} ms; closing`);
        conn.teardown(new Error('not established in time'));
      }, this.admission.timeoutMs);
      timer.unref();
      this.pendingTimers.set(conn, timer);
    }
  }

  /** Established (handed to the target) or gone: no longer pending. Idempotent. */
  private settle(conn: RdmaTargetConnection): void {
    this.pending?.settle(conn);
    const timer = this.pendingTimers.get(conn);
    if (timer) clearTimeout(timer);
    this.pendingTimers.delete(conn);
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      this.listenId?.destroy();
      this.listenId = null;
      if (this.relistenTimer) clearTimeout(this.relistenTimer);
      if (this.connections.size > 0) {
        const empty = new Promise<void>((resolve) => (this.whenEmpty = resolve));
        for (const c of [...this.connections.values()]) c.close();
        await empty;
      }
      this.channel.close();
    })();
    return this.closing;
  }
}

/** Refuse a connection request; the id may already be gone with a half-built connection. */
function rejectAndDestroy(id: CmId): void {
  try {
    id.reject();
  } catch {
    // already destroyed
  }
  id.destroy();
}
