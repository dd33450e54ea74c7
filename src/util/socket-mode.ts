/**
 * Run `listen`, which creates a Unix socket file, with the process umask set so that the file
 * is born with `mode` (no window in which it has a wider one), and put the umask back on every
 * path, a throwing listen included: the umask is process-wide. Node binds a Unix socket inside
 * listen() itself, so the umask is back before any other code runs.
 */
export function withSocketMode<T>(mode: number, listen: () => T): T {
  const old = process.umask(~mode & 0o777);
  try {
    return listen();
  } finally {
    process.umask(old);
  }
}
