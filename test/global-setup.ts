import { execFileSync } from 'node:child_process';

/** The CLI tests run the compiled `vof`: build it once before any test file. */
export default function setup(): void {
  execFileSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.json'], { stdio: 'inherit' });
}
