import type { CmEvent, CmId, ConnParam } from './native-binding.js';

/** Outstanding RDMA READs we ask for; more rarely helps and costs responder resources. */
const WANTED_READ_DEPTH = 16;

/**
 * Retries of a SEND the peer had no receive posted for (RNR NAK). 7 would mean "forever": a peer
 * that stops posting receives would then hold our sends, and the memory behind them, for good.
 * 6 retries of the responder's RNR timer is seconds with the usual timers; after that the QP
 * fails and the queue closes. rdma_cm hands the value to the PEER's QP (it travels in the CM
 * REQ/REP), so each end sets it for the other; a peer that asks for 7 on our QP is still closed
 * by the send queue's stall timeout (send-queue.ts).
 */
export const RNR_RETRY_COUNT = 6;
/** Transport retries (lost packets, no ACK); 7 is the largest finite value. */
export const RETRY_COUNT = 7;

/** Initiator side: offer to answer up to 16 outstanding RDMA READs (the target issues them). */
export function initiatorConnParam(cmId: CmId, privateData?: Buffer): ConnParam {
  const lim = cmId.maxReadDepth();
  return {
    responderResources: Math.min(WANTED_READ_DEPTH, lim.responder),
    initiatorDepth: Math.min(WANTED_READ_DEPTH, lim.initiator),
    retryCount: RETRY_COUNT,
    rnrRetryCount: RNR_RETRY_COUNT,
    ...(privateData ? { privateData } : {}),
  };
}

/** Target side: read depths within what the initiator offered and what this device can do. */
export function readDepths(cmId: CmId, request: CmEvent): { responderResources: number; initiatorDepth: number } {
  const lim = cmId.maxReadDepth();
  return {
    responderResources: Math.min(request.initiatorDepth ?? 0, lim.responder),
    initiatorDepth: Math.min(request.responderResources ?? 0, lim.initiator, WANTED_READ_DEPTH),
  };
}

/** Target side: what rdma_accept is given (finite retries for the initiator's QP). */
export function targetConnParam(cmId: CmId, request: CmEvent): ConnParam {
  return { ...readDepths(cmId, request), retryCount: RETRY_COUNT, rnrRetryCount: RNR_RETRY_COUNT };
}
