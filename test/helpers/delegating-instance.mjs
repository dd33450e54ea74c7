/**
 * A device instance that is `inner` (config space, features, queues, reset, destroy) except for
 * the request entry points in `own` (handleRequest, and submitRequest when given: without it the
 * target calls handleRequest). A plain object, not a Proxy, whose bound methods would cost per
 * request in the allocation tests.
 */
export function delegatingInstance(inner, own) {
  return {
    deviceId: inner.deviceId,
    vendorId: inner.vendorId,
    features: inner.features,
    numQueues: inner.numQueues,
    maxRequestBytes: inner.maxRequestBytes,
    configSize: inner.configSize,
    maxQueueSize: (vq) => inner.maxQueueSize(vq),
    readConfig: (o, b) => inner.readConfig(o, b),
    writeConfig: (o, b, v) => inner.writeConfig(o, b, v),
    configGeneration: () => inner.configGeneration(),
    onConfigChange: (l) => inner.onConfigChange(l),
    setDriverFeatures: (f) => inner.setDriverFeatures(f),
    reset: () => inner.reset(),
    destroy: () => inner.destroy(),
    ...own,
  };
}
