import type { CmId, NativeBinding } from './native-binding.js';

/** How often, and how many times, librdmacm's device list is refreshed after a removal. */
const SYNC_INTERVAL_MS = 500;
const SYNC_TRIES = 240;

/** The devices whose removal this process is following, by name. */
const following = new Set<string>();

/**
 * An RDMA device of ours went away (a CM id got DEVICE_REMOVAL): make librdmacm notice it, so
 * that it closes the device's verbs context once our last CM id on it is destroyed. The kernel
 * finishes removing a device whose driver cannot take user contexts away by itself (rxe) only
 * when every process has closed them: without this, `rdma link delete` waits forever, and the
 * device cannot come back under its name. The kernel lists the device until its removal reaches
 * the verbs layer, just after the CM's DEVICE_REMOVAL: the list is refreshed every
 * SYNC_INTERVAL_MS until the device is no longer in it (bounded; the timer keeps no process alive).
 */
export function followDeviceRemoval(binding: NativeBinding, device: string | null): void {
  if (device === null || following.has(device)) return;
  following.add(device);
  let tries = 0;
  const sync = (): void => {
    let present: string[];
    try {
      present = binding.syncDevices();
    } catch {
      present = [];
    }
    if (!present.includes(device) || ++tries >= SYNC_TRIES) {
      following.delete(device);
      return;
    }
    setTimeout(sync, SYNC_INTERVAL_MS).unref();
  };
  sync();
}

/** The device a CM id is on, null if none (or the id is already destroyed). */
export function deviceOf(id: CmId | undefined): string | null {
  try {
    return id?.deviceName() ?? null;
  } catch {
    return null;
  }
}
