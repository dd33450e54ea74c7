#include "addon.h"

namespace vof {

// Opcodes of postSend work requests, as the JS side numbers them.
enum WrOpcode : uint32_t { kSend = 0, kWrite = 1, kRead = 2, kBindWindow = 3, kLocalInvalidate = 4, kSendWithInvalidate = 5 };
static constexpr uint32_t kMaxChain = 64;
// The staging area postSend reads (SendQueue's WorkRequestStaging in send-queue.ts writes it):
// kWrWords 32-bit words per work request, at most kStagedSge scatter-gather entries each.
//   0 wr_id            1 opcode (WrOpcode)   2 flags: 1 signaled
//   3 number of SGEs   4 rkey (READ/WRITE: the remote key; SEND with Invalidate: the key to
//                        invalidate; BindWindow: the access granted)
//   5 remote address, low 32 bits            6 remote address, high 32 bits
//   7 window (BindWindow, LocalInvalidate): index into `objects`
//   8 + 3j, 9 + 3j, 10 + 3j: SGE j as (region index into `objects`, offset, length)
static constexpr uint32_t kStagedSge = 2;
static constexpr uint32_t kWrWords = 8 + 3 * kStagedSge;

Napi::Function QueuePair::Init(Napi::Env env) {
  return DefineClass(env, "QueuePair",
                     {
                         InstanceMethod<&QueuePair::PostSend>("postSend"),
                         InstanceMethod<&QueuePair::PostRecv>("postRecv"),
                         InstanceMethod<&QueuePair::Query>("query"),
                         InstanceMethod<&QueuePair::ModifyToError>("modifyToError"),
                     });
}

// Created only by CmId.createQp.
QueuePair::QueuePair(const Napi::CallbackInfo& info) : Napi::ObjectWrap<QueuePair>(info) {}

QueuePair::~QueuePair() { Release(); }

void QueuePair::Attach(CmId* cmId, Napi::Object cmIdObj, ProtectionDomain* pd, Napi::Object pdObj,
                       CompletionQueue* cq, Napi::Object cqObj, ibv_qp* qp, uint32_t maxSendSge) {
  cmId_ = cmId;
  pd_ = pd;
  cq_ = cq;
  qp_ = qp;
  maxSendSge_ = maxSendSge;
  cmIdRef_ = Napi::Persistent(cmIdObj);
  pdRef_ = Napi::Persistent(pdObj);
  cqRef_ = Napi::Persistent(cqObj);
  cq_->liveQps++;
  pd_->liveQueuePairs++;
  counted_.Add(Env(), &ResourceCounts::queuePairs);
}

// The QP dies with its CM id (CmId.destroy); one release path.
void QueuePair::Release() {
  if (qp_ == nullptr) return;
  rdma_destroy_qp(cmId_->id);
  qp_ = nullptr;
  cmId_->qp = nullptr;
  cq_->liveQps--;
  counted_.Drop();
  pd_->QueuePairReleased();
  cmIdRef_.Reset();
  pdRef_.Reset();
  cqRef_.Reset();
}

// Every local buffer must be a registered region of this QP's PD, and the slice must lie inside
// it: JS can never point the NIC at memory it was not given.
ibv_sge QueuePair::ToSge(Napi::Env env, Napi::Value mrValue, double offset, double length) {
  if (!mrValue.IsObject() || !mrValue.As<Napi::Object>().InstanceOf(CtorsOf(env).memoryRegion.Value())) {
    throw Napi::TypeError::New(env, "scatter-gather entry needs a MemoryRegion");
  }
  auto* mr = MemoryRegion::Unwrap(mrValue.As<Napi::Object>());
  if (mr->mr == nullptr) throw Napi::Error::New(env, "memory region is deregistered");
  if (mr->owner != pd_) throw Napi::Error::New(env, "memory region belongs to another protection domain");
  if (offset < 0 || length < 0 || offset + length > static_cast<double>(mr->length)) {
    throw Napi::RangeError::New(env, "scatter-gather entry outside its memory region");
  }
  ibv_sge sge{};
  sge.addr = reinterpret_cast<uintptr_t>(mr->base) + static_cast<uint64_t>(offset);
  sge.length = static_cast<uint32_t>(length);
  sge.lkey = mr->mr->lkey;
  return sge;
}

// postSend(staging, count, objects) posts the first `count` work requests of the Uint32Array
// `staging` (kWrWords words each, laid out as above) as one list, e.g. RDMA WRITEs followed by
// the completion SEND. A flat boundary: numbers read from a typed array, and the regions and
// windows the requests name looked up by index in the array `objects`, instead of some twenty
// property lookups per work request. Every SGE is still checked against its region (this QP's
// PD, inside its bytes): JS can never point the NIC at memory it was not given.
// SendWithInvalidate is a SEND whose rkey word names the receiver's key to invalidate.
// BindWindow binds its window over its one SGE with the access in the rkey word, under the next
// key (ibv_inc_rkey); LocalInvalidate ends its window's current key. The list may hold several
// chains (SendQueue posts a JS turn's chains in one call); keys are tracked through the whole
// call, and one call binds a window at most once: vof rebinds a window only after its previous
// bind's key has died (the completion arrived: LOCAL_INV done or invalidated by the peer's SEND
// with Invalidate), so a second bind in one call is a bug.
Napi::Value QueuePair::PostSend(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (qp_ == nullptr) throw Napi::Error::New(env, "queue pair is destroyed");
  if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array || !info[2].IsArray()) {
    throw Napi::TypeError::New(env, "postSend(staging: Uint32Array, count, objects: Array)");
  }
  Napi::Uint32Array staging = info[0].As<Napi::Uint32Array>();
  uint32_t count = info[1].As<Napi::Number>().Uint32Value();
  Napi::Array objects = info[2].As<Napi::Array>();
  uint32_t nobjects = objects.Length();
  if (count == 0 || count > kMaxChain) throw Napi::RangeError::New(env, "postSend takes 1 to 64 work requests");
  if (staging.ElementLength() < static_cast<size_t>(count) * kWrWords) throw Napi::RangeError::New(env, "postSend: the staging area is shorter than its work requests");
  const uint32_t* words = staging.Data();
  auto object = [&](uint32_t index) {
    if (index >= nobjects) throw Napi::RangeError::New(env, "postSend: object index out of range");
    return objects.Get(index);
  };
  ibv_send_wr wrs[kMaxChain];
  ibv_sge sges[kMaxChain][kStagedSge];
  // Windows bound by this call, with the key each bind gives them (applied once posted).
  MemoryWindow* bound[kMaxChain];
  uint32_t boundKeys[kMaxChain];
  uint32_t nbound = 0;
  // The key a window has at this point of the call (a bind earlier in it changes it).
  auto keyOf = [&](MemoryWindow* w) {
    for (uint32_t k = 0; k < nbound; k++) {
      if (bound[k] == w) return boundKeys[k];
    }
    return w->rkey;
  };
  for (uint32_t i = 0; i < count; i++) {
    const uint32_t* w = words + static_cast<size_t>(i) * kWrWords;
    ibv_send_wr& wr = wrs[i];
    wr = ibv_send_wr{};
    wr.wr_id = w[0];
    uint32_t op = w[1];
    if ((w[2] & 1) != 0) wr.send_flags |= IBV_SEND_SIGNALED;
    uint32_t nsge = w[3];
    if (nsge > kStagedSge || nsge > maxSendSge_) throw Napi::RangeError::New(env, "too many scatter-gather entries for this QP");
    for (uint32_t j = 0; j < nsge; j++) sges[i][j] = ToSge(env, object(w[8 + 3 * j]), w[9 + 3 * j], w[10 + 3 * j]);
    wr.next = i + 1 < count ? &wrs[i + 1] : nullptr;
    if (op == kBindWindow || op == kLocalInvalidate) {
      MemoryWindow* mw = WindowOf(env, object(w[7]));
      if (op == kLocalInvalidate) {
        wr.opcode = IBV_WR_LOCAL_INV;
        wr.invalidate_rkey = keyOf(mw);
        continue;
      }
      for (uint32_t k = 0; k < nbound; k++) {
        if (bound[k] == mw) throw Napi::Error::New(env, "one postSend may bind a memory window once");
      }
      // Its one SGE: exactly the bytes the window exposes, inside the region.
      if (nsge != 1) throw Napi::TypeError::New(env, "a bind takes one scatter-gather entry: [region, offset, length]");
      const ibv_sge& range = sges[i][0];
      if (range.length == 0) throw Napi::RangeError::New(env, "a memory window cannot be bound to zero bytes");
      uint32_t access = w[4];
      if ((access & ~(IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE)) != 0) {
        throw Napi::RangeError::New(env, "a memory window grants REMOTE_READ and/or REMOTE_WRITE only");
      }
      wr.opcode = IBV_WR_BIND_MW;
      wr.bind_mw.mw = mw->mw;
      wr.bind_mw.rkey = ibv_inc_rkey(keyOf(mw));
      wr.bind_mw.bind_info.mr = MemoryRegion::Unwrap(object(w[8]).As<Napi::Object>())->mr;
      wr.bind_mw.bind_info.addr = range.addr;
      wr.bind_mw.bind_info.length = range.length;
      wr.bind_mw.bind_info.mw_access_flags = access;
      bound[nbound] = mw;
      boundKeys[nbound] = wr.bind_mw.rkey;
      nbound++;
      continue;
    }
    wr.sg_list = sges[i];
    wr.num_sge = static_cast<int>(nsge);
    if (op == kSend || op == kSendWithInvalidate) {
      wr.opcode = IBV_WR_SEND;
      if (op == kSendWithInvalidate) {
        // The receiver's NIC invalidates this key (one of the receiver's own) before it reports
        // the message: the peer's key dies with no work request of the peer's own.
        wr.opcode = IBV_WR_SEND_WITH_INV;
        wr.invalidate_rkey = w[4];
      }
    } else if (op == kWrite || op == kRead) {
      wr.opcode = op == kWrite ? IBV_WR_RDMA_WRITE : IBV_WR_RDMA_READ;
      wr.wr.rdma.remote_addr = (static_cast<uint64_t>(w[6]) << 32) | w[5];
      wr.wr.rdma.rkey = w[4];
    } else {
      throw Napi::RangeError::New(env, "unknown work request opcode");
    }
  }
  ibv_send_wr* bad = nullptr;
  int err = ibv_post_send(qp_, wrs, &bad);
  if (err != 0) ThrowErrno(env, "ibv_post_send", err);
  // Posted: the windows now carry their new keys (mw->rkey is what the provider checks the next
  // bind or invalidate against).
  for (uint32_t k = 0; k < nbound; k++) bound[k]->rkey = bound[k]->mw->rkey = boundKeys[k];
  return env.Undefined();
}

// postRecv(wrId, mr, offset, length)
Napi::Value QueuePair::PostRecv(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (qp_ == nullptr) throw Napi::Error::New(env, "queue pair is destroyed");
  ibv_sge sge = ToSge(env, info[1], info[2].As<Napi::Number>().DoubleValue(), info[3].As<Napi::Number>().DoubleValue());
  ibv_recv_wr wr{};
  wr.wr_id = info[0].As<Napi::Number>().Uint32Value();
  wr.sg_list = &sge;
  wr.num_sge = 1;
  ibv_recv_wr* bad = nullptr;
  int err = ibv_post_recv(qp_, &wr, &bad);
  if (err != 0) ThrowErrno(env, "ibv_post_recv", err);
  return env.Undefined();
}

// The live window a bind or invalidate names; it must be of this QP's PD.
MemoryWindow* QueuePair::WindowOf(Napi::Env env, Napi::Value value) {
  if (!value.IsObject()) throw Napi::TypeError::New(env, "this work request needs a MemoryWindow");
  auto* w = MemoryWindow::Unwrap(value.As<Napi::Object>());
  if (w->mw == nullptr) throw Napi::Error::New(env, "memory window is deallocated");
  if (w->owner != pd_) throw Napi::Error::New(env, "memory window belongs to another protection domain");
  return w;
}

// query() → { state, rnrRetry, retryCount, minRnrTimer, timeout }: what the QP was actually
// given (rdma_cm takes the send-side retry counts from the peer's CM message).
Napi::Value QueuePair::Query(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (qp_ == nullptr) throw Napi::Error::New(env, "queue pair is destroyed");
  ibv_qp_attr attr{};
  ibv_qp_init_attr init{};
  int err = ibv_query_qp(qp_, &attr, IBV_QP_STATE | IBV_QP_RNR_RETRY | IBV_QP_RETRY_CNT | IBV_QP_MIN_RNR_TIMER | IBV_QP_TIMEOUT, &init);
  if (err != 0) ThrowErrno(env, "ibv_query_qp", err);
  Napi::Object o = Napi::Object::New(env);
  o.Set("state", Napi::Number::New(env, attr.qp_state));
  o.Set("rnrRetry", Napi::Number::New(env, attr.rnr_retry));
  o.Set("retryCount", Napi::Number::New(env, attr.retry_cnt));
  o.Set("minRnrTimer", Napi::Number::New(env, attr.min_rnr_timer));
  o.Set("timeout", Napi::Number::New(env, attr.timeout));
  return o;
}

// modifyToError(): move the QP to the error state, as a fatal fabric or device error would: its
// posted work requests complete with IBV_WC_WR_FLUSH_ERR. For fault tests.
Napi::Value QueuePair::ModifyToError(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (qp_ == nullptr) throw Napi::Error::New(env, "queue pair is destroyed");
  ibv_qp_attr attr{};
  attr.qp_state = IBV_QPS_ERR;
  int err = ibv_modify_qp(qp_, &attr, IBV_QP_STATE);
  if (err != 0) ThrowErrno(env, "ibv_modify_qp", err);
  return env.Undefined();
}

}  // namespace vof
