/** The rxe address the harness gives the RDMA suite (scripts/rxe sets VOF_RDMA_ADDR). */
export function rdmaAddress(): string {
  const addr = process.env['VOF_RDMA_ADDR'];
  if (!addr) throw new Error('VOF_RDMA_ADDR is not set: run the RDMA suite through `npm run rxe` or scripts/rxe/rdma-suite.mjs');
  return addr;
}

/** Polls `cond` until it holds; RDMA teardown is event-driven and slow under TCG. */
export async function waitFor(what: string, cond: () => boolean, timeoutMs = 60000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
