import type { DeviceModel } from '../../src/index.js';

export function delegatingInstance(
  inner: DeviceModel,
  own: Pick<DeviceModel, 'handleRequest'> & Partial<Pick<DeviceModel, 'submitRequest'>>,
): DeviceModel;
