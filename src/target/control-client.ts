import { createConnection } from 'node:net';

/** One request to a target's control socket (control-socket.ts): one JSON line out, one back. */
export function controlRequest(path: string, request: Record<string, unknown>, timeoutMs = 10_000): Promise<Record<string, unknown> & { ok: boolean; error?: string }> {
  return new Promise((resolve, reject) => {
    const sock = createConnection(path);
    let buf = '';
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`the control socket ${path} did not answer within ${timeoutMs} ms`));
    }, timeoutMs);
    const fail = (err: Error) => {
      clearTimeout(timer);
      reject(err);
    };
    sock.setEncoding('utf8');
    sock.on('error', (err) => fail(new Error(`cannot reach the target's control socket ${path}: ${err.message}`)));
    sock.on('connect', () => sock.write(`${JSON.stringify(request)}\n`));
    sock.on('data', (d: string) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      clearTimeout(timer);
      sock.end();
      try {
        resolve(JSON.parse(buf.slice(0, nl)) as Record<string, unknown> & { ok: boolean });
      } catch {
        reject(new Error('the control socket answered something that is not JSON'));
      }
    });
  });
}
