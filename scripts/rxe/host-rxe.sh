#!/usr/bin/env bash
# Soft-RoCE (rdma_rxe) setup for a Linux host whose kernel has rdma_rxe ("host mode").
# Also used inside the throwaway VM (guest-init.sh) and by test/rdma/harness.test.ts.
#
#   host-rxe.sh up   [--name RXE] [--netdev IF | --dummy IF] [--addr CIDR] [--mtu N] [--netns NS]
#   host-rxe.sh down [--name RXE] [--dummy IF] [--netns NS]
#   host-rxe.sh check           # explain whether rxe can be set up here; exit 0 if it can
#
# `up` is idempotent: an rxe device that already sits on the netdev is reused. Without
# --netdev/--dummy it uses the netdev of the default route. --dummy creates a dummy netdev (a
# private address that needs no cabling: RDMA between processes of this host works over it).
# On success it prints KEY=VALUE lines on stdout (RXE_DEV, RXE_NETDEV, RXE_ADDR, RXE_GID,
# RXE_GID_INDEX); everything meant for people goes to stderr. Every failure it knows of is
# explained (missing module, missing CAP_NET_ADMIN, container without /dev/infiniband).
# `down` removes the rxe device and, with --dummy, the dummy netdev; it is a no-op when they
# are already gone.
set -euo pipefail

prog=host-rxe.sh
say() { echo "$prog: $*" >&2; }
fail() {
  say "ERROR: $*"
  exit 1
}

cmd=${1:-}
[ $# -gt 0 ] && shift
name=rxe0 netdev= dummy= addr= mtu= netns=
while [ $# -gt 0 ]; do
  case "$1" in
    --name) name=$2; shift 2 ;;
    --netdev) netdev=$2; shift 2 ;;
    --dummy) dummy=$2; shift 2 ;;
    --addr) addr=$2; shift 2 ;;
    --mtu) mtu=$2; shift 2 ;;
    --netns) netns=$2; shift 2 ;;
    *) fail "unknown argument '$1' (see the header of $0)" ;;
  esac
done

# Commands that act on netdevs run inside --netns when given. The RDMA netlink commands do
# "rdma link add" looks the netdev up in the namespace it runs in, so it runs there too.
inns() { if [ -n "$netns" ]; then ip netns exec "$netns" "$@"; else "$@"; fi; }

has_cap_net_admin() {
  # CAP_NET_ADMIN is bit 12 of the effective capability mask.
  local eff
  eff=$(awk '/^CapEff:/ {print $2}' /proc/self/status 2>/dev/null) || return 1
  [ -n "$eff" ] && (( (16#$eff >> 12) & 1 ))
}

in_container() {
  [ -f /.dockerenv ] || [ -f /run/.containerenv ] || grep -qaE 'docker|containerd|kubepods|lxc|podman' /proc/1/cgroup 2>/dev/null
}

need_tools() {
  command -v ip >/dev/null || fail "'ip' not found: install iproute2 (Debian: apt-get install iproute2)"
  command -v rdma >/dev/null || fail "'rdma' not found: install iproute2 (it ships the rdma tool)"
}

# modprobe MOD unless it is already loaded or built in; explain why it could not be loaded.
load_module() {
  local mod=$1 out
  [ -d "/sys/module/$mod" ] && return 0
  if ! command -v modprobe >/dev/null; then
    fail "module $mod is not loaded and modprobe is missing: install kmod, or load it on the host"
  fi
  if out=$(modprobe "$mod" 2>&1); then return 0; fi
  if ! modinfo "$mod" >/dev/null 2>&1; then
    if in_container; then
      fail "module $mod is not loaded, and this container has no modules for kernel $(uname -r).
  Load it on the host (modprobe $mod), or run the container with --privileged -v /lib/modules:/lib/modules:ro.
  No rdma_rxe at all? Use the VM mode instead: npm run rxe -- CMD (boots a kernel that has it)."
    fi
    fail "this kernel ($(uname -r)) has no $mod module ($out).
  Install the kernel's extra modules (Debian/Ubuntu: linux-modules-extra-\$(uname -r) or the distro kernel),
  or use the VM mode: npm run rxe -- CMD (boots a Debian kernel that has rdma_rxe under QEMU)."
  fi
  if in_container; then
    fail "cannot load module $mod inside this container ($out).
  Load it on the host (modprobe $mod), or give the container --privileged (CAP_SYS_MODULE)."
  fi
  fail "modprobe $mod failed: $out (loading modules needs root / CAP_SYS_MODULE)"
}

ipv4_of() { inns ip -4 -o addr show dev "$1" 2>/dev/null | awk '{print $4; exit}' | cut -d/ -f1; }

# Prints the name of the rxe device on netdev $1, if any ("link rxe0/1 state ACTIVE ... netdev dummy0").
rxe_on() {
  inns rdma link show 2>/dev/null | awk -v nd="$1" '{for (i = 1; i < NF; i++) if ($i == "netdev" && $(i+1) == nd) {split($2, a, "/"); print a[1]; exit}}'
}

check_dev_nodes() {
  if ! ls /dev/infiniband/uverbs* >/dev/null 2>&1; then
    load_module ib_uverbs
    sleep 0.2
  fi
  if ! ls /dev/infiniband/uverbs* >/dev/null 2>&1; then
    if in_container; then
      fail "rxe device '$1' exists in the kernel but /dev/infiniband/uverbs* is not visible in this container.
  Run it with --device /dev/infiniband (or -v /dev/infiniband:/dev/infiniband), or --privileged."
    fi
    fail "/dev/infiniband/uverbs* is missing although ib_uverbs is loaded: is /dev a devtmpfs (mount -t devtmpfs devtmpfs /dev)?"
  fi
}

print_info() {
  local dev=$1 nd=$2 a gid= gidx= i f state
  a=$(ipv4_of "$nd")
  # The port goes ACTIVE and the GID table fills asynchronously after `rdma link add`.
  for i in $(seq 1 100); do
    state=$(cat "/sys/class/infiniband/$dev/ports/1/state" 2>/dev/null || true)
    if [ -n "$a" ]; then
      for f in /sys/class/infiniband/"$dev"/ports/1/gids/*; do
        [ "$(cat "$f" 2>/dev/null)" = "$(printf '0000:0000:0000:0000:0000:ffff:%02x%02x:%02x%02x' ${a//./ })" ] || continue
        gid=$(cat "$f"); gidx=${f##*/}; break
      done
    else
      gid=$(cat "/sys/class/infiniband/$dev/ports/1/gids/0" 2>/dev/null || true); gidx=0
    fi
    case "$state" in *ACTIVE*) [ -n "$gid" ] && break ;; esac
    sleep 0.1
  done
  case "$state" in
    *ACTIVE*) ;;
    *) fail "rxe device $dev on $nd is not ACTIVE (port state '$state'): is $nd up with carrier?" ;;
  esac
  [ -n "$gid" ] || fail "rxe device $dev on $nd has no GID for address '${a:-none}' yet"
  say "rxe device $dev on netdev $nd (${a:-no IPv4}) is ACTIVE, GID[$gidx] $gid"
  echo "RXE_DEV=$dev"
  echo "RXE_NETDEV=$nd"
  echo "RXE_ADDR=$a"
  echo "RXE_GID=$gid"
  echo "RXE_GID_INDEX=$gidx"
}

do_check() {
  [ "$(uname -s)" = Linux ] || fail "soft-RoCE needs Linux; use the VM mode elsewhere (npm run rxe -- CMD)"
  need_tools
  has_cap_net_admin || fail "creating an rxe device needs CAP_NET_ADMIN: run as root, or give the container --cap-add NET_ADMIN"
  load_module rdma_rxe
  # rxe computes its ICRC with the kernel crypto API; without a crc32 provider
  # `rdma link add` fails with "failed to init crc32 algorithm err:-2".
  [ -d /sys/module/crc32_generic ] || modprobe crc32_generic 2>/dev/null \
    || say "warning: could not load crc32_generic; rdma link add may fail with 'failed to init crc32 algorithm'"
}

# Creates dummy netdev $1 unless it exists. Loading the dummy module creates numdummies (default 1)
# netdevs dummy0.. by itself unless modprobe.d says otherwise (systemd ships "options dummy
# numdummies=0"; a clean root without systemd does not), so the module autoloaded by
# `ip link add dummy0 type dummy` would make that add fail with "File exists". Load it first
# without any; a dummy netdev of that name that exists anyway (built-in module, a racing set-up)
# is taken as ours, as when it existed before.
add_dummy() {
  local d=$1 out
  inns ip link show "$d" >/dev/null 2>&1 && return 0
  [ -d /sys/module/dummy ] || modprobe dummy numdummies=0 2>/dev/null || true
  out=$(inns ip link add "$d" type dummy 2>&1) && return 0
  inns ip -d link show "$d" 2>/dev/null | grep -qw dummy \
    || fail "ip link add $d type dummy failed: $out"
  say "dummy netdev $d already existed (created by the dummy module itself?): using it"
}

do_up() {
  do_check
  if [ -n "$dummy" ]; then
    [ -z "$netdev" ] || fail "--netdev and --dummy exclude each other"
    add_dummy "$dummy"
    netdev=$dummy
  fi
  if [ -z "$netdev" ]; then
    netdev=$(inns ip -4 route show default 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i+1); exit}}')
    [ -n "$netdev" ] || fail "no --netdev given and no default route to take it from: pass --netdev IF or --dummy IF"
    say "using the default route's netdev $netdev"
  fi
  inns ip link show "$netdev" >/dev/null 2>&1 || fail "netdev $netdev does not exist${netns:+ in netns $netns}"
  # MTU 9000 lets rxe use active_mtu 4096 (it picks the largest IB MTU below the netdev's).
  [ -z "$mtu" ] || inns ip link set dev "$netdev" mtu "$mtu"
  if [ -n "$addr" ] && ! inns ip -4 -o addr show dev "$netdev" | grep -q " ${addr%/*}/"; then
    inns ip addr add "$addr" dev "$netdev"
  fi
  inns ip link set dev "$netdev" up
  local existing out
  existing=$(rxe_on "$netdev")
  if [ -n "$existing" ]; then
    [ "$existing" = "$name" ] || say "netdev $netdev already has rxe device $existing; reusing it instead of creating $name"
    name=$existing
  elif [ -e "/sys/class/infiniband/$name" ]; then
    fail "an RDMA device named $name already exists on another netdev: pick another --name"
  else
    if ! out=$(inns rdma link add "$name" type rxe netdev "$netdev" 2>&1); then
      if dmesg 2>/dev/null | tail -n 20 | grep -q 'failed to init crc32'; then
        fail "rdma link add failed ($out): the kernel has no crc32 crypto provider; modprobe crc32_generic"
      fi
      fail "rdma link add $name type rxe netdev $netdev failed: $out"
    fi
  fi
  check_dev_nodes "$name"
  print_info "$name" "$netdev"
}

do_down() {
  need_tools
  if [ -e "/sys/class/infiniband/$name" ]; then
    rdma link delete "$name" || fail "rdma link delete $name failed"
    say "removed rxe device $name"
  fi
  if [ -n "$dummy" ] && inns ip link show "$dummy" >/dev/null 2>&1; then
    inns ip link delete "$dummy"
    say "removed dummy netdev $dummy"
  fi
}

case "$cmd" in
  up) do_up ;;
  down) do_down ;;
  check) do_check; say "rdma_rxe is available and can be set up here" ;;
  *) fail "usage: $prog up|down|check [--name RXE] [--netdev IF | --dummy IF] [--addr CIDR] [--mtu N] [--netns NS]" ;;
esac
