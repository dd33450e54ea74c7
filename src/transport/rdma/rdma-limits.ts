import type { CmEvent, CmId, ConnParam } from './native-binding.js';

/** Outstanding RDMA READs we ask for; more rarely helps and costs responder resources. */
const WANTED_READ_DEPTH = 16;

/** Initiator side: offer to answer up to 16 outstanding RDMA READs (the target issues them). */
export function initiatorConnParam(cmId: CmId, privateData?: Buffer): ConnParam {
  const lim = cmId.maxReadDepth();
  return {
    responderResources: Math.min(WANTED_READ_DEPTH, lim.responder),
    initiatorDepth: Math.min(WANTED_READ_DEPTH, lim.initiator),
    retryCount: 7,
    rnrRetryCount: 7,
    ...(privateData ? { privateData } : {}),
  };
}

/** Target side: within what the initiator offered and what this device can do. */
export function readDepths(cmId: CmId, request: CmEvent): { responderResources: number; initiatorDepth: number } {
  const lim = cmId.maxReadDepth();
  return {
    responderResources: Math.min(request.initiatorDepth ?? 0, lim.responder),
    initiatorDepth: Math.min(request.responderResources ?? 0, lim.initiator, WANTED_READ_DEPTH),
  };
}
