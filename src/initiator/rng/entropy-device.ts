import { VIRTIO_F_VERSION_1 } from '../../protocol/constants.js';
import { VIRTIO_F_ADMIN_VQ } from '../../protocol/admin-records.js';
import { DeviceId } from '../../protocol/constants.js';
import { RemoteDevice, type ConnectOptions } from '../remote-device.js';
import type { AdminClient } from '../admin-client.js';
import { VofConnectionError } from '../vof-error.js';

const SUPPORTED = (1n << VIRTIO_F_VERSION_1) | (1n << VIRTIO_F_ADMIN_VQ);
/** Bytes asked for per request; the device may write fewer (its burst). */
const REQUEST_BYTES = 64 * 1024;

/** A remote virtio-rng device: read(n) collects n bytes of entropy, request after request. */
export class EntropyDevice {
  private constructor(readonly device: RemoteDevice) {}

  static async open(url: string, options: ConnectOptions = {}): Promise<EntropyDevice> {
    const device = await RemoteDevice.connect(url, {
      ...options,
      negotiateFeatures: (offered) => (options.negotiateFeatures ?? ((f) => f))(offered & SUPPORTED),
      queueCount: () => 1,
    });
    if (device.deviceId !== DeviceId.Entropy) {
      await device.close();
      throw new VofConnectionError(`${url} is device id ${device.deviceId}, not an entropy device (4)`);
    }
    return new EntropyDevice(device);
  }

  /** Exactly `n` random bytes. Waits while the target's rate limit holds requests back. */
  async read(n: number): Promise<Buffer> {
    if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`read: ${n} is not a byte count`);
    const out = Buffer.alloc(n);
    let got = 0;
    while (got < n) {
      const want = Math.min(REQUEST_BYTES, n - got);
      const written = await this.device.request(0, [], [out.subarray(got, got + want)]);
      if (written === 0) throw new VofConnectionError('the entropy device returned no bytes');
      got += written;
    }
    return out;
  }

  get admin(): AdminClient {
    return this.device.admin;
  }

  close(): Promise<void> {
    return this.device.close();
  }
}
