import type { DeviceExport, FileBlockExport, DeviceModel } from '../../src/index.js';

/**
 * `real` exported under a new description, with some members of every instance replaced: a
 * device that faults, lies about its config, or answers with too many bytes, on top of a
 * working virtio-blk model.
 */
export function withInstanceOverrides(
  real: FileBlockExport,
  description: string,
  overrides: (inner: DeviceModel) => Partial<DeviceModel>,
): DeviceExport {
  return {
    description,
    close: () => real.close(),
    createInstance(limits): DeviceModel {
      const inner = real.createInstance(limits);
      const replaced = overrides(inner) as Record<string | symbol, unknown>;
      return new Proxy(inner, {
        get(t, k) {
          if (k in replaced) return replaced[k];
          // A replaced handleRequest is what the target must call: the real submitRequest
          // (which the target prefers) is hidden unless it is replaced too.
          if (k === 'submitRequest' && 'handleRequest' in replaced) return undefined;
          const v: unknown = Reflect.get(t, k, t);
          return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
        },
      });
    },
  };
}
