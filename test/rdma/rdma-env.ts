/** The rxe address the harness gives the RDMA suite (scripts/rxe sets VOF_RDMA_ADDR). */
export function rdmaAddress(): string {
  const addr = process.env['VOF_RDMA_ADDR'];
  if (!addr) throw new Error('VOF_RDMA_ADDR is not set: run the RDMA suite through `npm run rxe` or scripts/rxe/rdma-suite.mjs');
  return addr;
}

