import { nativeBinding, type DeviceInfo } from './native-binding.js';

/** RDMA devices with their ports, states, MTUs and GIDs (ibv_get_device_list + queries). */
export function listRdmaDevices(): DeviceInfo[] {
  return nativeBinding().listDevices();
}
