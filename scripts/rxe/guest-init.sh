#!/bin/sh
# Stage 2 of the soft-RoCE VM: PID 1 after switch_root onto the host's root file system (9p).
# Started by $VOF_GUEST_RUN/boot.sh, which vm.mjs writes and which sources config.sh first.
#
# It makes the guest usable (tmpfs /run and /dev/shm, devpts, the cached kernel's modules via
# modprobe wrappers, loopback up), sets up the rxe device(s) with host-rxe.sh / hosts.sh, runs the
# command with the caller's environment and working directory, writes its exit code to
# $VOF_GUEST_RUN/status and powers the VM off. It is PID 1: it must never exit (the kernel would
# panic), so every path ends in poweroff().
#
# Output: the command's stdout is ttyS0 and its stderr ttyS1, both relayed by the host runner to
# its own stdout/stderr. Everything of the setup goes to $VOF_GUEST_RUN/setup.log, which the
# runner shows only when the setup failed (or with --verbose).

run=$VOF_GUEST_RUN
exec </dev/null >>"$run/setup.log" 2>&1

poweroff_now() {
  # sync, bounded: a block device whose I/O hangs (a test's failure) would hang a plain sync
  # forever, and the VM with it, until the runner's timeout.
  sync &
  s=$!
  i=0
  while [ $i -lt 100 ] && kill -0 "$s" 2>/dev/null; do
    sleep 0.1
    i=$((i + 1))
  done
  # sysrq 'o' powers off at once; it works from /proc whatever kernel.sysrq says.
  echo o >/proc/sysrq-trigger
  sleep 60
}

fail() {
  echo "vof-rxe guest: setup failed: $*"
  echo "setup-failed" >"$run/status.tmp" && mv "$run/status.tmp" "$run/status"
  poweroff_now
}

echo "vof-rxe guest: kernel $(uname -r), $(nproc) CPUs"

# The host's /run (and /dev/shm) must not be touched: the guest gets its own, empty ones.
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run || fail "mount /run"
mkdir -p /dev/shm /dev/pts /dev/mqueue
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm || fail "mount /dev/shm"
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts || fail "mount /dev/pts"
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
[ -e /dev/stdin ] || ln -s /proc/self/fd/0 /dev/stdin
[ -e /dev/stdout ] || ln -s /proc/self/fd/1 /dev/stdout
[ -e /dev/stderr ] || ln -s /proc/self/fd/2 /dev/stderr

# The host's /lib/modules has no modules for this kernel (it may not even exist, and the guest
# must not create anything there). modprobe/modinfo wrappers that point at the cached kernel
# tree go first in PATH, and the kernel's own module autoloading uses the same wrapper.
mkdir -p /run/vof-bin
for tool in modprobe modinfo; do
  real=$(command -v "$tool") || fail "$tool not found (apt-get install kmod)"
  flag=-d
  [ "$tool" = modinfo ] && flag=-b
  printf '#!/bin/sh\nexec %s %s %s "$@"\n' "$real" "$flag" "$VOF_GUEST_KROOT" >"/run/vof-bin/$tool"
  chmod 755 "/run/vof-bin/$tool"
done
echo /run/vof-bin/modprobe >/proc/sys/kernel/modprobe
export PATH="/run/vof-bin:$PATH"
modprobe -n rdma_rxe || fail "the cached kernel tree $VOF_GUEST_KROOT has no rdma_rxe"

hostname vof-rxe 2>/dev/null || true
ip link set lo up || fail "ip link set lo up"
# Entropy for programs that ask early (node, openssl): the virtio RNG feeds the kernel pool.
modprobe virtio_rng 2>/dev/null || true

scripts=$VOF_GUEST_SCRIPTS
env_file=$run/rdma-env.sh
: >"$env_file"
if [ "${VOF_GUEST_HOSTS:-1}" -le 1 ]; then
  out=$(bash "$scripts/host-rxe.sh" up --name rxe0 --dummy dummy0 --addr 10.177.0.1/24 --mtu 9000) \
    || fail "host-rxe.sh up (see above)"
  echo "$out"
  eval "$out"
  {
    echo "export VOF_RDMA_DEV=$RXE_DEV"
    echo "export VOF_RDMA_ADDR=$RXE_ADDR"
    echo "export VOF_RDMA_GID=$RXE_GID"
    echo "export VOF_RDMA_GID_INDEX=$RXE_GID_INDEX"
  } >>"$env_file"
else
  bash "$scripts/hosts.sh" up "$VOF_GUEST_HOSTS" --env "$env_file" || fail "hosts.sh up $VOF_GUEST_HOSTS (see above)"
fi
cat "$env_file"
echo "vof-rxe guest: setup done after $(cut -d' ' -f1 /proc/uptime) s of uptime"

# The caller's environment (selected variables), then the rxe facts.
. "$run/env.sh"
. "$env_file"
export PATH="/run/vof-bin:$PATH"
cd "$VOF_GUEST_CWD" || fail "cd $VOF_GUEST_CWD"

# stdout/stderr of the command are a terminal only if the runner's were (like running it
# directly); otherwise they are pipes, relayed to the serial ports by cat.
relays=
# relay FLAG FIFO PORT: sets $path to what the command writes to: PORT itself when the runner's
# stream is a terminal (FLAG 1), else FIFO, relayed to PORT.
relay() {
  if [ "$1" = 1 ]; then
    path=$3
    return
  fi
  mkfifo "$2" || fail "mkfifo $2"
  cat "$2" >"$3" &
  relays="$relays $!"
  path=$2
}
relay "${VOF_GUEST_STDOUT_TTY:-0}" /run/vof-out /dev/ttyS0
out=$path
relay "${VOF_GUEST_STDERR_TTY:-0}" /run/vof-err /dev/ttyS1
err=$path

# setsid: the command runs in its own session, without a controlling terminal, as under CI.
setsid -w sh "$run/cmd.sh" </dev/null >"$out" 2>"$err"
rc=$?
echo "vof-rxe guest: command exited with $rc after $(cut -d' ' -f1 /proc/uptime) s of uptime"
# The relaying cats end when the command's last writer closes the fifo. A daemon the command
# left behind may keep it open: give up waiting after 5 s rather than hang.
i=0
while [ $i -lt 500 ]; do
  alive=
  for p in $relays; do
    # A finished cat stays a zombie (PID 1 reaps nothing here): state Z counts as done.
    st=Z
    [ -r "/proc/$p/stat" ] && read -r _ _ st _ <"/proc/$p/stat"
    [ "$st" = Z ] || alive=1
  done
  [ -z "$alive" ] && break
  sleep 0.01
  i=$((i + 1))
done
# A command killed by a signal (a crash: 139 is SIGSEGV) says too little on its own, and the VM
# and its log are gone afterwards: the kernel's lines about fatal signals (which process, the
# faulting address and instruction pointer, the mapping it was in) go to the caller's stderr.
if [ "$rc" -ge 128 ]; then
  {
    echo "vof-rxe guest: the command ended with $rc (signal $((rc - 128))); the kernel's log of crashes:"
    dmesg 2>/dev/null | grep -E 'segfault at|traps:|general protection|invalid opcode|Code: |potentially unexpected fatal signal|Out of memory|Killed process' | tail -n 40
  } >/dev/ttyS1 2>&1
fi
# The last close of a serial port waits until its buffer has gone out: nothing is lost.
: >/dev/ttyS0
: >/dev/ttyS1
echo "$rc" >"$run/status.tmp" && mv "$run/status.tmp" "$run/status"
poweroff_now
