// The addon's classes and the per-environment constructor table.
#pragma once

#include "common.h"

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#include <vector>

namespace vof {

struct Constructors {
  Napi::FunctionReference cmId;
  Napi::FunctionReference queuePair;
  Napi::FunctionReference memoryRegion;
};
Constructors& CtorsOf(Napi::Env env);

class CmId;

// An RDMA CM event channel whose fd libuv watches: events arrive on the Node loop with no
// thread and no spinning.
class EventChannel : public Napi::ObjectWrap<EventChannel> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit EventChannel(const Napi::CallbackInfo& info);
  ~EventChannel() override;

  rdma_event_channel* channel = nullptr;
  int liveIds = 0;

 private:
  Counted counted_;  // this object in its environment's resource counts
  Napi::Value Close(const Napi::CallbackInfo& info);
  void Release();
  void Drain();
  static void OnReadable(uv_poll_t* handle, int status, int events);

  uv_poll_t* poll_ = nullptr;
  Napi::FunctionReference onEvent_;
};

class ProtectionDomain;
class CompletionQueue;
class QueuePair;

// One rdma_cm_id: listener, active side, or the passive side of an accepted connection.
class CmId : public Napi::ObjectWrap<CmId> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit CmId(const Napi::CallbackInfo& info);
  ~CmId() override;

  rdma_cm_id* id = nullptr;
  QueuePair* qp = nullptr;  // set by createQp, cleared by QueuePair::Release
  ibv_context* Verbs(Napi::Env env) const;

 private:
  Counted counted_;  // this object in its environment's resource counts
  Napi::Value Bind(const Napi::CallbackInfo& info);
  Napi::Value Listen(const Napi::CallbackInfo& info);
  Napi::Value ResolveAddr(const Napi::CallbackInfo& info);
  Napi::Value ResolveRoute(const Napi::CallbackInfo& info);
  Napi::Value Connect(const Napi::CallbackInfo& info);
  Napi::Value Accept(const Napi::CallbackInfo& info);
  Napi::Value Reject(const Napi::CallbackInfo& info);
  Napi::Value Disconnect(const Napi::CallbackInfo& info);
  Napi::Value CreateQp(const Napi::CallbackInfo& info);
  Napi::Value Destroy(const Napi::CallbackInfo& info);
  Napi::Value DestroyQp(const Napi::CallbackInfo& info);
  Napi::Value LocalAddress(const Napi::CallbackInfo& info);
  Napi::Value PeerAddress(const Napi::CallbackInfo& info);
  Napi::Value DeviceName(const Napi::CallbackInfo& info);
  Napi::Value MaxReadDepth(const Napi::CallbackInfo& info);
  void Release();
  rdma_cm_id* Live(Napi::Env env) const;

  EventChannel* channel_ = nullptr;
  Napi::ObjectReference channelRef_;
};

class ProtectionDomain : public Napi::ObjectWrap<ProtectionDomain> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit ProtectionDomain(const Napi::CallbackInfo& info);
  ~ProtectionDomain() override;

  ibv_pd* pd = nullptr;
  int liveRegions = 0;
  // Queue pairs created in this PD and not yet destroyed (a device PD serves many connections).
  int liveQueuePairs = 0;
  // ibv_reg_mr calls in this PD since it was allocated (cumulative).
  double registrations = 0;
  // dealloc() while regions or queue pairs use the PD defers to the last one's release.
  bool deallocPending = false;
  void RegionReleased();
  void QueuePairReleased();

 private:
  Counted counted_;  // this object in its environment's resource counts
  void Free();
  Napi::Value RegisterMemory(const Napi::CallbackInfo& info);
  Napi::Value Dealloc(const Napi::CallbackInfo& info);
  Napi::Value Registrations(const Napi::CallbackInfo& info);
};

// A registration of exactly one Buffer's bytes. It keeps the Buffer alive while registered, so
// the NIC never writes into memory the JS heap has reused.
class MemoryRegion : public Napi::ObjectWrap<MemoryRegion> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit MemoryRegion(const Napi::CallbackInfo& info);
  ~MemoryRegion() override;

  ibv_mr* mr = nullptr;
  ProtectionDomain* owner = nullptr;
  uint8_t* base = nullptr;
  size_t length = 0;

 private:
  Counted counted_;  // this object in its environment's resource counts
  Napi::Value Deregister(const Napi::CallbackInfo& info);
  void Release();
  Napi::ObjectReference bufferRef_;
  Napi::ObjectReference pdRef_;
};

// A type 2 memory window (native/memory_window.cc). `rkey` is the key of the latest bind posted
// through QueuePair.postSend; `mw->rkey` follows it once the bind is actually posted (the rxe
// provider hands the kernel mw->rkey as the key the window has before the bind).
class MemoryWindow : public Napi::ObjectWrap<MemoryWindow> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit MemoryWindow(const Napi::CallbackInfo& info);
  ~MemoryWindow() override;

  ibv_mw* mw = nullptr;
  ProtectionDomain* owner = nullptr;
  uint32_t rkey = 0;

 private:
  Counted counted_;  // this object in its environment's resource counts
  Napi::Value Dealloc(const Napi::CallbackInfo& info);
  Napi::Value Rkey(const Napi::CallbackInfo& info);
  void Release();
  Napi::ObjectReference pdRef_;
};

// A CQ with its completion channel watched by libuv. Completions reach JS in batches through
// a shared Uint32Array (kWords each, also given to JS as `wordsPerCompletion`).
class CompletionQueue : public Napi::ObjectWrap<CompletionQueue> {
 public:
  static constexpr int kBatch = 64;
  // Words per completion in `completions`: wr_id, status, opcode, byte_len, invalidated (0/1),
  // invalidated_rkey.
  static constexpr int kWords = 6;
  // rdma_rxe's vendor_id (RXE_VENDOR_ID).
  static constexpr uint32_t kRxeVendorId = 0xffffff;
  static Napi::Function Init(Napi::Env env);
  explicit CompletionQueue(const Napi::CallbackInfo& info);
  ~CompletionQueue() override;

  ibv_cq* cq = nullptr;
  int liveQps = 0;

 private:
  Counted counted_;  // this object in its environment's resource counts
  Napi::Value Destroy(const Napi::CallbackInfo& info);
  void Release();
  int PollInto(uint32_t* out);
  void OnEvent();
  void Drain(Napi::Env env);
  static void OnReadable(uv_poll_t* handle, int status, int events);

  ibv_comp_channel* channel_ = nullptr;
  // wc_flags bits that mean "this receive invalidated invalidated_rkey" on this device.
  uint32_t invalidatedFlags_ = IBV_WC_WITH_INV;
  uv_poll_t* poll_ = nullptr;
  unsigned unacked_ = 0;
  Napi::FunctionReference onCompletions_;
  Napi::ObjectReference results_;
  uint32_t* resultWords_ = nullptr;
};

class MemoryWindow;
class QueuePair : public Napi::ObjectWrap<QueuePair> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit QueuePair(const Napi::CallbackInfo& info);
  ~QueuePair() override;

  void Attach(CmId* cmId, Napi::Object cmIdObj, ProtectionDomain* pd, Napi::Object pdObj,
              CompletionQueue* cq, Napi::Object cqObj, ibv_qp* qp, uint32_t maxSendSge);
  void Release();

 private:
  Counted counted_;  // this object in its environment's resource counts
  Napi::Value PostSend(const Napi::CallbackInfo& info);
  Napi::Value PostRecv(const Napi::CallbackInfo& info);
  Napi::Value Query(const Napi::CallbackInfo& info);
  Napi::Value ModifyToError(const Napi::CallbackInfo& info);
  ibv_sge ToSge(Napi::Env env, Napi::Value mrValue, double offset, double length);
  MemoryWindow* WindowOf(Napi::Env env, Napi::Value value);

  ibv_qp* qp_ = nullptr;
  CmId* cmId_ = nullptr;
  ProtectionDomain* pd_ = nullptr;
  CompletionQueue* cq_ = nullptr;
  uint32_t maxSendSge_ = 1;
  Napi::ObjectReference cmIdRef_;
  Napi::ObjectReference pdRef_;
  Napi::ObjectReference cqRef_;
};

Napi::Value ListDevices(const Napi::CallbackInfo& info);

}  // namespace vof
