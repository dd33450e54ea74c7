#!/bin/busybox sh
# Stage 1 of the soft-RoCE VM (runs as /init inside the initramfs, under busybox).
#
# Its only job is to get the host's root file system mounted over virtio-9p and hand over to
# stage 2 (scripts/rxe/guest-init.sh, read from the host checkout, so editing it never needs an
# initramfs rebuild). Debian's stock kernel has virtio/9p as modules, so they are insmod-ed
# here from /mods in the dependency order that vm.mjs wrote into /mods/order.
#
# The kernel console is not on any serial port (cmdline has no console=), so nothing the kernel
# says reaches the caller. ttyS1 is the caller's stderr: any failure here is reported there.
/bin/busybox mkdir -p /bin /proc /sys /dev /newroot
/bin/busybox --install -s /bin
export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# The serial ports carry the inner command's raw bytes: no \n -> \r\n translation, no echo.
stty -F /dev/ttyS0 raw -echo 2>/dev/null
stty -F /dev/ttyS1 raw -echo 2>/dev/null
exec </dev/null >/dev/ttyS1 2>&1

die() {
  echo "vof-rxe guest (initramfs): $*"
  # Tell the host why; the host notices the missing status file and fails the run. The serial
  # port needs a moment to send the line: a power-off right away can drop it.
  sleep 1
  echo o >/proc/sysrq-trigger
  sleep 10
}

run=
msize=512000
cache=loose
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    vof.run=*) run="${arg#vof.run=}" ;;
    vof.msize=*) msize="${arg#vof.msize=}" ;;
    vof.cache=*) cache="${arg#vof.cache=}" ;;
  esac
done
[ -n "$run" ] || die "no vof.run= on the kernel command line"

for m in $(cat /mods/order); do
  insmod "/mods/$m.ko" || die "insmod $m failed"
done

mount -t 9p -o "trans=virtio,version=9p2000.L,msize=$msize,cache=$cache" hostroot /newroot \
  || die "mounting the host root over virtio-9p failed"
[ -f "/newroot$run/boot.sh" ] || die "$run/boot.sh is not visible through 9p"

# Hand the kernel file systems over; stage 2 mounts the rest (/run, /dev/shm, /dev/pts, ...).
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
exec switch_root /newroot /bin/sh "$run/boot.sh"
