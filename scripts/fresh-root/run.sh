#!/usr/bin/env bash
# Runs a command in a clean Debian 12 root, the way a newcomer's fresh machine looks: a minimal
# debootstrap of bookworm, this host's Node copied in, and nothing else of this project's tools
# (no rdma-core, no compiler, no test tools). The root is a throwaway overlay on a cached base,
# so every run starts clean and nothing it installs survives it.
#
#   scripts/fresh-root/run.sh [--keep] [CMD...]
#
# CMD runs as root in a clean clone of this checkout's HEAD (/root/vof inside the root); without
# CMD it runs the README's quick start and test command: `npm install && npm run demo` then
# `npm test`. VOF_* variables are passed through (CI sets VOF_REQUIRE_ALL=1 VOF_REQUIRE_RDMA=1).
#
# What a fresh machine has besides packages is copied in from this host, as any machine here
# has it: the system CA bundle, npm's settings (registry, cafile, nodedir for node-gyp without
# downloads, with Node's headers from the nodejs package), apt's sources and settings,
# /etc/hosts, /etc/resolv.conf. Cached between runs under $VOF_FRESH_ROOT_CACHE (default
# ~/.cache/vof-fresh-root): the base root, downloaded .deb files, npm's cache and the soft-RoCE
# VM's kernel; never the project's build or node_modules.
#
# Isolation: bubblewrap (pivot_root into a private mount namespace, not chroot), so that tests
# needing `unshare -m` (test/no-rdma-core.test.ts) run inside as they would on a real machine.
# Needs root, debootstrap and bubblewrap (installed with apt-get when missing).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${VOF_FRESH_ROOT_CACHE:-$HOME/.cache/vof-fresh-root}
MIRROR=${VOF_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
KEEP=0
if [ "${1:-}" = --keep ]; then KEEP=1; shift; fi

say() { echo "vof-fresh-root: $*" >&2; }
die() { say "$*"; exit 125; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, mounts); run it as root"
missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v bwrap >/dev/null || missing+=(bubblewrap)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
fi

mkdir -p "$CACHE"
# One lock per cache: two runs share the base and the caches, never build them at once.
exec 9>"$CACHE/.lock"
flock 9

base=$CACHE/$SUITE
if [ ! -e "$base/.vof-complete" ]; then
  say "debootstrap --variant=minbase $SUITE (once; cached in $base)"
  rm -rf "$base.tmp"
  debootstrap --variant=minbase "$SUITE" "$base.tmp" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
    die "debootstrap failed; see $CACHE/debootstrap.log"
  rm -rf "$base.tmp/var/cache/apt/archives/"*.deb
  touch "$base.tmp/.vof-complete"
  rm -rf "$base" && mv "$base.tmp" "$base"
fi

# This host's Node as a second layer: node, npm, npx, corepack and Node's headers (node-gyp's
# `nodedir`) from where they are installed. Rebuilt when the version changes.
node_version=$(node -p process.version)
nodelayer=$CACHE/node-$node_version
if [ ! -e "$nodelayer/.vof-complete" ]; then
  say "copying this host's Node $node_version"
  rm -rf "$nodelayer.tmp" && mkdir -p "$nodelayer.tmp"
  prefix=$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")
  parts=()
  for p in bin/node bin/npm bin/npx bin/corepack lib/node_modules/npm lib/node_modules/corepack include/node; do
    if [ -e "$prefix/$p" ] || [ -L "$prefix/$p" ]; then parts+=("${prefix#/}/$p"); fi
  done
  tar -C / -cf - "${parts[@]}" | tar -C "$nodelayer.tmp" -xf -
  [ -x "$nodelayer.tmp$prefix/bin/node" ] || die "could not copy node from $prefix"
  touch "$nodelayer.tmp/.vof-complete"
  rm -rf "$nodelayer" && mv "$nodelayer.tmp" "$nodelayer"
fi

mkdir -p "$CACHE/apt-archives/partial" "$CACHE/npm" "$CACHE/vof-rxe"
run=$(mktemp -d /var/tmp/vof-fresh-root.XXXXXX)
cleanup() {
  if [ "$KEEP" = 1 ]; then say "kept the root's changes in $run/upper"; else rm -rf "$run"; fi
}
trap cleanup EXIT
mkdir -p "$run/upper" "$run/work" "$run/root"

# A clean clone of HEAD: what is committed, nothing of this checkout's build.
git clone -q --no-hardlinks "$REPO" "$run/clone"
git -C "$run/clone" checkout -q "$(git -C "$REPO" rev-parse HEAD)"

if [ $# -eq 0 ]; then
  set -- sh -c 'npm install && npm run demo && npm test'
fi
envs=()
for v in $(compgen -e); do
  case $v in VOF_*) envs+=(--setenv "$v" "${!v}") ;; esac
done

# The mounts live in a private mount namespace: they disappear with it, even on a crash.
unshare --mount --propagation private -- bash -s -- "$@" <<EOF
set -euo pipefail
root="$run/root"
mount -t overlay overlay -o lowerdir="$nodelayer:$base",upperdir="$run/upper",workdir="$run/work" "\$root"
# What every machine here has besides packages.
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "\$root/etc/ssl/certs/ca-certificates.crt"
for f in /etc/npmrc /usr/etc/npmrc /root/.npmrc /etc/hosts /etc/resolv.conf /etc/apt/sources.list; do
  [ -f "\$f" ] && install -D -m 0644 "\$f" "\$root\$f"
done
rm -f "\$root/etc/apt/sources.list.d/"* 2>/dev/null || true
for d in /etc/apt/sources.list.d /etc/apt/apt.conf.d /etc/apt/auth.conf.d /etc/apt/keyrings; do
  [ -d "\$d" ] && mkdir -p "\$root\$d" && cp -a "\$d/." "\$root\$d/"
done
cp -a /usr/share/keyrings/. "\$root/usr/share/keyrings/" 2>/dev/null || true
# apt in the root keeps its .debs in the shared cache (no docker-clean hook deleting them).
rm -f "\$root/etc/apt/apt.conf.d/docker-clean"
mkdir -p "\$root/root/vof" "\$root/root/.npm" "\$root/root/.cache/vof-rxe" "\$root/var/cache/apt/archives"
exec bwrap \
  --bind "\$root" / \
  --dev-bind /dev /dev --proc /proc --bind /sys /sys --tmpfs /run \
  --bind "$run/clone" /root/vof \
  --bind "$CACHE/apt-archives" /var/cache/apt/archives \
  --bind "$CACHE/npm" /root/.npm \
  --bind "$CACHE/vof-rxe" /root/.cache/vof-rxe \
  --unshare-pid --unshare-ipc --unshare-uts --die-with-parent \
  --clearenv --setenv HOME /root --setenv PATH /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --setenv LANG C.UTF-8 --setenv TERM dumb --setenv VOF_IN_FRESH_ROOT 1 ${envs[*]@Q} \
  --chdir /root/vof \
  -- "\$@"
EOF
