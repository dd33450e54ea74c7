#!/usr/bin/env bash
# Several soft-RoCE "hosts" on one kernel: N rxe devices rxe1..rxeN, each on its own veth end
# vofI-eth (address SUBNET.I/24, MTU 9000), all ends wired to one bridge vofbr0, so RDMA
# traffic between them really crosses a (virtual) wire rather than a loopback shortcut.
#
#   hosts.sh up N [--env FILE] [--prefix vof] [--subnet 10.177.0]
#   hosts.sh down N [--prefix vof]
#
# Why no network namespaces: rdma_rxe of Debian 12's kernels (6.1 and 6.12, see docs/SOFT-ROCE.md) opens
# its UDP 4791 socket in the initial namespace only, so an rxe device on a netdev inside
# another namespace never receives anything (tried: ib_write_bw between rxe devices in netns
# vof1/vof2 fails with completion errors), and rdma_cm in a namespace finds no RDMA device
# for its netdevs either. So every "host" lives in the initial namespace and is told apart by
# its address and device; policy routing makes traffic between two local addresses leave on
# the sender's veth instead of the kernel's loopback shortcut:
#   - the local table moves from rule priority 0 to 1000;
#   - rule "from SUBNET.I iif lo" (locally generated, priority 100+I) -> table 100+I, which
#     routes SUBNET.0/24 out of vofI-eth;
#   - incoming packets (iif vofJ-eth) fall through to the local table and are delivered;
#   - accept_local lets a packet whose source is a local address in; static neighbour
#     entries replace ARP between local addresses (and wrong ARP answers from other ends).
#
# `up` is idempotent and prints (and with --env appends to FILE) the exports VOF_RDMA_ADDRS,
# VOF_RDMA_DEVS (space separated, host 1 first) and VOF_RDMA_ADDR/VOF_RDMA_DEV of host 1.
# `down` removes all of it; it is a no-op for what is already gone. Needs root and a kernel
# with rdma_rxe: run it inside the VM (npm run rxe) or on a capable host.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
prog=hosts.sh
fail() {
  echo "$prog: ERROR: $*" >&2
  exit 1
}
usage="usage: $prog up|down N [--env FILE] [--prefix vof] [--subnet 10.177.0]"

cmd=${1:-}
n=${2:-}
[ $# -ge 2 ] || fail "$usage"
shift 2
[[ $n =~ ^[1-9][0-9]?$ ]] || fail "N must be a number from 1 to 99, got '$n'"
env_file= prefix=vof subnet=10.177.0
while [ $# -gt 0 ]; do
  case "$1" in
    --env) env_file=$2; shift 2 ;;
    --prefix) prefix=$2; shift 2 ;;
    --subnet) subnet=$2; shift 2 ;;
    *) fail "unknown argument '$1'; $usage" ;;
  esac
done
[[ $subnet =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || fail "--subnet takes three octets like 10.177.0, got '$subnet'"
br=${prefix}br0
# rxe device names: rxeI for the default prefix (as documented), PREFIXrxeI otherwise.
rxe_name() { if [ "$prefix" = vof ]; then echo "rxe$1"; else echo "${prefix}rxe$1"; fi; }
table() { echo $((100 + $1)); }

up() {
  command -v ip >/dev/null || fail "'ip' not found: install iproute2"
  sysctl -qw net.ipv4.conf.all.accept_local=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
  # Move the local table behind our rules (once; both steps are idempotent).
  ip rule show pref 1000 | grep -q 'lookup local' || ip rule add pref 1000 lookup local
  ip rule show pref 0 | grep -q 'lookup local' && ip rule del pref 0 lookup local
  ip link show "$br" >/dev/null 2>&1 || ip link add "$br" mtu 9000 type bridge
  ip link set "$br" mtu 9000 up
  local i j eth peer addrs= devs= out
  for i in $(seq 1 "$n"); do
    eth=$prefix$i-eth peer=$prefix$i-br
    ip link show "$eth" >/dev/null 2>&1 || ip link add "$eth" mtu 9000 type veth peer name "$peer" mtu 9000
    ip link set "$peer" master "$br" mtu 9000 up
    sysctl -qw "net.ipv4.conf.$eth.accept_local=1" "net.ipv4.conf.$eth.rp_filter=0"
    out=$(bash "$here/host-rxe.sh" up --netdev "$eth" --addr "$subnet.$i/24" --mtu 9000 --name "$(rxe_name "$i")")
    eval "$out"
    ip route replace "$subnet.0/24" dev "$eth" src "$subnet.$i" table "$(table "$i")"
    ip rule show pref "$(table "$i")" | grep -q . || ip rule add pref "$(table "$i")" from "$subnet.$i" iif lo lookup "$(table "$i")"
    addrs="$addrs $RXE_ADDR" devs="$devs $RXE_DEV"
  done
  # Static neighbours: every end knows every other end's MAC.
  for i in $(seq 1 "$n"); do
    for j in $(seq 1 "$n"); do
      [ "$i" = "$j" ] && continue
      ip neigh replace "$subnet.$j" lladdr "$(cat "/sys/class/net/$prefix$j-eth/address")" dev "$prefix$i-eth" nud permanent
    done
  done
  addrs=${addrs# } devs=${devs# }
  local lines
  lines=$(printf '%s\n' "export VOF_RDMA_ADDRS='$addrs'" "export VOF_RDMA_DEVS='$devs'" \
    "export VOF_RDMA_ADDR=${addrs%% *}" "export VOF_RDMA_DEV=${devs%% *}")
  echo "$lines"
  [ -z "$env_file" ] || echo "$lines" >>"$env_file"
}

down() {
  local i
  for i in $(seq 1 "$n"); do
    bash "$here/host-rxe.sh" down --name "$(rxe_name "$i")" >/dev/null
    while ip rule show pref "$(table "$i")" | grep -q .; do ip rule del pref "$(table "$i")"; done
    ip route flush table "$(table "$i")" 2>/dev/null || true
    # Deleting one veth end deletes its peer on the bridge too.
    if ip link show "$prefix$i-eth" >/dev/null 2>&1; then ip link delete "$prefix$i-eth"; fi
  done
  if ip link show "$br" >/dev/null 2>&1; then ip link delete "$br"; fi
  # The local-table move stays: it is harmless (same lookups, just later) and other hosts'
  # setups of this kind may still rely on it.
  return 0
}

case "$cmd" in
  up) up ;;
  down) down ;;
  *) fail "$usage" ;;
esac
