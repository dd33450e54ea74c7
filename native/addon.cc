// vof's RDMA binding: thin, verb-shaped classes over libibverbs and librdmacm. Policy (what to
// post, when to close) lives in src/transport/rdma.
#include "addon.h"
#include "direct_io.h"
#include "file_ring.h"

namespace vof {

Constructors& CtorsOf(Napi::Env env) { return *env.GetInstanceData<Constructors>(); }

static Napi::Value ResourceCountsValue(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const ResourceCounts& c = Counts();
  Napi::Object o = Napi::Object::New(env);
  o.Set("eventChannels", c.eventChannels);
  o.Set("cmIds", c.cmIds);
  o.Set("protectionDomains", c.protectionDomains);
  o.Set("completionQueues", c.completionQueues);
  o.Set("queuePairs", c.queuePairs);
  o.Set("memoryRegions", c.memoryRegions);
  o.Set("registrationsTotal", c.registrationsTotal);
  o.Set("memoryWindows", c.memoryWindows);
  return o;
}

static Napi::Value WcStatusName(const Napi::CallbackInfo& info) {
  auto s = static_cast<ibv_wc_status>(info[0].As<Napi::Number>().Uint32Value());
  return Napi::String::New(info.Env(), ibv_wc_status_str(s));
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* ctors = new Constructors();
  Napi::Function cmId = CmId::Init(env);
  Napi::Function qp = QueuePair::Init(env);
  Napi::Function mr = MemoryRegion::Init(env);
  ctors->cmId = Napi::Persistent(cmId);
  ctors->queuePair = Napi::Persistent(qp);
  ctors->memoryRegion = Napi::Persistent(mr);
  env.SetInstanceData(ctors);
  exports.Set("EventChannel", EventChannel::Init(env));
  exports.Set("CmId", cmId);
  exports.Set("ProtectionDomain", ProtectionDomain::Init(env));
  exports.Set("MemoryRegion", mr);
  exports.Set("CompletionQueue", CompletionQueue::Init(env));
  exports.Set("QueuePair", qp);
  exports.Set("MemoryWindow", MemoryWindow::Init(env));
  exports.Set("listDevices", Napi::Function::New(env, ListDevices));
  exports.Set("resourceCounts", Napi::Function::New(env, ResourceCountsValue));
  exports.Set("wcStatusName", Napi::Function::New(env, WcStatusName));
  exports.Set("FileRing", FileRing::Init(env));
  exports.Set("addressRemainder", Napi::Function::New(env, AddressRemainder));
  exports.Set("directIoAlignment", Napi::Function::New(env, DirectIoAlignment));
  Napi::Object access = Napi::Object::New(env);
  access.Set("LOCAL_WRITE", Napi::Number::New(env, IBV_ACCESS_LOCAL_WRITE));
  access.Set("REMOTE_WRITE", Napi::Number::New(env, IBV_ACCESS_REMOTE_WRITE));
  access.Set("REMOTE_READ", Napi::Number::New(env, IBV_ACCESS_REMOTE_READ));
  access.Set("MW_BIND", Napi::Number::New(env, IBV_ACCESS_MW_BIND));
  exports.Set("access", access);
  return exports;
}

}  // namespace vof

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return vof::Init(env, exports); }

NODE_API_MODULE(vof_rdma, InitAddon)
