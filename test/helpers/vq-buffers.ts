import type { VqRequestData } from '../../src/transport/transport.js';

/** A VQ request's buffers through fetch(), as a promise (tests only: the core's slot is the sink). */
export function fetchBuffers(req: VqRequestData): Promise<{ readable: Buffer; writable: Buffer }> {
  return new Promise((resolve, reject) =>
    req.fetch({ buffersReady: (readable, writable) => resolve({ readable, writable }), buffersFailed: reject }),
  );
}
