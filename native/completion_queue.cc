#include "addon.h"

namespace vof {

Napi::Function CompletionQueue::Init(Napi::Env env) {
  return DefineClass(env, "CompletionQueue",
                     {
                         InstanceMethod<&CompletionQueue::Destroy>("destroy"),
                     });
}

// new CompletionQueue(cmId, cqe, onCompletions(count)); results in this.completions. A negative
// count (-errno) means the CQ could not be re-armed: no completion will be delivered again.
CompletionQueue::CompletionQueue(const Napi::CallbackInfo& info) : Napi::ObjectWrap<CompletionQueue>(info) {
  Napi::Env env = info.Env();
  ibv_context* verbs = CmId::Unwrap(info[0].As<Napi::Object>())->Verbs(env);
  int cqe = info[1].As<Napi::Number>().Int32Value();
  if (!info[2].IsFunction()) throw Napi::TypeError::New(env, "CompletionQueue(cmId, cqe, onCompletions)");
  channel_ = ibv_create_comp_channel(verbs);
  if (channel_ == nullptr) ThrowErrno(env, "ibv_create_comp_channel", errno);
  cq = ibv_create_cq(verbs, cqe, this, channel_, 0);
  if (cq == nullptr) {
    int err = errno;
    ibv_destroy_comp_channel(channel_);
    channel_ = nullptr;
    ThrowErrno(env, "ibv_create_cq", err);
  }
  counted_.Add(env, &ResourceCounts::completionQueues);
  // Soft-RoCE hands user space the kernel's work completions unconverted, and the kernel's flag
  // for "with invalidate" (IB_WC_WITH_INVALIDATE, 1 << 2) is not libibverbs' IBV_WC_WITH_INV
  // (1 << 3): seen on Linux 6.1. Missing it would make the initiator LOCAL_INV a window the
  // NIC already invalidated, which that same rxe turns into a kernel NULL dereference.
  ibv_device_attr attr{};
  if (ibv_query_device(verbs, &attr) == 0 && attr.vendor_id == kRxeVendorId) invalidatedFlags_ |= 1u << 2;
  SetNonBlocking(env, channel_->fd, "fcntl(completion channel)");
  int err = ibv_req_notify_cq(cq, 0);
  if (err != 0) ThrowErrno(env, "ibv_req_notify_cq", err);
  Napi::Uint32Array words = Napi::Uint32Array::New(env, kWords * kBatch);
  resultWords_ = words.Data();
  results_ = Napi::Persistent(words.As<Napi::Object>());
  info.This().As<Napi::Object>().Set("completions", words);
  info.This().As<Napi::Object>().Set("wordsPerCompletion", Napi::Number::New(env, kWords));
  onCompletions_ = Napi::Persistent(info[2].As<Napi::Function>());
  poll_ = WatchReadable(env, channel_->fd, this, &CompletionQueue::OnReadable);
  Ref();
}

CompletionQueue::~CompletionQueue() { Release(); }

void CompletionQueue::Release() {
  StopWatching(poll_);
  if (cq != nullptr) {
    if (unacked_ > 0) ibv_ack_cq_events(cq, unacked_);
    unacked_ = 0;
    ibv_destroy_cq(cq);
    cq = nullptr;
    counted_.Drop();
  }
  if (channel_ != nullptr) {
    ibv_destroy_comp_channel(channel_);
    channel_ = nullptr;
  }
  // The callback is a strong root; it usually closes over the connection that owns this CQ.
  // Kept after destroy(), it would keep that connection, its pools and their Buffers alive
  // forever (the cycle runs through a persistent handle, which the GC cannot collect).
  onCompletions_.Reset();
}

Napi::Value CompletionQueue::Destroy(const Napi::CallbackInfo& info) {
  if (liveQps > 0) throw Napi::Error::New(info.Env(), "CompletionQueue.destroy: a queue pair still uses it");
  if (cq != nullptr) {
    Release();
    Unref();
  }
  return info.Env().Undefined();
}

int CompletionQueue::PollInto(uint32_t* out) {
  ibv_wc wc[kBatch];
  int n = ibv_poll_cq(cq, kBatch, wc);
  for (int i = 0; i < n; i++) {
    uint32_t* w = out + kWords * i;
    w[0] = static_cast<uint32_t>(wc[i].wr_id);
    w[1] = wc[i].status;
    w[2] = wc[i].opcode;
    w[3] = wc[i].byte_len;
    // A receive whose SEND carried an invalidation: which of our keys the NIC invalidated.
    bool invalidated = wc[i].status == IBV_WC_SUCCESS && (wc[i].wc_flags & invalidatedFlags_) != 0;
    w[4] = invalidated ? 1 : 0;
    w[5] = invalidated ? wc[i].invalidated_rkey : 0;
  }
  return n;
}

void CompletionQueue::OnReadable(uv_poll_t* handle, int status, int) {
  if (status < 0) return;
  static_cast<CompletionQueue*>(handle->data)->OnEvent();
}

void CompletionQueue::OnEvent() {
  ibv_cq* evCq = nullptr;
  void* ctx = nullptr;
  while (channel_ != nullptr && ibv_get_cq_event(channel_, &evCq, &ctx) == 0) unacked_++;
  if (cq == nullptr) return;
  // Acks are batched: each one takes a mutex in the provider.
  if (unacked_ >= 64) {
    ibv_ack_cq_events(cq, unacked_);
    unacked_ = 0;
  }
  Napi::Env env = Env();
  Napi::HandleScope scope(env);
  // Drain, re-arm, drain again (the race-free pattern): what lands while the first drain's
  // completions are handled is taken in the same wake instead of raising another event, and a
  // completion that lands between the last poll and the re-arm is found by the second drain.
  Drain(env);
  if (cq == nullptr) return;
  int err = ibv_req_notify_cq(cq, 0);
  if (err != 0) {
    // Not re-armed, no event comes again: completions would stop without a word. Stop here and
    // tell JS with a negative count (-errno), which fails the queue.
    StopWatching(poll_);
    CallFromLoop(env, onCompletions_, Value(), {Napi::Number::New(env, -(err > 0 ? err : EIO))});
    return;
  }
  Drain(env);
}

// Delivers completions to JS in batches until the CQ is empty (or destroyed by a handler).
void CompletionQueue::Drain(Napi::Env env) {
  while (cq != nullptr) {
    int n = PollInto(resultWords_);
    if (n <= 0) break;
    CallFromLoop(env, onCompletions_, Value(), {Napi::Number::New(env, n)});
    if (n < kBatch) break;
  }
}

}  // namespace vof
