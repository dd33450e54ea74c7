import { DeviceStatus } from '../protocol/constants.js';

const DRIVER_SETTABLE =
  DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK | DeviceStatus.DRIVER_OK | DeviceStatus.FAILED;

/** Why a Set Status is refused; null when it is allowed. Status 0 (reset) is handled before. */
export function statusTransitionProblem(current: number, next: number): string | null {
  if ((next & ~DRIVER_SETTABLE & ~DeviceStatus.DEVICE_NEEDS_RESET) !== 0) return 'unknown status bits';
  if ((next & DeviceStatus.DEVICE_NEEDS_RESET) !== 0 && (current & DeviceStatus.DEVICE_NEEDS_RESET) === 0) {
    return 'DEVICE_NEEDS_RESET is set by the device, not the driver';
  }
  if ((current & ~next) !== 0) return 'status bits can only be cleared by a reset';
  if ((current & DeviceStatus.FAILED) !== 0 && next !== current) return 'device is FAILED; reset it first';
  if (next & DeviceStatus.DRIVER && !(next & DeviceStatus.ACKNOWLEDGE)) return 'DRIVER without ACKNOWLEDGE';
  if (next & DeviceStatus.FEATURES_OK && !(next & DeviceStatus.DRIVER)) return 'FEATURES_OK without DRIVER';
  if (next & DeviceStatus.DRIVER_OK && !(next & DeviceStatus.FEATURES_OK)) return 'DRIVER_OK without FEATURES_OK';
  return null;
}

/** Feature windows: feature_select N covers bits 64N..64N+63. */
export const FEATURE_WINDOWS = 2;
const MASK64 = (1n << 64n) - 1n;

export function featureWindow(features: bigint, select: number): bigint {
  return (features >> BigInt(64 * select)) & MASK64;
}

export function withFeatureWindow(features: bigint, select: number, bits: bigint): bigint {
  const shift = BigInt(64 * select);
  return (features & ~(MASK64 << shift)) | ((bits & MASK64) << shift);
}
