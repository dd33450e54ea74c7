#!/usr/bin/env node
import { runAdmin } from './admin-command.js';
import { runCp } from './cp-command.js';
import { runDrain } from './drain-command.js';
import { runDevices } from './devices-command.js';
import { runInfo } from './info-command.js';
import { runNbd } from './nbd-command.js';
import { runTarget } from './target-command.js';
import { CliError } from './cli-error.js';
import { runGenSecret } from './auth-options.js';

const USAGE = `vof — Virtio over Fabrics

Usage:
  vof target --listen URL [--listen URL]... --blk TVQN=PATH[,ro][,direct][,serial=S] [--blk ...]
             [--rng TVQN[,rate=BYTES_PER_S][,burst=BYTES]]...
             [--allow IVQN[@IDENTITY]]... [--admin IVQN[@IDENTITY]]... [--config FILE]
             [--queues N] [--queue-size N] [--keepalive-interval MS] [--keepalive-timeout MS] [--log LEVEL]
             [--max-instances-per-export N] [--max-instances-per-ivqn N]
             [--max-unbound N] [--max-unbound-per-host N]
             [--tls-cert FILE --tls-key FILE] [--tls-ca FILE] [--tls-psk FILE]
             [--redirect TVQN=URL[/TVQN2]]... [--control PATH] [--file-io auto|uring|libuv] [--inline-data BYTES]
             [--auth-secret IVQN=FILE]...
      Export block devices and entropy (virtio-rng) devices. URL is tcp://HOST[:PORT],
      tls://HOST[:PORT] or rdma://ADDR[:PORT] (port 15771). Prints "listening on URL" per
      address when ready; SIGINT/SIGTERM shut it down. --file-io: block file I/O through
      io_uring or libuv's thread pool (auto: io_uring where it works; default VOF_FILE_IO).
      --admin grants every export's export-wide admin commands (format, clear-log,
      reset-counters, the whole error log) to that IVQN (@IDENTITY: only over TLS that proved
      it); without it nobody may run them.
  vof info URL/TVQN [--ivqn IVQN] [--json] [TLS]
      Connect and print instance id, features, queue sizes and config space.
  vof cp SRC DST [--ivqn IVQN] [--json] [TLS]
      Copy a remote disk (tcp://, tls:// or rdma://HOST[:PORT]/TVQN) to a local file or back.
  vof admin URL/TVQN COMMAND [ARGS] [--ivqn IVQN] [--json] [TLS]
      Admin virtqueue commands: commands, log, health, queues, formats, format SIZE,
      reset-counters, clear-log, raw CLASS COMMAND [HEX] ("vof admin" for details).
      format, reset-counters and clear-log need the target's --admin grant for the IVQN.
      TLS: [--tls-ca FILE] [--tls-cert FILE --tls-key FILE]
           [--tls-psk FILE [--tls-psk-identity ID]] [--tls-servername NAME]
  vof devices [--json]
      List RDMA devices with port state, MTU and GIDs.
  vof nbd URL/TVQN [--socket PATH [--socket-mode OCTAL] | --listen HOST:PORT [--allow-unauthenticated]]
          [--name EXPORT] [--ivqn IVQN] [--read-only] [--max-requests N] [--max-connections N]
          [--log LEVEL] [TLS]
      Serve a remote disk over NBD (qemu, qemu-img, nbdcopy, fio, nbd-client). Prints the
      NBD URI (nbd+unix:///EXPORT?socket=PATH or nbd://HOST:PORT/EXPORT) when ready. NBD
      clients are not authenticated: the socket is 0600, --listen only on loopback unless
      --allow-unauthenticated; at most 64 connections, 10 s to finish the handshake.
  vof bench [--target URL] [--rw LIST] [--bs LIST] [--qd LIST] [--queues N] [--time SEC]
            [--ramp SEC] [--rounds N] [--size SIZE] [--rdma auto|vm|off] [--vm-time SEC] [--anchors]
            [--quick] [--json FILE] [--chart FILE.svg] [--cpu-prof DIR] [--file-io auto|uring|libuv]
      Benchmark vof over TCP and RDMA (or in the soft-RoCE VM: --rdma vm) against nbdkit,
      the kernel's NVMe-oF, iperf3 and perftest (--anchors). Defaults: 4k randread qd1/qd32,
      4k randwrite qd32, 128k read/write qd8; 5 s each after a 1 s ramp; 2 queues; 256m image.
      --rounds N (default 3, --quick 1): per workload the systems run interleaved N times;
      IOPS and MB/s are median (min–max), ratios the median (min–max) of per-round ratios.
      Also per I/O and side: user/system CPU µs, syscalls, context switches, vof's JS heap and GCs.
  vof drain --control PATH TVQN URL[/TVQN2] [--grace S] [--json]
      Ask a running target (its --control socket) to move TVQN: connected initiators get the
      drain event and reconnect to URL; new Connects are redirected there. After the grace
      time (default 10 s) what is left is closed; requests it still has in flight 1 s later
      are cancelled (ESTATUS). TVQN must be exported or already redirected by that target (exit 1 otherwise).
  vof drain --control PATH --remove TVQN [--json]
      Stop redirecting TVQN: new Connects for it are answered by the target again.
  Reconnect options of cp and nbd: [--reconnect-delay S] [--ctrl-loss-tmo S|-1]
           [--fast-io-fail-tmo S|-1]
  Redirect options of info, cp, admin and nbd: [--max-redirects N]
           [--allow-redirect-to tcp,tls,rdma] (a redirect keeps the URL's transport, or raises
           tcp:// to tls://; any other move needs the scheme named here)
  Authentication option of info, cp, admin and nbd: [--auth-secret FILE] (the IVQN's secret:
           prove it to the target and require the target to prove it back)
  vof gen-secret [--bytes 32|48|64]
      Print a new secret (DHHC-1:00:<base64>:) for --auth-secret; keep it in a 0600 file.
      A target with --auth-secret IVQN=FILE requires that IVQN to authenticate in-band.
  vof help
`;

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'target':
      return runTarget(rest);
    case 'info':
      return runInfo(rest);
    case 'cp':
      return runCp(rest);
    case 'admin':
      return runAdmin(rest);
    case 'devices':
      return runDevices(rest);
    case 'nbd':
      return runNbd(rest);
    case 'bench':
      // Loaded on demand: the benchmark brings the charting library, which no other command needs.
      return (await import('./bench-command.js')).runBench(rest);
    case 'drain':
      return runDrain(rest);
    case 'gen-secret':
      return runGenSecret(rest);
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE);
      return cmd === undefined ? 2 : 0;
    default:
      throw new CliError(`unknown command "${cmd}"\n\n${USAGE}`);
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    const e = err as Error;
    process.stderr.write(`vof: ${e instanceof CliError ? e.message : `${e.name}: ${e.message}`}\n`);
    process.exitCode = e instanceof CliError ? e.exitCode : 1;
  },
);
