#!/usr/bin/env bash
# Keyed (RDMA) against stream (TCP) data transfers through vof, on the same soft-RoCE machine,
# with perftest's ib_write_bw on the same rxe device as the raw-verbs yardstick.
# Run where rxe exists:  npm run build && npm run rxe -- bash bench/rdma-vs-tcp.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-3}
addr=${VOF_RDMA_ADDR:?run through npm run rxe (VOF_RDMA_ADDR unset)}
dev=${VOF_RDMA_DEV:-rxe0}
cases=${VOF_BENCH_CASES:-4k:1,4k:16,64k:8,1m:4}

echo "== raw verbs: ib_write_bw -d $dev, 1 MiB and 4 KiB messages, ${secs} s each"
for size in 1048576 4096; do
  ib_write_bw -d "$dev" -s "$size" -D "$secs" -F -p 18515 >/tmp/vof-bench-srv.$$ 2>&1 &
  srv=$!
  sleep 2
  ib_write_bw -d "$dev" -s "$size" -D "$secs" -F -p 18515 "$addr" | grep -E '^\s+[0-9]+\s+[0-9]+' || true
  wait "$srv" || true
done
rm -f /tmp/vof-bench-srv.$$

echo "== vof virtio-blk over RDMA (keyed)"
node bench/blk-bench.mjs --listen "rdma://$addr:0" --seconds "$secs" --disk-mib 64 --cases "$cases"
echo "== vof virtio-blk over TCP loopback (stream), same machine"
node bench/blk-bench.mjs --listen tcp://127.0.0.1:0 --seconds "$secs" --disk-mib 64 --cases "$cases"
