#!/bin/bash
# Probe: does rxe work inside network namespaces? Two namespaces joined by a veth, an rxe device
# on each end, then rping (RDMA CM) and ib_write_bw (verbs, GID 1) from one to the other. Run
# in the soft-RoCE VM (a fresh one per mode: the netns mode of the RDMA subsystem is global):
#   npm run rxe -- --vm --timeout 600 bash scripts/rxe/probe-netns.sh shared|exclusive
# Results on Debian 12's kernels are in docs/SOFT-ROCE.md ("Multiple hosts and network
# namespaces"). Uses 10.178.0.0/24 inside the VM only.
mode=${1:-shared}
echo "kernel $(uname -r), rdma netns mode $mode"
step() {
  echo "+ $*"
  "$@" 2>&1 | sed 's/^/    /'
  echo "    exit ${PIPESTATUS[0]}"
}
[ "$mode" = exclusive ] && step rdma system set netns exclusive
step rdma system show
for n in a b; do ip netns add "ns$n"; ip -n "ns$n" link set lo up; done
ip link add va type veth peer name vb
ip link set va netns nsa
ip link set vb netns nsb
ip -n nsa addr add 10.178.0.1/24 dev va; ip -n nsa link set va up
ip -n nsb addr add 10.178.0.2/24 dev vb; ip -n nsb link set vb up
step ip netns exec nsa rdma link add rxea type rxe netdev va
step ip netns exec nsb rdma link add rxeb type rxe netdev vb
if [ "$mode" = exclusive ]; then
  # In exclusive mode a device is seen only in its namespace: move each to its netdev's.
  step rdma dev set rxea netns nsa
  step rdma dev set rxeb netns nsb
fi
step ip netns exec nsb rdma link show
step ip netns exec nsb ibv_devices
ip netns exec nsa timeout 120 rping -s -a 10.178.0.1 -p 7471 -C 2 -S 64 >/tmp/probe-netns-rping.out 2>&1 &
srv=$!
# Wait (bounded) for its CM id to listen: under TCG a fixed sleep is not enough.
for _ in $(seq 60); do
  ip netns exec nsa rdma res show cm_id 2>/dev/null | grep LISTEN | grep -q rping && break
  sleep 0.5
done
step ip netns exec nsb timeout 60 rping -c -a 10.178.0.1 -p 7471 -C 2 -S 64 -v
kill "$srv" 2>/dev/null; wait "$srv" 2>/dev/null
echo "rping server: $(tr '\n' ' ' </tmp/probe-netns-rping.out | head -c 200)"
ip netns exec nsa timeout 120 ib_write_bw -d rxea -x 1 -s 65536 -n 200 -F >/tmp/probe-netns-bw.out 2>&1 &
srv=$!
sleep 3
step ip netns exec nsb timeout 60 ib_write_bw -d rxeb -x 1 -s 65536 -n 200 -F 10.178.0.1
kill "$srv" 2>/dev/null; wait "$srv" 2>/dev/null
rm -f /tmp/probe-netns-rping.out /tmp/probe-netns-bw.out
