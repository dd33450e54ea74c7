export interface DebianPackage {
  for: string;
  commands?: string[];
  files?: string[];
}
export interface DebianDeps {
  packages: Record<string, DebianPackage>;
  groups: Record<string, { for: string; packages: string[] }>;
}
export interface Probe {
  installed: Set<string> | null;
  hasCommand: (cmd: string) => boolean;
  hasFile: (file: string) => boolean;
}
export interface EnsureResult {
  wanted: string[];
  installed: string[];
  missing: string[];
  impossible: string | null;
  error: string | null;
}
export interface TestDeps {
  ok: boolean;
  reason: string | null;
  skipNote: string;
}
export declare const DEPS: DebianDeps;
export declare function groupPackages(groups: readonly string[]): string[];
export declare function parseDpkgStatus(stdout: string): Set<string>;
export declare function which(cmd: string): string | null;
export declare function hasCommand(cmd: string): boolean;
export declare function isDry(env?: NodeJS.ProcessEnv): boolean;
export declare function requireAll(env?: NodeJS.ProcessEnv): boolean;
export declare function systemProbe(pkgs: readonly string[], env?: NodeJS.ProcessEnv): Probe;
export declare function missingPackages(pkgs: readonly string[], probe: Probe): string[];
export declare function installImpossible(env?: NodeJS.ProcessEnv, opts?: { uid?: number; apt?: boolean }): string | null;
export declare function installCommand(pkgs: readonly string[]): string;
export declare function describePackages(pkgs: readonly string[]): string;
export declare function purposes(pkgs: readonly string[], groups?: readonly string[]): string;
export declare function aptUpdate(): void;
export declare function aptInstall(pkgs: readonly string[]): void;
export declare function ensurePackages(
  groups: readonly string[],
  opts?: { who?: string; log?: (line: string) => void; env?: NodeJS.ProcessEnv },
): EnsureResult;
export declare function frame(lines: readonly string[]): string;
export declare function skipBanner(o: { what: string; missing: readonly string[]; problem?: string | null; impossible?: string | null; required?: boolean }): string;
export declare function checkTestDeps(
  what: string,
  groups: readonly string[],
  opts?: {
    problem?: (() => string | null) | null;
    env?: NodeJS.ProcessEnv;
    probe?: Probe | null;
    impossible?: string | null;
    write?: (s: string) => void;
  },
): TestDeps;
export declare function skipSummary(logText: string): string;
