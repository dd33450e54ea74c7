import { defineConfig } from 'vitest/config';

// Host suite. The RDMA suite (test/rdma) runs where rxe exists: see vitest.rdma.config.ts.
export default defineConfig({
  test: {
    include: ['test/*.test.ts'],
    testTimeout: 30000,
    hookTimeout: 30000,
    pool: 'forks',
    globalSetup: ['test/global-setup.ts'],
  },
});
