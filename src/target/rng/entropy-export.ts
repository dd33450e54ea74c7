import { randomFill, randomFillSync } from 'node:crypto';
import { DEFAULT_VENDOR_ID, DeviceId, VIRTIO_F_VERSION_1 } from '../../protocol/constants.js';
import type { HealthTestResult } from '../../protocol/admin-records.js';
import type { AdminCommandSet } from '../admin/admin-command-set.js';
import type { DeviceAdminSupport, DeviceExport, DeviceRequest, DeviceModel } from '../device.js';
import { TokenBucket } from './token-bucket.js';

function fill(buf: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => randomFill(buf, (err, b) => (err ? reject(err) : resolve(b))));
}

export interface EntropyOptions {
  /** Bytes per second each instance may draw (token bucket refill). Default 1 MiB/s. */
  readonly rate?: number;
  /** Largest burst, and the most bytes one request gets. Default 64 KiB. */
  readonly burst?: number;
  /** Virtqueue size. Default 64. */
  readonly queueSize?: number;
}

export const DEFAULT_RNG_RATE = 1024 * 1024;
export const DEFAULT_RNG_BURST = 64 * 1024;
/** Bits per FIPS 140-2 monobit sample of the health test. */
const MONOBIT_BYTES = 2500;

/**
 * virtio-rng (device id 4): one request virtqueue whose device-writable buffers are filled
 * from the system's CSPRNG, rate-limited per instance. No config space, no device features
 * beyond VERSION_1.
 */
export class EntropyExport implements DeviceExport {
  readonly description: string;
  readonly rate: number;
  readonly burst: number;
  readonly queueSize: number;

  constructor(options: EntropyOptions = {}) {
    this.rate = options.rate ?? DEFAULT_RNG_RATE;
    this.burst = options.burst ?? Math.min(DEFAULT_RNG_BURST, Math.max(1, this.rate));
    this.queueSize = Math.min(1024, Math.max(1, options.queueSize ?? 64));
    // Fail at export time, not at the first Connect.
    new TokenBucket(this.rate, this.burst).close();
    this.description = `virtio-rng (${this.rate} bytes/s per instance, bursts of ${this.burst})`;
  }

  createInstance(): DeviceModel {
    return new EntropyInstance(this);
  }

  async close(): Promise<void> {}
}

/** The health test: FIPS 140-2 monobit on samples of 20000 bits from the same source. */
class EntropyAdmin implements DeviceAdminSupport {
  register(_commands: AdminCommandSet): void {
    // No virtio-rng class: the common, transport and vendor classes of the target apply.
  }

  async healthTest(samples: number): Promise<HealthTestResult> {
    const n = Math.min(1024, samples || 16);
    const started = performance.now();
    const buf = Buffer.alloc(MONOBIT_BYTES);
    let errors = 0;
    let firstError: bigint | null = null;
    for (let i = 0; i < n; i++) {
      await fill(buf);
      let ones = 0;
      for (const byte of buf) ones += popcount(byte);
      // FIPS 140-2: 9725 < ones < 10275 for a 20000-bit sample.
      if (ones <= 9725 || ones >= 10275) {
        errors++;
        firstError ??= BigInt(i);
      }
    }
    return { passed: errors === 0, samples: n, errors, durationMs: performance.now() - started, bytesChecked: n * MONOBIT_BYTES, firstError };
  }
}

function popcount(b: number): number {
  b = b - ((b >> 1) & 0x55);
  b = (b & 0x33) + ((b >> 2) & 0x33);
  return (b + (b >> 4)) & 0x0f;
}

class EntropyInstance implements DeviceModel {
  readonly deviceId = DeviceId.Entropy;
  readonly vendorId = DEFAULT_VENDOR_ID;
  readonly features = 1n << VIRTIO_F_VERSION_1;
  readonly numQueues = 1;
  readonly configSize = 0;
  readonly maxRequestBytes = 1024 * 1024;
  readonly admin = new EntropyAdmin();
  private readonly bucket: TokenBucket;

  constructor(private readonly rng: EntropyExport) {
    this.bucket = new TokenBucket(rng.rate, rng.burst);
  }

  maxQueueSize(): number {
    return this.rng.queueSize;
  }
  readConfig(): bigint {
    return 0n;
  }
  writeConfig(): boolean {
    return false;
  }
  configGeneration(): number {
    return 0;
  }
  onConfigChange(): () => void {
    return () => {};
  }
  setDriverFeatures(): void {}
  // A reset does not refill the bucket: resetting must not be a way around the rate.
  reset(): void {}

  /** Waits for tokens, then fills up to min(in_length, burst) bytes; the driver may get fewer than it asked for. */
  async handleRequest(_vq: number, _readable: Buffer, writable: Buffer): Promise<number> {
    const granted = await this.bucket.take(writable.length);
    if (granted === 0) return 0;
    await fill(writable.subarray(0, granted));
    return granted;
  }

  /**
   * handleRequest without a promise when the bucket holds the tokens now: the bytes are drawn
   * in this call (at most a burst, 64 KiB by default). A request that must wait for tokens takes
   * handleRequest's path, behind those already waiting.
   */
  submitRequest(vq: number, readable: Buffer, writable: Buffer, request: DeviceRequest): void {
    const granted = this.bucket.takeNow(writable.length);
    if (granted < 0) return this.waitForTokens(vq, readable, writable, request);
    if (granted > 0) randomFillSync(writable, 0, granted);
    request.deviceDone(granted);
  }

  /** handleRequest reported on `request` (apart: closures in submitRequest would cost a context per call). */
  private waitForTokens(vq: number, readable: Buffer, writable: Buffer, request: DeviceRequest): void {
    this.handleRequest(vq, readable, writable).then(
      (n) => request.deviceDone(n),
      (err: unknown) => request.deviceFailed(err),
    );
  }

  destroy(): void {
    this.bucket.close();
  }
}
