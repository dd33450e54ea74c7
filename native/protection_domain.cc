#include "addon.h"

namespace vof {

Napi::Function ProtectionDomain::Init(Napi::Env env) {
  return DefineClass(env, "ProtectionDomain",
                     {
                         InstanceMethod<&ProtectionDomain::RegisterMemory>("registerMemory"),
                         InstanceMethod<&ProtectionDomain::Dealloc>("dealloc"),
                         InstanceMethod<&ProtectionDomain::Registrations>("registrations"),
                     });
}

// new ProtectionDomain(cmId): a PD on the device the id is bound or resolved to.
ProtectionDomain::ProtectionDomain(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ProtectionDomain>(info) {
  Napi::Env env = info.Env();
  auto* cmId = CmId::Unwrap(info[0].As<Napi::Object>());
  pd = ibv_alloc_pd(cmId->Verbs(env));
  if (pd == nullptr) ThrowErrno(env, "ibv_alloc_pd", errno ? errno : ENOMEM);
  counted_.Add(env, &ResourceCounts::protectionDomains);
}

// Reached only when no MR or QP holds this object any more.
ProtectionDomain::~ProtectionDomain() { Free(); }

void ProtectionDomain::Free() {
  if (pd == nullptr) return;
  ibv_dealloc_pd(pd);
  pd = nullptr;
  counted_.Drop();
}

void ProtectionDomain::RegionReleased() {
  liveRegions--;
  if (liveRegions == 0 && liveQueuePairs == 0 && deallocPending) Free();
}

void ProtectionDomain::QueuePairReleased() {
  liveQueuePairs--;
  if (liveRegions == 0 && liveQueuePairs == 0 && deallocPending) Free();
}

// registerMemory(buffer: Uint8Array, access: number) → MemoryRegion
Napi::Value ProtectionDomain::RegisterMemory(const Napi::CallbackInfo& info) {
  return CtorsOf(info.Env()).memoryRegion.New({Value(), info[0], info[1]});
}

Napi::Value ProtectionDomain::Dealloc(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (pd == nullptr) return Napi::Boolean::New(env, true);
  // Regions registered by someone else (a caller's own buffers), or queue pairs of connections
  // that share this PD, keep it until they go.
  if (liveRegions > 0 || liveQueuePairs > 0) {
    deallocPending = true;
    return Napi::Boolean::New(env, false);
  }
  int err = ibv_dealloc_pd(pd);
  if (err != 0) ThrowErrno(env, "ibv_dealloc_pd", err);
  pd = nullptr;
  counted_.Drop();
  return Napi::Boolean::New(env, true);
}

Napi::Function MemoryRegion::Init(Napi::Env env) {
  return DefineClass(env, "MemoryRegion", {InstanceMethod<&MemoryRegion::Deregister>("deregister")});
}

MemoryRegion::MemoryRegion(const Napi::CallbackInfo& info) : Napi::ObjectWrap<MemoryRegion>(info) {
  Napi::Env env = info.Env();
  owner = ProtectionDomain::Unwrap(info[0].As<Napi::Object>());
  if (owner->pd == nullptr || owner->deallocPending) throw Napi::Error::New(env, "registerMemory: the protection domain is deallocated");
  if (!info[1].IsTypedArray()) throw Napi::TypeError::New(env, "registerMemory(buffer: Uint8Array, access)");
  auto view = info[1].As<Napi::Uint8Array>();
  int access = info[2].As<Napi::Number>().Int32Value();
  // Remote writes need local write; nothing else is widened.
  if (access & IBV_ACCESS_REMOTE_WRITE) access |= IBV_ACCESS_LOCAL_WRITE;
  base = view.Data();
  length = view.ByteLength();
  if (length == 0) throw Napi::RangeError::New(env, "registerMemory: empty buffer");
  mr = ibv_reg_mr(owner->pd, base, length, access);
  if (mr == nullptr) ThrowErrno(env, "ibv_reg_mr", errno ? errno : ENOMEM);
  counted_.Add(env, &ResourceCounts::memoryRegions);
  EnvDataOf(env).counts->registrationsTotal++;
  owner->registrations++;
  owner->liveRegions++;
  bufferRef_ = Napi::Persistent(info[1].As<Napi::Object>());
  pdRef_ = Napi::Persistent(info[0].As<Napi::Object>());
  Napi::Object self = info.This().As<Napi::Object>();
  self.Set("lkey", Napi::Number::New(env, mr->lkey));
  self.Set("rkey", Napi::Number::New(env, mr->rkey));
  self.Set("address", Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(base))));
  self.Set("length", Napi::Number::New(env, static_cast<double>(length)));
  self.Set("buffer", info[1]);
}

MemoryRegion::~MemoryRegion() { Release(); }

void MemoryRegion::Release() {
  if (mr == nullptr) return;
  ibv_dereg_mr(mr);
  mr = nullptr;
  counted_.Drop();
  owner->RegionReleased();
  bufferRef_.Reset();
  pdRef_.Reset();
}

Napi::Value MemoryRegion::Deregister(const Napi::CallbackInfo& info) {
  Release();
  return info.Env().Undefined();
}

// registrations() → ibv_reg_mr calls made in this PD so far (cumulative).
Napi::Value ProtectionDomain::Registrations(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), registrations);
}

}  // namespace vof
