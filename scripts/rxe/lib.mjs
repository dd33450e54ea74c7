// Soft-RoCE harness: shared logic of `npm run rxe` (run.mjs) and the RDMA suite (rdma-suite.mjs).
//
// Two ways to get an rxe device for a command:
//  - direct: this host already has an ACTIVE RDMA port and usable /dev/infiniband (checked by
//    hostRdma()); the command simply runs here.
//  - VM: a throwaway QEMU guest (TCG, Debian's stock kernel, which has rdma_rxe) whose root file
//    system is this host's, shared read-write over virtio-9p, so the command sees the checkout at
//    the same path, the same node, node_modules and /tmp. Kernel and initramfs are fetched from
//    the Debian archive on first use and cached outside the repo (VOF_RXE_CACHE, default
//    ~/.cache/vof-rxe). The guest has no network device at all (-nic none): nothing leaves it.
//
// Guest protocol (see initramfs-init.sh and guest-init.sh): the runner makes a run directory in
// the host's temp dir (visible to the guest at the same path) holding boot.sh, config.sh,
// env.sh (the passed-through environment) and cmd.sh (the command); the guest writes
// setup.log and finally `status` (the exit code, or "setup-failed"). The command's stdout and
// stderr travel on ttyS0/ttyS1, which QEMU connects to two unix sockets this process listens on;
// the kernel console is on neither, so no kernel noise reaches the caller.
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { aptUpdate, ensurePackages, installCommand, which } from '../debian-deps.mjs';

export const SCRIPTS_DIR = path.dirname(fileURLToPath(import.meta.url));
export const REPO_DIR = path.resolve(SCRIPTS_DIR, '../..');
export const CACHE_DIR = process.env.VOF_RXE_CACHE || path.join(os.homedir(), '.cache', 'vof-rxe');
export const DEFAULT_TIMEOUT_SEC = 1800;
export const EXIT_TIMEOUT = 124;
// The VM ran but could not set up rxe or start the command (like `docker run`'s 125).
export const EXIT_HARNESS = 125;

const isVerbose = () => /^(1|true|yes)$/i.test(process.env.VOF_RXE_VERBOSE || '');

/** A reason why no rxe environment can be provided at all (not a failure of the command). */
export class RxeUnavailable extends Error {}

export function log(msg) {
  process.stderr.write(`vof-rxe: ${msg}\n`);
}
function debug(msg) {
  if (isVerbose()) log(msg);
}

function sh(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', ...opts });
  return { code: r.error ? -1 : r.status, stdout: r.stdout || '', stderr: (r.stderr || '') + (r.error ? String(r.error) : '') };
}

// ---------------------------------------------------------------------------------------------
// Direct mode: is there a usable RDMA device on this host?

/**
 * Returns { ok: true, dev, netdev, addr } when this host has an RDMA device whose port is ACTIVE,
 * /dev/infiniband/uverbs* exists and ibv_devices lists the device; else { ok: false, reason }.
 */
export function hostRdma() {
  const ibdir = '/sys/class/infiniband';
  let devs = [];
  try {
    devs = fs.readdirSync(ibdir);
  } catch {
    return { ok: false, reason: 'no /sys/class/infiniband (kernel without RDMA, or no rdma_rxe loaded)' };
  }
  const want = process.env.VOF_RDMA_DEV;
  const active = devs.filter((d) => {
    if (want && d !== want) return false;
    try {
      return fs.readdirSync(path.join(ibdir, d, 'ports')).some((p) =>
        fs.readFileSync(path.join(ibdir, d, 'ports', p, 'state'), 'utf8').includes('ACTIVE'),
      );
    } catch {
      return false;
    }
  });
  if (active.length === 0) return { ok: false, reason: `no RDMA device with an ACTIVE port in ${ibdir} (${devs.join(', ') || 'empty'})` };
  let uverbs = [];
  try {
    uverbs = fs.readdirSync('/dev/infiniband').filter((f) => f.startsWith('uverbs'));
  } catch {
    /* handled below */
  }
  if (uverbs.length === 0) {
    return { ok: false, reason: `RDMA device ${active[0]} exists but /dev/infiniband/uverbs* does not (container without --device /dev/infiniband?)` };
  }
  const r = sh('ibv_devices', []);
  if (r.code !== 0) return { ok: false, reason: `ibv_devices failed (${r.code}): ${r.stderr.trim() || 'is ibverbs-utils installed?'}` };
  const dev = active.find((d) => new RegExp(`^\\s*${d}\\s`, 'm').test(r.stdout));
  if (!dev) return { ok: false, reason: `ibv_devices does not list ${active.join('/')} (missing ibverbs-providers?)` };
  let netdev = '';
  let addr = '';
  try {
    netdev = fs.readFileSync(path.join(ibdir, dev, 'ports', '1', 'gid_attrs', 'ndevs', '0'), 'utf8').trim();
    const a = sh('ip', ['-4', '-o', 'addr', 'show', 'dev', netdev]).stdout.match(/inet (\d+\.\d+\.\d+\.\d+)/);
    if (a) addr = a[1];
  } catch {
    /* optional facts */
  }
  return { ok: true, dev, netdev, addr };
}

/** Runs argv here with VOF_RDMA_DEV/VOF_RDMA_ADDR set; resolves to its exit code. */
export function runDirect(argv, info, { cwd = process.cwd() } = {}) {
  const env = { ...process.env, VOF_RDMA_DEV: info.dev };
  if (info.addr) env.VOF_RDMA_ADDR = info.addr;
  return new Promise((resolve) => {
    const child = spawn(argv[0], argv.slice(1), { stdio: 'inherit', cwd, env });
    const fwd = (sig) => child.kill(sig);
    for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(s, fwd);
    child.on('error', (e) => {
      log(`cannot run ${argv[0]}: ${e.message}`);
      resolve(e.code === 'ENOENT' ? 127 : 126);
    });
    child.on('exit', (code, sig) => resolve(code ?? 128 + (os.constants.signals[sig] || 0)));
  });
}

// ---------------------------------------------------------------------------------------------
// VM mode: host packages, kernel, initramfs.

// Debian packages, from the one list (scripts/debian-deps.json). The VM mode needs on the host
// QEMU and the initramfs tools (rxe-vm), and, since the guest's userspace *is* the host's (9p
// root), the RDMA userspace and the tools the RDMA suite drives (rdma-tests) and the addon's
// build dependencies (addon). Direct mode needs the latter two only.
export const VM_GROUPS = ['rxe-vm', 'rdma-tests', 'addon'];
export const DIRECT_GROUPS = ['rdma-tests', 'addon'];

/** Installs the missing packages of `groups` (root), or explains exactly what to install. */
export function ensureHostPackages(groups = VM_GROUPS) {
  if (process.platform !== 'linux') throw new RxeUnavailable(`the VM mode needs a Linux host (this is ${process.platform})`);
  const r = ensurePackages(groups, { who: 'vof-rxe' });
  if (r.missing.length === 0) return;
  const install = installCommand(r.missing);
  if (r.impossible) throw new RxeUnavailable(`these Debian packages are missing (${r.impossible}): ${install}`);
  throw new RxeUnavailable(`${r.error ?? 'apt-get install'}; still missing: ${r.missing.join(' ')}`);
}

// The kernel series the VM boots: VOF_RXE_KERNEL or --kernel (run.mjs, rdma-suite.mjs), as
// major.minor. 6.12 (Debian 12's bookworm-security/backports kernel) is the default: it has
// vduse, virtio_vdpa and vhost_vdpa, and none of 6.1's rxe connect-after-link-down bug (see
// docs/SOFT-ROCE.md). 6.1 (Debian 12's own kernel) stays selectable.
export const DEFAULT_KERNEL_SERIES = '6.12';

/** The kernel series to boot: `series` if given, else VOF_RXE_KERNEL, else the default. */
export function kernelSeries(series = process.env.VOF_RXE_KERNEL || DEFAULT_KERNEL_SERIES) {
  if (!/^\d+\.\d+$/.test(series)) throw new RxeUnavailable(`kernel series must be major.minor, e.g. 6.1 or 6.12 (got ${JSON.stringify(series)})`);
  return series;
}

// Compares two dotted/dashed version strings numerically, part by part ("6.12.118" > "6.12.99").
function versionCompare(a, b) {
  const pa = a.split(/[^0-9]+/).filter(Boolean).map(Number);
  const pb = b.split(/[^0-9]+/).filter(Boolean).map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? -1) - (pb[i] ?? -1);
    if (d) return d;
  }
  return 0;
}

// A versioned amd64 image of `series` (signed or not; not cloud/rt/dbg), e.g.
// linux-image-6.1.0-57-amd64 or linux-image-6.12.118+deb12-amd64; group 1 is the kernel release.
const imageRe = (series) => new RegExp(`^linux-image-(${series.replace('.', '\\.')}\\.[0-9][0-9.]*(?:-[0-9]+|\\+deb[0-9]+)-amd64)(?:-unsigned)?$`);

/**
 * The newest kernel package of `series` apt knows: what Debian's meta package of the series
 * (linux-image-6.12-amd64) or the distribution's linux-image-amd64 depends on when it is of that
 * series, else the highest versioned image name with a package record.
 */
function resolveKernelPackage(series) {
  if (process.env.VOF_RXE_KERNEL_PKG) return process.env.VOF_RXE_KERNEL_PKG;
  const re = imageRe(series);
  for (let attempt = 0; attempt < 2; attempt++) {
    for (const meta of [`linux-image-${series}-amd64`, 'linux-image-amd64']) {
      const dep = [...sh('apt-cache', ['depends', meta]).stdout.matchAll(/Depends:\s*(linux-image-\S+)/g)].map((m) => m[1]).find((p) => re.test(p));
      if (dep) return dep;
    }
    // No meta package of the series: every image name apt knows, newest first, that has a record.
    const names = sh('apt-cache', ['pkgnames', `linux-image-${series}.`]).stdout.split('\n').filter((n) => re.test(n));
    names.sort((a, b) => versionCompare(b, a) || a.length - b.length); // signed before -unsigned
    const found = names.find((n) => /^Filename:/m.test(sh('apt-cache', ['show', '--no-all-versions', n]).stdout));
    if (found) return found;
    if (attempt === 0 && process.getuid?.() === 0) {
      try {
        aptUpdate();
      } catch (e) {
        throw new RxeUnavailable(e.message);
      }
    }
  }
  throw new RxeUnavailable(`apt-cache knows no linux-image package of Linux ${series} for amd64 (run 'apt-get update' as root, pick another --kernel / VOF_RXE_KERNEL, or set VOF_RXE_KERNEL_PKG)`);
}

/**
 * Makes sure CACHE/kernel/<kver>/ holds vmlinuz and lib/modules/<kver> (with modules.dep) for a
 * kernel of `series` and returns { kver, series, vmlinuz, kroot, kdir }. A cached kernel of the
 * series is used as is (the newest, if several), without asking apt: delete its cache directory
 * to pick up a newer one.
 */
export function ensureKernel(series = kernelSeries()) {
  const base = path.join(CACHE_DIR, 'kernel');
  fs.mkdirSync(base, { recursive: true });
  const ready = fs
    .readdirSync(base)
    .filter((d) => d.startsWith(`${series}.`) && fs.existsSync(path.join(base, d, '.complete')))
    .sort(versionCompare);
  const want = process.env.VOF_RXE_KERNEL_PKG?.replace(/^linux-image-/, '').replace(/-unsigned$/, '');
  let kver = want ? ready.find((d) => d === want) : ready[ready.length - 1];
  if (!kver) {
    if (!which('apt-get') || !which('dpkg')) throw new RxeUnavailable(`no cached VM kernel of Linux ${series} and no apt-get/dpkg to fetch one`);
    const pkg = resolveKernelPackage(series);
    // The -unsigned package ships the same release (paths without "-unsigned").
    kver = pkg.replace(/^linux-image-/, '').replace(/-unsigned$/, '');
    log(`fetching ${pkg} from the Debian archive into ${base} (first run only, ~70-110 MB) ...`);
    const tmp = fs.mkdtempSync(path.join(base, '.fetch-'));
    try {
      // -o APT::Sandbox::User=root: the download dir is ours, not _apt's (avoids a warning).
      const dl = sh('apt-get', ['download', '-qq', '-o', 'APT::Sandbox::User=root', pkg], { cwd: tmp });
      if (dl.code !== 0) throw new RxeUnavailable(`apt-get download ${pkg} failed: ${dl.stderr.trim()}`);
      const deb = fs.readdirSync(tmp).find((f) => f.endsWith('.deb'));
      if (!deb) throw new RxeUnavailable(`apt-get download ${pkg} produced no .deb`);
      const root = path.join(tmp, 'root');
      const x = sh('dpkg', ['-x', path.join(tmp, deb), root]);
      if (x.code !== 0) throw new RxeUnavailable(`dpkg -x ${deb} failed: ${x.stderr.trim()}`);
      // The .deb ships no modules.dep (its postinst runs depmod): make one for modprobe.
      const d = sh('depmod', ['-b', root, kver]);
      if (d.code !== 0) throw new RxeUnavailable(`depmod -b ${root} ${kver} failed: ${d.stderr.trim()}`);
      const dest = path.join(base, kver);
      fs.rmSync(dest, { recursive: true, force: true });
      fs.mkdirSync(dest);
      fs.renameSync(path.join(root, 'boot', `vmlinuz-${kver}`), path.join(dest, 'vmlinuz'));
      fs.mkdirSync(path.join(dest, 'lib'));
      fs.renameSync(path.join(root, 'lib', 'modules'), path.join(dest, 'lib', 'modules'));
      fs.writeFileSync(path.join(dest, '.complete'), `${pkg} ${deb}\n`);
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  }
  const dir = path.join(base, kver);
  // kroot is a `modprobe -d` root: kroot/lib/modules/<kver>.
  return { kver, series, vmlinuz: path.join(dir, 'vmlinuz'), kroot: dir, kdir: path.join(dir, 'lib', 'modules', kver) };
}

// Modules stage 1 needs before it can mount the 9p root (modules in Debian's 6.1; 6.12 has
// virtio_pci built in, and 9p needs netfs there: both come from the kernel's own module lists).
const INITRAMFS_MODULES = ['virtio_pci', '9pnet_virtio', '9p'];

// The modules of `roots` and their dependencies, dependencies first; built-in ones (listed in
// modules.builtin) need no loading and are left out.
function moduleOrder(kdir, roots) {
  const modName = (f) => path.basename(f).replace(/\.ko(\.[a-z]+)?$/, '');
  let builtin = new Set();
  try {
    builtin = new Set(fs.readFileSync(path.join(kdir, 'modules.builtin'), 'utf8').split('\n').filter(Boolean).map(modName));
  } catch {
    /* no list: nothing is known to be built in */
  }
  const deps = new Map();
  for (const line of fs.readFileSync(path.join(kdir, 'modules.dep'), 'utf8').split('\n')) {
    const [mod, rest] = line.split(':');
    if (!mod) continue;
    deps.set(modName(mod), { file: mod, deps: (rest || '').trim().split(/\s+/).filter(Boolean) });
  }
  const order = [];
  const seen = new Set();
  const visit = (name) => {
    if (seen.has(name)) return;
    seen.add(name);
    const m = deps.get(name);
    if (!m && builtin.has(name)) return;
    if (!m) throw new Error(`module ${name} is neither in ${kdir}/modules.dep nor built in`);
    for (const d of m.deps) visit(modName(d));
    order.push({ name, file: m.file });
  };
  roots.forEach(visit);
  return order;
}

/** Builds (once per kernel + stage-1 script) the initramfs: static busybox, 9p modules, /init. */
export function ensureInitramfs(kernel) {
  const init = fs.readFileSync(path.join(SCRIPTS_DIR, 'initramfs-init.sh'));
  const busybox = ['/bin/busybox', '/usr/bin/busybox'].find((p) => fs.existsSync(p));
  if (!busybox) throw new RxeUnavailable('busybox not found: apt-get install busybox-static');
  const hash = createHash('sha256').update(init).update(kernel.kver).update(String(fs.statSync(busybox).size)).digest('hex').slice(0, 16);
  const out = path.join(CACHE_DIR, `initramfs-${kernel.kver}-${hash}.cpio`);
  if (fs.existsSync(out)) return out;
  debug(`building ${out}`);
  const stage = fs.mkdtempSync(path.join(os.tmpdir(), 'vof-rxe-initramfs-'));
  try {
    for (const d of ['bin', 'mods', 'proc', 'sys', 'dev', 'newroot']) fs.mkdirSync(path.join(stage, d));
    fs.copyFileSync(busybox, path.join(stage, 'bin', 'busybox'));
    fs.chmodSync(path.join(stage, 'bin', 'busybox'), 0o755);
    fs.writeFileSync(path.join(stage, 'init'), init, { mode: 0o755 });
    const order = moduleOrder(kernel.kdir, INITRAMFS_MODULES);
    for (const m of order) {
      const src = path.join(kernel.kdir, m.file);
      const dest = path.join(stage, 'mods', `${m.name}.ko`);
      if (m.file.endsWith('.ko')) fs.copyFileSync(src, dest);
      else if (m.file.endsWith('.ko.xz')) {
        // Debian's 6.12 ships xz-compressed modules; busybox insmod wants them plain, and the
        // busybox we copy anyway can decompress them here (no xz-utils needed).
        const x = spawnSync(busybox, ['xzcat', src], { maxBuffer: 64 << 20 });
        if (x.status !== 0 || !x.stdout?.length) throw new RxeUnavailable(`busybox xzcat ${src} failed: ${String(x.stderr || x.error || '').trim()}`);
        fs.writeFileSync(dest, x.stdout);
      } else throw new RxeUnavailable(`module ${m.file} is compressed in a way this harness cannot unpack (only .ko and .ko.xz)`);
    }
    fs.writeFileSync(path.join(stage, 'mods', 'order'), order.map((m) => m.name).join('\n') + '\n');
    const tmpOut = `${out}.${process.pid}.tmp`;
    const r = sh('sh', ['-c', 'find . -print | cpio -o -H newc -R 0:0 --quiet > "$1"', 'sh', tmpOut], { cwd: stage });
    if (r.code !== 0) throw new RxeUnavailable(`cpio failed: ${r.stderr.trim()}`);
    fs.renameSync(tmpOut, out);
    // Old initramfs images of this kernel are stale now.
    for (const f of fs.readdirSync(CACHE_DIR)) {
      if (f.startsWith(`initramfs-${kernel.kver}-`) && path.join(CACHE_DIR, f) !== out) fs.rmSync(path.join(CACHE_DIR, f), { force: true });
    }
    return out;
  } finally {
    fs.rmSync(stage, { recursive: true, force: true });
  }
}

/** Everything the VM needs, fetched/built when missing. Throws RxeUnavailable when impossible. */
export function prepareVm(series = kernelSeries()) {
  if (process.arch !== 'x64') throw new RxeUnavailable(`the VM mode boots an amd64 kernel and shares this host's root: it needs an x86-64 host (this is ${process.arch})`);
  ensureHostPackages(VM_GROUPS);
  if (!which('qemu-system-x86_64')) throw new RxeUnavailable('qemu-system-x86_64 not found (apt-get install qemu-system-x86)');
  fs.mkdirSync(CACHE_DIR, { recursive: true });
  const kernel = ensureKernel(series);
  const initrd = ensureInitramfs(kernel);
  return { ...kernel, initrd };
}

// ---------------------------------------------------------------------------------------------
// VM mode: running a command.

const ENV_PASS = /^(VOF_.*|VITEST.*|PATH|HOME|CI|TERM|NODE_OPTIONS)$/;
const q = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`;

function listenUnix(p) {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(p, () => resolve(server));
  });
}

/**
 * Runs argv in a fresh VM. Options: hosts (1 = dummy0/rxe0, N>1 = netns vof1..vofN),
 * timeoutSec, cwd. Resolves to the exit code: the command's, EXIT_TIMEOUT (124) when the VM was
 * killed on timeout, EXIT_HARNESS (125) when the guest could not set up or start the command.
 */
export async function runInVm(argv, { hosts = 1, timeoutSec = DEFAULT_TIMEOUT_SEC, cwd = process.cwd(), vm = prepareVm() } = {}) {
  const t0 = Date.now();
  const run = fs.mkdtempSync(path.join(os.tmpdir(), 'vof-rxe-run-'));
  if (/\s/.test(run)) throw new RxeUnavailable(`temp dir path has white space (${run}): set TMPDIR to a plain path`);
  const cleanups = [() => fs.rmSync(run, { recursive: true, force: true })];
  let qemu = null;
  const cleanup = () => {
    if (qemu && qemu.exitCode === null && qemu.signalCode === null) qemu.kill('SIGKILL');
    while (cleanups.length) {
      try {
        cleanups.pop()();
      } catch {
        /* best effort */
      }
    }
  };
  const onSignal = (sig) => {
    log(`${sig}: killing the VM`);
    cleanup();
    process.exit(128 + os.constants.signals[sig]);
  };
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  for (const s of signals) process.on(s, onSignal);
  cleanups.unshift(() => signals.forEach((s) => process.off(s, onSignal)));
  process.on('exit', cleanup); // last resort: never leave QEMU running
  cleanups.unshift(() => process.off('exit', cleanup));

  try {
    const env = Object.entries(process.env)
      .filter(([k]) => ENV_PASS.test(k) && /^[A-Za-z_][A-Za-z0-9_]*$/.test(k))
      .map(([k, v]) => `export ${k}=${q(v)}\n`)
      .join('');
    fs.writeFileSync(path.join(run, 'env.sh'), env);
    fs.writeFileSync(path.join(run, 'cmd.sh'), `exec ${argv.map(q).join(' ')}\n`);
    fs.writeFileSync(
      path.join(run, 'config.sh'),
      [
        ['VOF_GUEST_RUN', run],
        ['VOF_GUEST_KVER', vm.kver],
        ['VOF_GUEST_KROOT', vm.kroot],
        ['VOF_GUEST_SCRIPTS', SCRIPTS_DIR],
        ['VOF_GUEST_CWD', cwd],
        ['VOF_GUEST_HOSTS', String(hosts)],
        ['VOF_GUEST_STDOUT_TTY', process.stdout.isTTY ? '1' : '0'],
        ['VOF_GUEST_STDERR_TTY', process.stderr.isTTY ? '1' : '0'],
        ['PATH', process.env.PATH || '/usr/sbin:/usr/bin:/sbin:/bin'],
      ]
        .map(([k, v]) => `export ${k}=${q(v)}\n`)
        .join('') + 'export PATH="$PATH:/usr/sbin:/usr/bin:/sbin:/bin"\n',
    );
    fs.writeFileSync(path.join(run, 'boot.sh'), `. ${q(path.join(run, 'config.sh'))}\nexec /bin/sh ${q(path.join(SCRIPTS_DIR, 'guest-init.sh'))}\n`);

    // ttyS0 -> our stdout, ttyS1 -> our stderr, through unix sockets QEMU connects to.
    const streams = [];
    for (const [name, dest] of [
      ['out', process.stdout],
      ['err', process.stderr],
    ]) {
      const sock = path.join(run, `${name}.sock`);
      const server = await listenUnix(sock);
      cleanups.push(() => server.close());
      streams.push(
        new Promise((resolve) => {
          server.once('connection', (c) => {
            c.on('data', (d) => dest.write(d));
            c.on('close', resolve);
            c.on('error', resolve);
          });
          server.once('close', resolve);
        }),
      );
    }

    const mem = process.env.VOF_RXE_MEM || '4G';
    const smp = process.env.VOF_RXE_SMP || '2';
    const append = [
      'quiet',
      'loglevel=0',
      isVerbose() ? 'console=ttyS1 loglevel=7' : '',
      'panic=-1',
      'random.trust_cpu=on',
      `vof.run=${run}`,
      `vof.cache=${process.env.VOF_RXE_9P_CACHE || 'loose'}`,
    ]
      .filter(Boolean)
      .join(' ');
    const qargs = [
      '-accel', 'tcg,thread=multi', // nested KVM hangs at kernel start on these machines
      '-cpu', 'max',
      '-smp', smp,
      '-m', mem,
      '-nodefaults', '-no-user-config', '-display', 'none', '-vga', 'none',
      '-nic', 'none', // no network device: nothing leaves the VM
      '-no-reboot', // a guest panic/reboot ends QEMU instead of looping
      '-kernel', vm.vmlinuz,
      '-initrd', vm.initrd,
      '-append', append,
      '-virtfs', 'local,path=/,mount_tag=hostroot,security_model=none,multidevs=remap',
      '-device', 'virtio-rng-pci',
      '-chardev', `socket,id=vofout,path=${path.join(run, 'out.sock')}`,
      '-chardev', `socket,id=voferr,path=${path.join(run, 'err.sock')}`,
      '-serial', 'chardev:vofout',
      '-serial', 'chardev:voferr',
    ];
    // setpriv --pdeathsig: QEMU dies with this process even if it is SIGKILLed.
    const setpriv = which('setpriv');
    const [bin, args] = setpriv
      ? [setpriv, ['--pdeathsig', 'KILL', '--', 'qemu-system-x86_64', ...qargs]]
      : ['qemu-system-x86_64', qargs];
    debug(`${bin} ${args.join(' ')}`);
    let qemuErr = '';
    qemu = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    qemu.stdout.on('data', (d) => (qemuErr += d));
    qemu.stderr.on('data', (d) => (qemuErr += d));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      qemu.kill('SIGKILL');
    }, timeoutSec * 1000);
    cleanups.push(() => clearTimeout(timer));
    const [qcode, qsig] = await new Promise((resolve) => {
      qemu.on('error', (e) => {
        qemuErr += String(e);
        resolve([-1, null]);
      });
      qemu.on('exit', (c, s) => resolve([c, s]));
    });
    clearTimeout(timer);
    // Let the relays drain what QEMU wrote before it exited (bounded: never hang here).
    await Promise.race([Promise.all(streams), new Promise((r) => setTimeout(r, 2000))]);

    const setupLog = () => {
      try {
        return fs.readFileSync(path.join(run, 'setup.log'), 'utf8');
      } catch {
        return '(no setup.log: the guest never reached stage 2)\n';
      }
    };
    const secs = ((Date.now() - t0) / 1000).toFixed(1);
    if (timedOut) {
      log(`TIMEOUT: the command did not finish within ${timeoutSec} s (--timeout / VOF_RXE_TIMEOUT); the VM was killed after ${secs} s. Exit ${EXIT_TIMEOUT}.`);
      return EXIT_TIMEOUT;
    }
    let status = null;
    try {
      status = fs.readFileSync(path.join(run, 'status'), 'utf8').trim();
    } catch {
      /* handled below */
    }
    if (isVerbose()) process.stderr.write(setupLog());
    if (status === null || status === 'setup-failed' || !/^\d+$/.test(status)) {
      log(`the VM could not run the command (QEMU exit ${qsig || qcode} after ${secs} s). Guest setup log:`);
      process.stderr.write(setupLog());
      if (qemuErr.trim()) log(`QEMU said: ${qemuErr.trim()}`);
      return EXIT_HARNESS;
    }
    debug(`VM run took ${secs} s, command exit ${status}`);
    return Number(status);
  } finally {
    cleanup();
  }
}

/** Runs argv where an rxe device exists: here if possible, else in the VM. */
export async function runWithRxe(argv, opts = {}) {
  const host = opts.forceVm ? { ok: false, reason: 'VM forced (--vm)' } : hostRdma();
  if (host.ok) {
    debug(`using this host's RDMA device ${host.dev}`);
    if (opts.kernel) log(`note: --kernel ${opts.kernel} applies to the VM only; running directly on ${host.dev}`);
    if (opts.hosts > 1) log(`note: --hosts ${opts.hosts} applies to the VM only; running directly on ${host.dev}`);
    return runDirect(argv, host, opts);
  }
  debug(`no usable RDMA device here (${host.reason}); using the VM`);
  const vm = prepareVm(kernelSeries(opts.kernel)); // throws RxeUnavailable with the reason
  return runInVm(argv, { ...opts, vm });
}
