import { defineConfig } from 'vitest/config';

// RDMA suite: runs only where an rxe (or real RDMA) device exists, normally inside the
// soft-RoCE VM through scripts/rxe/rdma-suite.mjs. Under TCG everything is ~19x slower,
// hence the generous timeouts and one file at a time.
export default defineConfig({
  test: {
    include: ['test/rdma/**/*.test.ts'],
    testTimeout: 600000,
    hookTimeout: 600000,
    pool: 'forks',
    fileParallelism: false,
  },
});
