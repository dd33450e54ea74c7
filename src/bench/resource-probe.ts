import { readFileSync } from 'node:fs';
import { controlRequest } from '../target/control-client.js';
import { loadedNativeBinding } from '../transport/rdma/native-binding.js';
import { round } from './cpu.js';
import type { ResourceUse } from './types.js';

/** Resident set size of a process in MiB from /proc/PID/status; null if it is gone. */
export function processRssMiB(pid: number): number | null {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : null;
  } catch {
    return null;
  }
}

function initiatorRegistrations(): number | null {
  const n = (loadedNativeBinding()?.resourceCounts() as { registrationsTotal?: number } | undefined)?.registrationsTotal;
  return typeof n === 'number' ? n : null;
}

async function targetRegistrations(controlPath: string | null): Promise<number | null> {
  if (!controlPath) return null;
  try {
    const reply = await controlRequest(controlPath, { op: 'stats' }, 5000);
    return typeof reply.registrationsTotal === 'number' ? reply.registrationsTotal : null;
  } catch {
    return null;
  }
}

/**
 * Watches one measurement: memory registrations made by the target and by this process between
 * start() and stop(), and the target's RSS sampled by sample() (the workload's progress ticker).
 */
export class ResourceProbe {
  private target0: number | null = null;
  private initiator0: number | null = null;
  private rss: { start: number; peak: number; end: number } | null = null;

  constructor(
    private readonly targetPid: number | null,
    private readonly controlPath: string | null,
  ) {}

  async start(): Promise<void> {
    this.target0 = await targetRegistrations(this.controlPath);
    this.initiator0 = initiatorRegistrations();
    const r = this.targetPid === null ? null : processRssMiB(this.targetPid);
    this.rss = r === null ? null : { start: r, peak: r, end: r };
  }

  sample(): void {
    if (!this.rss || this.targetPid === null) return;
    const r = processRssMiB(this.targetPid);
    if (r === null) return;
    this.rss.peak = Math.max(this.rss.peak, r);
    this.rss.end = r;
  }

  async stop(): Promise<ResourceUse> {
    this.sample();
    const t1 = await targetRegistrations(this.controlPath);
    const i1 = initiatorRegistrations();
    return {
      targetRegistrations: this.target0 === null || t1 === null ? null : t1 - this.target0,
      initiatorRegistrations: this.initiator0 === null || i1 === null ? null : i1 - this.initiator0,
      targetRssMiB: this.rss && { start: round(this.rss.start), peak: round(this.rss.peak), end: round(this.rss.end) },
    };
  }
}
