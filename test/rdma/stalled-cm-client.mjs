// A peer that sends RDMA CM connect requests and never completes them: run as a child process,
// `node stalled-cm-client.mjs HOST PORT COUNT`. It resolves COUNT CM ids, creates each one's QP,
// calls rdma_connect on all of them in one synchronous loop, prints "connecting COUNT" and stops
// itself (SIGSTOP) before its event loop turns. librdmacm moves a user-space QP to RTS and sends
// the RTU only when the CONNECT_RESPONSE event is read (rdma_get_cm_event), which a stopped
// process never does: the target's side of each connection stays between its CONNECT_REQUEST
// and ESTABLISHED, holding whatever it set up for it, until the test kills this process.
import { writeSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const [host, portText, countText] = process.argv.slice(2);
const port = Number(portText);
const count = Number(countText);
const root = fileURLToPath(new URL('../../', import.meta.url));
const b = createRequire(import.meta.url)('node-gyp-build')(root);

const ids = [];
let waiting = null;
const events = [];
const channel = new b.EventChannel((ev) => {
  events.push(ev);
  waiting?.();
});
const next = async (type) => {
  const deadline = Date.now() + 30000;
  for (;;) {
    const ev = events.shift();
    if (ev) {
      if (ev.type !== type) throw new Error(`expected ${type}, got ${ev.type} (status ${ev.status})`);
      return ev;
    }
    if (Date.now() > deadline) throw new Error(`no ${type} within 30 s`);
    await new Promise((r) => {
      const t = setTimeout(r, 100);
      waiting = () => {
        clearTimeout(t);
        waiting = null;
        r();
      };
    });
  }
};

for (let i = 0; i < count; i++) {
  const id = new b.CmId(channel);
  id.resolveAddr(host, port, 5000);
  await next('ADDR_RESOLVED');
  id.resolveRoute(5000);
  await next('ROUTE_RESOLVED');
  const pd = new b.ProtectionDomain(id);
  const cq = new b.CompletionQueue(id, 4, () => {});
  id.createQp(pd, cq, { maxSendWr: 2, maxRecvWr: 2, maxSendSge: 1, maxRecvSge: 1 });
  ids.push({ id, pd, cq });
}
for (const { id } of ids) id.connect({ responderResources: 1, initiatorDepth: 1, retryCount: 7, rnrRetryCount: 6 });
writeSync(1, `connecting ${count}\n`);
process.kill(process.pid, 'SIGSTOP');
