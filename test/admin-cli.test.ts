import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TargetFixture } from './helpers/target-fixture.js';
import { VOF_CLI, startTarget, type StartedTarget } from '../scripts/start-target.mjs';

/** Run the CLI asynchronously (the target may live in this process). */
function vof(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [VOF_CLI, ...args]);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 30000);
    child.on('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

describe('vof admin and vof target --rng', () => {
  const scratch = new TargetFixture(); // only for its temp dir
  let target: StartedTarget;
  let url: string;

  beforeAll(async () => {
    const disk = `${scratch.dir}/disk.img`;
    writeFileSync(disk, Buffer.alloc(2 * 1024 * 1024));
    const config = `${scratch.dir}/target.json`;
    writeFileSync(config, JSON.stringify({ rng: [{ tvqn: 'rng-cfg', rate: 65536, burst: 4096 }] }));
    // --admin: vof admin's default IVQN may format and reads the whole export's log.
    target = await startTarget(['--config', config, '--listen', 'tcp://127.0.0.1:0', '--blk', `d=${disk}`, '--admin', 'vof-initiator', '--rng', 'rng,rate=1048576', '--log', 'warn'], { lines: 1 });
    url = target.urls[0]!;
  });
  afterAll(async () => {
    await target?.stop();
    await scratch.close();
  });

  it('vof info shows the entropy devices (from --rng and from --config) and the admin queue', async () => {
    for (const tvqn of ['rng', 'rng-cfg']) {
      const r = await vof(['info', `${url}/${tvqn}`, '--json']);
      expect(r.status, r.stderr).toBe(0);
      const info = JSON.parse(r.stdout);
      expect(info.deviceId).toBe(4);
      expect(info.queueSizes).toEqual([64]);
      expect(info.adminQueue).toEqual({ index: 1, size: 16 });
      expect(info.deviceFeatures.names).toEqual(['VIRTIO_F_VERSION_1', 'VIRTIO_F_ADMIN_VQ']);
      expect(info.configGeneration).toBeNull();
    }
    const text = await vof(['info', `${url}/rng`]);
    expect(text.stdout).toMatch(/^device id +4 \(entropy, virtio-rng\)$/m);
    expect(text.stdout).toMatch(/^admin queue +index 1, size 16$/m);
  });

  it('vof admin prints tables: commands, queues, formats, log, health', async () => {
    const commands = await vof(['admin', `${url}/d`, 'commands']);
    expect(commands.status, commands.stderr).toBe(0);
    expect(commands.stdout).toMatch(/^CLASS +CMD +NAME$/m);
    expect(commands.stdout).toMatch(/^ +128 +device +1 +FORMAT$/m);
    const queues = await vof(['admin', `${url}/d`, 'queues']);
    expect(queues.stdout).toMatch(/^QUEUE +ROLE +TRANSPORT +SIZE +IN-FLIGHT +COMMANDS +BYTES-OUT +BYTES-IN +ERRORS +PEER$/m);
    expect(queues.stdout).toMatch(/^ctrl +control +tcp +32 /m);
    expect(queues.stdout).toMatch(/^2 +admin +tcp +16 +1 /m);
    const formats = await vof(['admin', `${url}/d`, 'formats', '--json']);
    expect(JSON.parse(formats.stdout).current).toBe(0);
    const health = await vof(['admin', `${url}/d`, 'health', '--samples', '8']);
    expect(health.status, health.stderr).toBe(0);
    expect(health.stdout).toMatch(/^PASSED: 8 samples, 0 errors, 4096 bytes checked/);
  });

  it('vof admin format: a refusal is one line with the status name (exit 1); a format shows in the log', async () => {
    const refused = await vof(['admin', `${url}/d`, 'format', '4096', '--pi', '8']);
    expect(refused.status).toBe(1);
    expect(refused.stderr).toMatch(/^vof: AdminError: admin device FORMAT: CLASS_SPECIFIC FORMAT_UNSUPPORTED$/m);
    const ok = await vof(['admin', `${url}/d`, 'format', '4096']);
    expect(ok.status, ok.stderr).toBe(0);
    const info = JSON.parse((await vof(['info', `${url}/d`, '--json'])).stdout);
    expect(info.blk.blkSize).toBe(4096);
    const log = await vof(['admin', `${url}/d`, 'log', '--json']);
    const types = (JSON.parse(log.stdout).entries as Array<{ typeName: string }>).map((e) => e.typeName);
    expect(types).toEqual(['CONFIG_CHANGE', 'REFUSED_COMMAND']);
    const text = await vof(['admin', `${url}/d`, 'log']);
    expect(text.stdout).toMatch(/^2 entries held, 0 lost/);
    expect(text.stdout).toMatch(/REFUSED_COMMAND +2 +\d+ +1 +admin 128\/1: CLASS_SPECIFIC FORMAT_UNSUPPORTED$/m);
    const raw = await vof(['admin', `${url}/rng`, 'raw', '128', '0']);
    expect(raw.stdout).toBe('GENERIC INVALID_CLASS\n');
    const usage = await vof(['admin', `${url}/d`, 'nonsense']);
    expect(usage.status).toBe(2);
  });
});
