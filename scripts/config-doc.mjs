#!/usr/bin/env node
// Rewrites docs/CONFIG.md from the --config schema (src/cli/target-config.ts); run after `npm run build`.
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { configDoc } from '../dist/cli/config-doc.js';

writeFileSync(fileURLToPath(new URL('../docs/CONFIG.md', import.meta.url)), configDoc());
