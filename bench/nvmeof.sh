#!/usr/bin/env bash
# The kernel's NVMe-oF target (nvmet) and host on one machine, for `vof bench --anchors` inside
# the soft-RoCE VM (scripts/rxe). Needs root, configfs and the nvmet / nvme-fabrics modules.
#
#   bench/nvmeof.sh up rdma|tcp ADDR BACKING PORT NAME
#       BACKING is FILE (exported buffered, page cache like vof's file backend) or null:MIB (a
#       null_blk device of MIB MiB made through null_blk's configfs, like vof's null:SIZE: reads
#       complete without data, writes are dropped). It becomes namespace 1 of the subsystem
#       nqn.2026-11.io.vof:NAME on ADDR:PORT; the kernel's host connects to it and the block
#       device (/dev/nvmeXnY) is printed.
#   bench/nvmeof.sh down NAME
#       disconnects and removes what `up ... NAME` made (also its null_blk device).
#
# Each NAME has its own subsystem NQN, nvmet port (numbered PORT) and null_blk device, so several
# systems (nvmeof-rdma, nvmeof-tcp, nvmeof-rdma-null, ...) are up at once and `up`/`down` of one
# never touches another's controller. Give each a different PORT.
#
# Configfs layout (Documentation/nvme/nvmet and Documentation/block/null_blk in the kernel tree;
# nvmetcli does the same steps):
#   /sys/kernel/config/nvmet/subsystems/NQN/{attr_allow_any_host, namespaces/1/{device_path,buffered_io,enable}}
#   /sys/kernel/config/nvmet/ports/N/{addr_trtype,addr_adrfam,addr_traddr,addr_trsvcid,subsystems/NQN -> ...}
#   /sys/kernel/config/nullb/NAME/{size (MiB),blocksize,index,power}
set -euo pipefail
CFG=/sys/kernel/config

die() { echo "nvmeof.sh: $*" >&2; exit 1; }

check_name() { [[ ${1:-} =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,40}$ ]] || die "NAME must be letters, digits, . _ - (got '${1:-}')"; }

down() {
  local name=$1 nqn=nqn.2026-11.io.vof:$1
  nvme disconnect -n "$nqn" >/dev/null 2>&1 || true
  local n=$CFG/nvmet
  if [ -d "$n" ]; then
    # Our subsystem's links, on whichever port; a port left with no subsystem goes too.
    local link port
    for link in "$n"/ports/*/subsystems/"$nqn"; do
      [ -L "$link" ] || continue
      port=${link%/subsystems/*}
      rm -f "$link"
      [ -z "$(ls -A "$port/subsystems")" ] && rmdir "$port" 2>/dev/null || true
    done
    if [ -d "$n/subsystems/$nqn" ]; then
      [ -d "$n/subsystems/$nqn/namespaces/1" ] && { echo 0 >"$n/subsystems/$nqn/namespaces/1/enable" || true; rmdir "$n/subsystems/$nqn/namespaces/1"; }
      rmdir "$n/subsystems/$nqn"
    fi
  fi
  local nb=$CFG/nullb/vof-$name
  if [ -d "$nb" ]; then
    echo 0 >"$nb/power" 2>/dev/null || true
    rmdir "$nb"
  fi
}

# Makes the null_blk device vof-NAME of MIB MiB (512-byte blocks, as vof's null:SIZE) and prints its path.
null_device() {
  local name=$1 mib=$2
  [[ $mib =~ ^[1-9][0-9]*$ ]] || die "null: takes a size in MiB (got '$mib')"
  # nr_devices=0: no default nullb0 when the module loads here; ours is made through configfs.
  [ -d /sys/module/null_blk ] || modprobe null_blk nr_devices=0 || die "cannot load null_blk"
  [ -d $CFG/nullb ] || die "$CFG/nullb missing: this null_blk has no configfs interface"
  local nb=$CFG/nullb/vof-$name
  mkdir "$nb"
  echo "$mib" >"$nb/size"
  echo 512 >"$nb/blocksize"
  echo 1 >"$nb/power"
  # The disk is nullb<index> (or, on kernels that name it after the configfs item, vof-NAME).
  local dev
  for dev in "/dev/vof-$name" "/dev/nullb$(cat "$nb/index")"; do
    [ -b "$dev" ] && { echo "$dev"; return 0; }
  done
  die "null_blk device vof-$name is powered on but has no block device"
}

up() {
  local trtype=$1 addr=$2 backing=$3 port=$4 name=$5 nqn=nqn.2026-11.io.vof:$5
  check_name "$name"
  [[ $port =~ ^[1-9][0-9]{0,4}$ ]] && [ "$port" -le 65535 ] || die "PORT must be 1..65535 (got '$port')"
  [ "$(id -u)" = 0 ] || die "needs root (configfs and module loading)"
  command -v nvme >/dev/null || die "nvme-cli is missing (apt-get install nvme-cli)"
  case $trtype in
    rdma) modprobe nvmet-rdma && modprobe nvme-rdma ;;
    tcp) modprobe nvmet-tcp && modprobe nvme-tcp ;;
    *) die "transport must be rdma or tcp, not $trtype" ;;
  esac || die "cannot load the nvmet-$trtype / nvme-$trtype modules"
  mountpoint -q $CFG || mount -t configfs none $CFG || die "cannot mount configfs on $CFG"
  [ -d $CFG/nvmet ] || die "$CFG/nvmet missing after loading nvmet"
  # Leftovers of this NAME only (a run that died): other NAMEs are other systems, still in use.
  down "$name"
  [ -e "$CFG/nvmet/ports/$port" ] && die "nvmet port $port is in use by another subsystem; give each NAME its own PORT"

  local path buffered=1
  case $backing in
    null:*) path=$(null_device "$name" "${backing#null:}") buffered=0 ;;
    *) [ -f "$backing" ] || die "no such file: $backing"; path=$backing ;;
  esac

  local s=$CFG/nvmet/subsystems/$nqn
  mkdir "$s"
  echo 1 >"$s/attr_allow_any_host"
  mkdir "$s/namespaces/1"
  echo -n "$path" >"$s/namespaces/1/device_path"
  # buffered_io is for file namespaces; a block device (null_blk) is nvmet's bdev backend.
  [ $buffered = 1 ] && echo 1 >"$s/namespaces/1/buffered_io"
  echo 1 >"$s/namespaces/1/enable"

  local p=$CFG/nvmet/ports/$port
  mkdir "$p"
  echo "$trtype" >"$p/addr_trtype"
  echo ipv4 >"$p/addr_adrfam"
  echo "$addr" >"$p/addr_traddr"
  echo "$port" >"$p/addr_trsvcid"
  ln -s "$s" "$p/subsystems/$nqn"

  nvme connect -t "$trtype" -a "$addr" -s "$port" -n "$nqn" >&2 || die "nvme connect -t $trtype -a $addr -s $port failed"
  # The namespace's block device whose subsystem NQN is ours (with or without native multipath).
  local i b f dev=
  for i in $(seq 1 100); do
    for b in /sys/block/nvme*n*; do
      # nvmeXcYnZ are the hidden per-path devices of native multipath: take the head nvmeXnY.
      [[ -e "$b" && $(basename "$b") =~ ^nvme[0-9]+n[0-9]+$ ]] || continue
      for f in "$b/device/subsysnqn" "$b/device/../subsysnqn"; do
        if [ -e "$f" ] && [ "$(cat "$f")" = "$nqn" ]; then dev=/dev/$(basename "$b"); break 2; fi
      done
    done
    [ -n "$dev" ] && [ -b "$dev" ] && { echo "$dev"; return 0; }
    sleep 0.1
  done
  die "connected, but no block device of $nqn appeared"
}

usage="usage: nvmeof.sh up rdma|tcp ADDR FILE|null:MIB PORT NAME | down NAME"
case ${1:-} in
  up) shift; [ $# -eq 5 ] || die "$usage"; up "$@" ;;
  down) shift; [ $# -eq 1 ] || die "$usage"; check_name "$1"; down "$1" ;;
  *) die "$usage" ;;
esac
