import type { ChildProcess } from 'node:child_process';
export declare const VOF_CLI: string;
export interface StartedTarget {
  child: ChildProcess;
  urls: string[];
  stderr: () => string;
  stop: () => Promise<number | null>;
}
export declare function startTarget(
  args: string[],
  opts?: { lines?: number; stderr?: 'inherit' | 'pipe'; timeoutMs?: number; nodeArgs?: string[] },
): Promise<StartedTarget>;
