#!/bin/bash
# Probe of an rxe bug, with rping alone (no vof): does RDMA CM connect again after a connect was
# attempted while the rxe netdev was down? Run in the soft-RoCE VM, which has rxe0 on dummy0:
#   npm run rxe -- --vm --timeout 900 bash scripts/rxe/probe-link-down.sh
# Prints one line per step with rping's exit code (124: timed out). On Debian 12's 6.1 and
# 6.12 kernels every connect after "while down" fails until the rxe device is re-created (see
# test/rdma/faults-rdma.test.ts above linkFaults). Takes minutes under TCG (each failing step
# waits 45 s).
A=${VOF_RDMA_ADDR:-10.177.0.1}
DEV=${VOF_RDMA_DEV:-rxe0}
NETDEV=$(cat "/sys/class/infiniband/$DEV/ports/1/gid_attrs/ndevs/0" 2>/dev/null || echo dummy0)
echo "kernel $(uname -r), $DEV on $NETDEV ($A)"
# Starts a persistent rping server and waits (bounded) until its CM id listens: under TCG a
# fixed sleep is not enough, and a client that comes too early is rejected.
server() {
  timeout 900 rping -s -P -a "$A" -p 7471 -S 64 >/tmp/probe-rping-srv.out 2>&1 &
  srv=$!
  for _ in $(seq 60); do
    rdma res show cm_id 2>/dev/null | grep LISTEN | grep -q rping && return
    sleep 0.5
  done
  echo "(the rping server did not listen within 30 s)"
}
try() {
  local t0
  t0=$(date +%s)
  timeout 45 rping -c -a "$A" -p 7471 -C 2 -S 64 >/tmp/probe-rping.out 2>&1
  local rc=$?
  echo "[$1] rping client exit $rc after $(($(date +%s) - t0)) s: $(tr '\n' ' ' </tmp/probe-rping.out | head -c 160)"
}
server
try "before any fault"
ip link set "$NETDEV" down; sleep 2; ip link set "$NETDEV" up; sleep 2
try "after a down/up with no connect while down"
ip link set "$NETDEV" down; sleep 1
try "while down"
ip link set "$NETDEV" up; sleep 3
try "3 s after up"
sleep 20
try "23 s after up"
ip neigh flush all
try "after ip neigh flush all"
ip link set "$NETDEV" down; sleep 2; ip link set "$NETDEV" up; sleep 2
try "after another down/up"
echo "GSI QP: $(rdma res show qp | grep -m1 'type GSI')"
kill "$srv" 2>/dev/null; wait "$srv" 2>/dev/null
timeout 30 rdma link delete "$DEV"; echo "rdma link delete $DEV: exit $?"
rdma link add "$DEV" type rxe netdev "$NETDEV"; sleep 3
server
try "after the rxe device was re-created"
kill "$srv" 2>/dev/null; wait "$srv" 2>/dev/null
rm -f /tmp/probe-rping.out /tmp/probe-rping-srv.out
