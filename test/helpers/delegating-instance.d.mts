import type { VirtioDeviceInstance } from '../../src/index.js';

export function delegatingInstance(
  inner: VirtioDeviceInstance,
  own: Pick<VirtioDeviceInstance, 'handleRequest'> & Partial<Pick<VirtioDeviceInstance, 'submitRequest'>>,
): VirtioDeviceInstance;
