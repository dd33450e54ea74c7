import type { AdmissionLimits } from '../util/oldest-first-admission.js';

/**
 * Resource limits that keep one export's users from locking out another's (docs/PROTOCOL.md,
 * "Quotas"). Instances are counted per export and per (export, IVQN), never globally, so
 * instances of export Y never make a Connect to export X fail. Connections that have not yet
 * completed Connect ("unbound") are counted per peer host and in total.
 */
export interface QuotaLimits {
  /** Live instances of one export (ENODEV beyond). */
  readonly instancesPerExport: number;
  /** Live instances of one export created under one IVQN (ENODEV beyond). */
  readonly instancesPerIvqn: number;
  /** Unbound connections in total; beyond it the oldest unbound connection is closed. */
  readonly unboundConnections: number;
  /** Unbound connections from one peer host; beyond it that host's oldest one is closed. */
  readonly unboundPerHost: number;
}

export const DEFAULT_QUOTAS: QuotaLimits = {
  instancesPerExport: 256,
  instancesPerIvqn: 64,
  unboundConnections: 1024,
  unboundPerHost: 128,
};

/** Validate a partial set of limits (positive integers) and fill in the defaults. */
export function resolveQuotas(partial: Partial<QuotaLimits> = {}): QuotaLimits {
  const out = { ...DEFAULT_QUOTAS, ...partial };
  for (const [k, v] of Object.entries(out)) {
    if (!Number.isInteger(v) || v < 1) throw new Error(`quota ${k} must be a positive integer, got ${String(v)}`);
  }
  return out;
}

/** Live instances per export and per (export, IVQN). */
export class InstanceQuota {
  private readonly perExport = new Map<string, number>();
  private readonly perIvqn = new Map<string, number>();

  constructor(private readonly limits: QuotaLimits) {}

  private static key(tvqn: string, claimant: string): string {
    // NUL cannot occur in a VQN (DECISIONS.md item 6), so the pair key is unambiguous.
    return `${tvqn}\0${claimant}`;
  }

  /**
   * Who an instance counts against under the per-IVQN limit: the IVQN as far as the peer proved
   * it. With a TLS identity, the IVQN from that identity; without one, the IVQN from that host.
   * A peer that merely claims another's IVQN fills its own count, never the real owner's.
   */
  static claimant(ivqn: string, identity: string | undefined, host: string): string {
    return identity !== undefined ? `${ivqn}\0identity\0${identity}` : `${ivqn}\0host\0${host}`;
  }

  /** Why one more instance of `tvqn` for `claimant` (see claimant()) is refused, or null when it fits. */
  refusal(tvqn: string, claimant: string, exportLimit = this.limits.instancesPerExport): string | null {
    const e = this.perExport.get(tvqn) ?? 0;
    if (e >= exportLimit) return `export has ${e} instances, its limit`;
    const i = this.perIvqn.get(InstanceQuota.key(tvqn, claimant)) ?? 0;
    if (i >= this.limits.instancesPerIvqn) return `this IVQN has ${i} instances of the export from this peer, its limit`;
    return null;
  }

  add(tvqn: string, claimant: string): void {
    this.perExport.set(tvqn, (this.perExport.get(tvqn) ?? 0) + 1);
    const k = InstanceQuota.key(tvqn, claimant);
    this.perIvqn.set(k, (this.perIvqn.get(k) ?? 0) + 1);
  }

  remove(tvqn: string, claimant: string): void {
    const dec = (m: Map<string, number>, k: string) => {
      const n = (m.get(k) ?? 0) - 1;
      if (n > 0) m.set(k, n);
      else m.delete(k);
    };
    dec(this.perExport, tvqn);
    dec(this.perIvqn, InstanceQuota.key(tvqn, claimant));
  }
}

/**
 * Connections that have not completed Connect, counted per peer host and in total (see
 * OldestFirstAdmission): the same limits count TLS handshakes still in progress.
 */
export function unboundLimits(limits: QuotaLimits): AdmissionLimits {
  return { total: limits.unboundConnections, perHost: limits.unboundPerHost };
}
