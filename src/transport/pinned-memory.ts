/**
 * Buffers an initiator's owner keeps for a long time and wants moved with no copy (RemoteDevice.
 * pinMemory): VDUSE's IOVA mappings, a long-lived I/O arena. Transport-neutral: a keyed
 * transport registers every pinned buffer once in each protection domain its connections use
 * (and again in the domain of a new connection after a reconnect) and deregisters it on
 * release; a stream transport never looks, so pinning there costs nothing.
 *
 * Registration grants the target nothing by itself (keyed transports register with local
 * access and memory-window binding only): each request still binds its own windows and they die
 * with it.
 */

/** One pinned buffer, until release(). */
export interface PinHandle {
  readonly buffer: Buffer;
  /** Stops its registration (at once, or when the last transfer using it has completed). Idempotent. */
  release(): void;
}

/** Where pinned buffers are registered: one per protection domain (keyed transports). */
export interface PinDomain {
  /** Register `buf` (may throw: the owner hears of it through onRegistrationFailed, and the buffer's bytes are copied). */
  add(buf: Buffer): void;
  /** Deregister `buf` (once no transfer uses it). */
  remove(buf: Buffer): void;
}

/**
 * How VQ bytes moved on keyed connections that carry pinned buffers (cumulative, across
 * reconnects). Every byte of a command is counted once, in one of the three.
 */
export interface KeyedTransferStats {
  /** Moved by the NIC straight from or into registered memory (a pinned buffer, allocateBuffer): no copy. */
  inPlaceBytes: number;
  /** Copied through the connection's bounce memory: outside every registered buffer, or too many pieces for the target's keyed descriptors. */
  bouncedBytes: number;
  /** Device-readable bytes sent inline in the command's SEND (vof inline data, chosen for small requests: no RDMA READ for the target). */
  inlineBytes: number;
  /** Of the inline bytes, those the NIC read straight from registered memory (the SEND's second scatter-gather entry): not copied. */
  inlineInPlaceBytes: number;
  /** Commands with at least one bounced byte. */
  bouncedCommands: number;
}

export class PinnedMemory {
  private readonly buffers = new Set<Buffer>();
  private readonly domains = new Set<PinDomain>();
  readonly stats: KeyedTransferStats = { inPlaceBytes: 0, bouncedBytes: 0, inlineBytes: 0, inlineInPlaceBytes: 0, bouncedCommands: 0 };
  /** Told when a domain could not register a pinned buffer (its bytes are then bounced). */
  onRegistrationFailed: ((buf: Buffer, err: Error) => void) | null = null;

  /** Pin `buf` (a Buffer the caller keeps valid until release()). */
  pin(buf: Buffer): PinHandle {
    if (buf.length === 0) throw new RangeError('pinMemory: an empty buffer');
    if (this.buffers.has(buf)) throw new Error('pinMemory: this Buffer is pinned already');
    this.buffers.add(buf);
    for (const d of this.domains) this.addTo(d, buf);
    let released = false;
    return {
      buffer: buf,
      release: () => {
        if (released) return;
        released = true;
        this.buffers.delete(buf);
        for (const d of this.domains) d.remove(buf);
      },
    };
  }

  /** Buffers pinned now. */
  get size(): number {
    return this.buffers.size;
  }

  /** A domain joins: every pinned buffer is registered there now, later ones as they come. Returns its leave(). */
  attach(domain: PinDomain): () => void {
    this.domains.add(domain);
    for (const buf of this.buffers) this.addTo(domain, buf);
    return () => {
      if (!this.domains.delete(domain)) return;
      for (const buf of this.buffers) domain.remove(buf);
    };
  }

  private addTo(domain: PinDomain, buf: Buffer): void {
    try {
      domain.add(buf);
    } catch (err) {
      this.onRegistrationFailed?.(buf, err as Error);
    }
  }
}
