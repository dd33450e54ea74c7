import { Opcode, Status } from '../protocol/constants.js';
import { VIRTIO_F_ADMIN_VQ } from '../protocol/admin-records.js';
import { AdminClient } from './admin-client.js';
import type { InitiatorQueue } from './initiator-queue.js';
import { VofConnectionError, VofError } from './vof-error.js';

/** What the admin queue needs of its device (RemoteDevice). */
export interface AdminQueueHost {
  /** Where the device is now. */
  url(): string;
  /** The current control queue. */
  control(): InitiatorQueue;
  /** Request virtqueues connected (the admin queue's index is above theirs). */
  virtqueuesConnected(): number;
  hasFeature(bit: bigint): boolean;
  /** Why no admin queue may be opened now (the device is lost or closing), or null. */
  unusable(): Error | null;
  /** Resolves once the device is connected (held while it reconnects). */
  whenUsable(): Promise<void>;
  /** Connect virtqueue `vqIndex` (Get VQ Size, the connection, its Connect). */
  openQueue(vqIndex: number): Promise<InitiatorQueue>;
}

/**
 * A device's Admin Virtqueue (VIRTIO_F_ADMIN_VQ), connected on first use and dropped with the
 * device's other queues on a path failure (then connected again by the next admin command).
 */
export class AdminQueue {
  private queue: Promise<InitiatorQueue> | null = null;
  private clientValue: AdminClient | null = null;
  /** Index of the admin virtqueue, or null until it has been looked for. */
  index: number | null = null;

  constructor(private readonly host: AdminQueueHost) {}

  /** Admin commands; without the feature every call rejects. */
  get client(): AdminClient {
    this.clientValue ??= new AdminClient(async (readable, writable) => {
      const q = await this.connect();
      const result = Buffer.alloc(writable);
      const c = await q.vq([readable], [result]);
      if (c.status !== Status.SUCCESS) throw new VofError(c.status, Opcode.Vq, 'admin virtqueue');
      return result.subarray(0, c.kind === 'vq' ? c.length : 0);
    });
    return this.clientValue;
  }

  /** The queue being connected or connected now, if any. */
  get current(): Promise<InitiatorQueue> | null {
    return this.queue;
  }

  /** Forget the current queue (its connection is being failed): returns it, for closing. */
  drop(): Promise<InitiatorQueue> | null {
    const q = this.queue;
    this.queue = null;
    return q;
  }

  private connect(): Promise<InitiatorQueue> {
    const host = this.host;
    if (!host.hasFeature(VIRTIO_F_ADMIN_VQ)) {
      return Promise.reject(new VofConnectionError(`${host.url()}: the device has no admin virtqueue (VIRTIO_F_ADMIN_VQ not negotiated)`));
    }
    const unusable = host.unusable();
    if (unusable) return Promise.reject(unusable);
    if (this.queue === null) {
      const attempt = (async () => {
        await host.whenUsable();
        this.index = await this.findIndex();
        return host.openQueue(this.index);
      })();
      this.queue = attempt;
      // A failed attempt may be retried by the next call. Only this attempt is forgotten: one
      // that fails after a path failure dropped it must not clear a newer attempt's queue
      // (which would then never be closed).
      attempt.catch(() => {
        if (this.queue === attempt) this.queue = null;
      });
    }
    return this.queue;
  }

  /**
   * The admin queue is the last virtqueue (docs/PROTOCOL.md): the largest index Get VQ Size
   * answers. Found by doubling then bisecting, from the virtqueues known to exist.
   */
  private async findIndex(): Promise<number> {
    const exists = async (vqIndex: number) => (await this.host.control().call({ opcode: Opcode.GetVqSize, vqIndex })).status === Status.SUCCESS;
    let lo = this.host.virtqueuesConnected() - 1; // known to exist (or -1)
    let hi = Math.max(1, this.host.virtqueuesConnected());
    while (hi <= 0xffff && (await exists(hi))) {
      lo = hi;
      hi *= 2;
    }
    hi = Math.min(hi, 0x10000);
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (await exists(mid)) lo = mid;
      else hi = mid;
    }
    if (lo < 0) throw new VofConnectionError('Get VQ Size answers for no virtqueue: no admin queue');
    return lo;
  }
}
