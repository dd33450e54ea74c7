// vof's native addon: io_uring file I/O (FileRing), VDUSE (vduse.cc) and the RDMA binding, thin verb-shaped
// classes over libibverbs and librdmacm. Policy (what to post, when to close) lives in
// src/transport/rdma. The RDMA part is compiled only where rdma-core's headers exist
// (binding.gyp's vof_rdma) and loads rdma-core at run time (rdma_core.cc): `rdma` says whether it
// is compiled in, `rdmaLoadError` why it cannot be used here (undefined when it can).
#include "common.h"
#include "direct_io.h"
#include "file_ring.h"
#include "vduse.h"

#ifdef VOF_HAVE_RDMA
#include "addon.h"
#include "rdma_core.h"
#endif

namespace vof {

#ifdef VOF_HAVE_RDMA
Constructors& CtorsOf(Napi::Env env) { return *EnvDataOf(env).ctors; }
#endif

EnvData::~EnvData() {
#ifdef VOF_HAVE_RDMA
  delete ctors;
#endif
}

static Napi::Value ResourceCountsValue(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const ResourceCounts& c = *EnvDataOf(env).counts;
  Napi::Object o = Napi::Object::New(env);
  o.Set("eventChannels", c.eventChannels.load());
  o.Set("cmIds", c.cmIds.load());
  o.Set("protectionDomains", c.protectionDomains.load());
  o.Set("completionQueues", c.completionQueues.load());
  o.Set("queuePairs", c.queuePairs.load());
  o.Set("memoryRegions", c.memoryRegions.load());
  o.Set("registrationsTotal", static_cast<double>(c.registrationsTotal.load()));
  o.Set("memoryWindows", c.memoryWindows.load());
  return o;
}

#ifdef VOF_HAVE_RDMA
static Napi::Value WcStatusName(const Napi::CallbackInfo& info) {
  auto s = static_cast<ibv_wc_status>(info[0].As<Napi::Number>().Uint32Value());
  return Napi::String::New(info.Env(), ibv_wc_status_str(s));
}

// librdmacm opens a device's verbs context for the first CM id on it and keeps it open; it
// closes it only once it has noticed the device is gone (its device list is refreshed by
// rdma_get_devices, or by resolving to an unknown device) and no CM id uses it any more. The
// kernel's removal of a device whose driver cannot disassociate user contexts (rxe) waits for
// every process to close its contexts: without this refresh, `rdma link delete` waits forever.
// Returns the names of the devices present now.
static Napi::Value SyncDevices(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array names = Napi::Array::New(env);
  int n = 0;
  ibv_context** list = rdma_get_devices(&n);
  if (list == nullptr) return names;  // no device at all (ENODEV): nothing to refresh
  for (int i = 0; i < n && list[i] != nullptr; i++) names.Set(i, Napi::String::New(env, ibv_get_device_name(list[i]->device)));
  rdma_free_devices(list);
  return names;
}

static void InitRdma(Napi::Env env, Napi::Object exports) {
  auto* ctors = EnvDataOf(env).ctors = new Constructors();
  Napi::Function cmId = CmId::Init(env);
  Napi::Function qp = QueuePair::Init(env);
  Napi::Function mr = MemoryRegion::Init(env);
  ctors->cmId = Napi::Persistent(cmId);
  ctors->queuePair = Napi::Persistent(qp);
  ctors->memoryRegion = Napi::Persistent(mr);
  exports.Set("EventChannel", EventChannel::Init(env));
  exports.Set("CmId", cmId);
  exports.Set("ProtectionDomain", ProtectionDomain::Init(env));
  exports.Set("MemoryRegion", mr);
  exports.Set("CompletionQueue", CompletionQueue::Init(env));
  exports.Set("QueuePair", qp);
  exports.Set("MemoryWindow", MemoryWindow::Init(env));
  exports.Set("listDevices", Napi::Function::New(env, ListDevices));
  exports.Set("syncDevices", Napi::Function::New(env, SyncDevices));
  exports.Set("wcStatusName", Napi::Function::New(env, WcStatusName));
  Napi::Object access = Napi::Object::New(env);
  access.Set("LOCAL_WRITE", Napi::Number::New(env, IBV_ACCESS_LOCAL_WRITE));
  access.Set("REMOTE_WRITE", Napi::Number::New(env, IBV_ACCESS_REMOTE_WRITE));
  access.Set("REMOTE_READ", Napi::Number::New(env, IBV_ACCESS_REMOTE_READ));
  access.Set("MW_BIND", Napi::Number::New(env, IBV_ACCESS_MW_BIND));
  exports.Set("access", access);
}
#endif

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new EnvData());
  exports.Set("FileRing", FileRing::Init(env));
  exports.Set("addressRemainder", Napi::Function::New(env, AddressRemainder));
  exports.Set("directIoAlignment", Napi::Function::New(env, DirectIoAlignment));
  exports.Set("resourceCounts", Napi::Function::New(env, ResourceCountsValue));
  InitVduse(env, exports);
#ifdef VOF_HAVE_RDMA
  exports.Set("rdma", Napi::Boolean::New(env, true));
  if (const char* why = LoadRdmaCore()) {
    exports.Set("rdmaLoadError", Napi::String::New(env, why));
  } else {
    InitRdma(env, exports);
  }
#else
  exports.Set("rdma", Napi::Boolean::New(env, false));
#endif
  return exports;
}

}  // namespace vof

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return vof::Init(env, exports); }

NODE_API_MODULE(vof_rdma, InitAddon)
