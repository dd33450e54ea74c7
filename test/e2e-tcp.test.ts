import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { BlockDevice, VofConnectionError } from '../src/index.js';
import { blkEndToEndSuite } from './suites/blk-e2e.js';
import { TargetFixture } from './helpers/target-fixture.js';

blkEndToEndSuite('TCP', 'tcp://127.0.0.1:0');

/** Forwards TCP both ways until told to black-hole the target's side. */
async function blackholeProxy(targetPort: number) {
  let silent = false;
  const server = net.createServer((client) => {
    const up = net.connect(targetPort, '127.0.0.1');
    client.on('data', (d) => up.write(d));
    up.on('data', (d) => {
      if (!silent) client.write(d);
    });
    client.on('error', () => up.destroy());
    up.on('error', () => client.destroy());
    client.on('close', () => up.destroy());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    port: (server.address() as net.AddressInfo).port,
    silence: () => (silent = true),
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

describe('initiator keepalive over TCP', () => {
  it('declares the device lost when the target goes silent, failing what is in flight', async () => {
    const fx = new TargetFixture();
    await fx.addDisk('d', 1024 * 1024);
    await fx.listen();
    const proxy = await blackholeProxy(fx.port);
    try {
      const d = await BlockDevice.open(`tcp://127.0.0.1:${proxy.port}/d`, { keepaliveIntervalMs: 50, keepaliveTimeoutMs: 300 });
      const lost = new Promise<Error>((r) => d.device.once('lost', r));
      proxy.silence();
      const pending = d.read(0, 4096).catch((e: unknown) => e);
      const err = await lost;
      expect(err).toBeInstanceOf(VofConnectionError);
      expect(err.message).toMatch(/target silent for \d+ ms: device lost/);
      expect(await pending).toBeInstanceOf(VofConnectionError);
      await expect(d.read(0, 512)).rejects.toBeInstanceOf(VofConnectionError);
      await d.close();
    } finally {
      await proxy.close();
      await fx.close();
    }
  });
});
