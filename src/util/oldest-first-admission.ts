/** How many waiting connections may be held: in total, and from one peer host. */
export interface AdmissionLimits {
  readonly total: number;
  readonly perHost: number;
}

/**
 * Connections that are not doing anything useful yet (a TLS handshake in progress, no Connect
 * yet), counted from their first byte. A well-behaved peer moves on at once, so the oldest
 * waiting connection is the likeliest to be idle (or an attacker's): when a limit is reached,
 * the oldest connection it counts is closed to make room, and the new one is always admitted.
 * An allowed initiator therefore always gets in, even next to a process on its own host that
 * keeps opening connections. The per-host limit keeps one host from filling the total by
 * itself and pushing other hosts' connections out.
 */
export class OldestFirstAdmission<C> {
  // Map iteration order is insertion order: the first entries are the oldest.
  private readonly pending = new Map<C, string>();
  private readonly perHost = new Map<string, number>();

  constructor(private readonly limits: AdmissionLimits) {}

  get size(): number {
    return this.pending.size;
  }

  /** Admit a new waiting connection from `host`; returns the connections to close to make room. */
  admit(conn: C, host: string): C[] {
    const evict: C[] = [];
    if ((this.perHost.get(host) ?? 0) >= this.limits.perHost) {
      for (const [old, h] of this.pending) {
        if (h !== host) continue;
        evict.push(old);
        this.settle(old);
        if ((this.perHost.get(host) ?? 0) < this.limits.perHost) break;
      }
    }
    for (const old of this.pending.keys()) {
      if (this.pending.size < this.limits.total) break;
      evict.push(old);
      this.settle(old);
    }
    this.pending.set(conn, host);
    this.perHost.set(host, (this.perHost.get(host) ?? 0) + 1);
    return evict;
  }

  /** The connection moved on (or closed): it no longer counts. Idempotent. */
  settle(conn: C): void {
    const host = this.pending.get(conn);
    if (host === undefined) return;
    this.pending.delete(conn);
    const n = (this.perHost.get(host) ?? 1) - 1;
    if (n > 0) this.perHost.set(host, n);
    else this.perHost.delete(host);
  }
}
