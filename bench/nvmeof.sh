#!/usr/bin/env bash
# The kernel's NVMe-oF target (nvmet) and host on one machine, for `vof bench --anchors` inside
# the soft-RoCE VM (scripts/rxe). Needs root, configfs and the nvmet / nvme-fabrics modules.
#
#   bench/nvmeof.sh up rdma|tcp ADDR FILE [PORT]   export FILE (buffered, page cache like vof's
#                                                  file backend) as namespace 1 of a subsystem on
#                                                  ADDR:PORT (default 4420), connect the kernel's
#                                                  host to it, print the block device (/dev/nvmeXnY)
#   bench/nvmeof.sh down                           disconnect and remove what `up` made
#
# Configfs layout (Documentation/nvme/nvmet in the kernel tree; nvmetcli does the same steps):
#   /sys/kernel/config/nvmet/subsystems/NQN/{attr_allow_any_host, namespaces/1/{device_path,buffered_io,enable}}
#   /sys/kernel/config/nvmet/ports/N/{addr_trtype,addr_adrfam,addr_traddr,addr_trsvcid,subsystems/NQN -> ...}
set -euo pipefail
NQN=nqn.2026-11.io.vof:bench
CFG=/sys/kernel/config
PORTID=1

die() { echo "nvmeof.sh: $*" >&2; exit 1; }

down() {
  nvme disconnect -n "$NQN" >/dev/null 2>&1 || true
  local n=$CFG/nvmet
  [ -d "$n" ] || return 0
  rm -f "$n/ports/$PORTID/subsystems/$NQN" 2>/dev/null || true
  [ -d "$n/ports/$PORTID" ] && rmdir "$n/ports/$PORTID" 2>/dev/null || true
  if [ -d "$n/subsystems/$NQN" ]; then
    [ -d "$n/subsystems/$NQN/namespaces/1" ] && { echo 0 >"$n/subsystems/$NQN/namespaces/1/enable" || true; rmdir "$n/subsystems/$NQN/namespaces/1"; }
    rmdir "$n/subsystems/$NQN"
  fi
}

up() {
  local trtype=$1 addr=$2 file=$3 port=${4:-4420}
  [ "$(id -u)" = 0 ] || die "needs root (configfs and module loading)"
  [ -f "$file" ] || die "no such file: $file"
  command -v nvme >/dev/null || die "nvme-cli is missing (apt-get install nvme-cli)"
  case $trtype in
    rdma) modprobe nvmet-rdma && modprobe nvme-rdma ;;
    tcp) modprobe nvmet-tcp && modprobe nvme-tcp ;;
    *) die "transport must be rdma or tcp, not $trtype" ;;
  esac || die "cannot load the nvmet-$trtype / nvme-$trtype modules"
  mountpoint -q $CFG || mount -t configfs none $CFG || die "cannot mount configfs on $CFG"
  [ -d $CFG/nvmet ] || die "$CFG/nvmet missing after loading nvmet"
  down

  local s=$CFG/nvmet/subsystems/$NQN
  mkdir "$s"
  echo 1 >"$s/attr_allow_any_host"
  mkdir "$s/namespaces/1"
  echo -n "$file" >"$s/namespaces/1/device_path"
  echo 1 >"$s/namespaces/1/buffered_io"
  echo 1 >"$s/namespaces/1/enable"

  local p=$CFG/nvmet/ports/$PORTID
  mkdir "$p"
  echo "$trtype" >"$p/addr_trtype"
  echo ipv4 >"$p/addr_adrfam"
  echo "$addr" >"$p/addr_traddr"
  echo "$port" >"$p/addr_trsvcid"
  ln -s "$s" "$p/subsystems/$NQN"

  nvme connect -t "$trtype" -a "$addr" -s "$port" -n "$NQN" >&2 || die "nvme connect -t $trtype -a $addr -s $port failed"
  # The namespace's block device whose subsystem NQN is ours (with or without native multipath).
  local i b dev=
  for i in $(seq 1 100); do
    for b in /sys/block/nvme*n*; do
      # nvmeXcYnZ are the hidden per-path devices of native multipath: take the head nvmeXnY.
      [[ -e "$b" && $(basename "$b") =~ ^nvme[0-9]+n[0-9]+$ ]] || continue
      for f in "$b/device/subsysnqn" "$b/device/../subsysnqn"; do
        if [ -e "$f" ] && [ "$(cat "$f")" = "$NQN" ]; then dev=/dev/$(basename "$b"); break 2; fi
      done
    done
    [ -n "$dev" ] && [ -b "$dev" ] && { echo "$dev"; return 0; }
    sleep 0.1
  done
  die "connected, but no block device of $NQN appeared"
}

case ${1:-} in
  up) shift; [ $# -ge 3 ] || die "usage: nvmeof.sh up rdma|tcp ADDR FILE [PORT]"; up "$@" ;;
  down) down ;;
  *) die "usage: nvmeof.sh up rdma|tcp ADDR FILE [PORT] | down" ;;
esac
