import { OldestFirstAdmission } from '../util/oldest-first-admission.js';

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

  private static key(tvqn: string, ivqn: string): string {
    // NUL cannot occur in a VQN (DECISIONS.md item 6), so the pair key is unambiguous.
    return `${tvqn}\0${ivqn}`;
  }

  /** Why one more instance of `tvqn` for `ivqn` is refused, or null when it fits. */
  refusal(tvqn: string, ivqn: string, exportLimit = this.limits.instancesPerExport): string | null {
    const e = this.perExport.get(tvqn) ?? 0;
    if (e >= exportLimit) return `export has ${e} instances, its limit`;
    const i = this.perIvqn.get(InstanceQuota.key(tvqn, ivqn)) ?? 0;
    if (i >= this.limits.instancesPerIvqn) return `this IVQN has ${i} instances of the export, its limit`;
    return null;
  }

  add(tvqn: string, ivqn: string): void {
    this.perExport.set(tvqn, (this.perExport.get(tvqn) ?? 0) + 1);
    const k = InstanceQuota.key(tvqn, ivqn);
    this.perIvqn.set(k, (this.perIvqn.get(k) ?? 0) + 1);
  }

  remove(tvqn: string, ivqn: string): void {
    const dec = (m: Map<string, number>, k: string) => {
      const n = (m.get(k) ?? 0) - 1;
      if (n > 0) m.set(k, n);
      else m.delete(k);
    };
    dec(this.perExport, tvqn);
    dec(this.perIvqn, InstanceQuota.key(tvqn, ivqn));
  }
}

/**
 * Connections that have not completed Connect, counted per peer host and in total; at a limit
 * the oldest such connection is closed to make room (see OldestFirstAdmission).
 */
export class UnboundConnections<C> extends OldestFirstAdmission<C> {
  constructor(limits: QuotaLimits) {
    super({ total: limits.unboundConnections, perHost: limits.unboundPerHost });
  }
}
