// Type 2 memory windows: remote access to a slice of a registered region that lasts exactly as
// long as one bind. Windows are bound and invalidated by work requests posted on a QP
// (QueuePair.postSend with the BindWindow and LocalInvalidate opcodes); this file only allocates
// and releases them.
#include "addon.h"

namespace vof {

Napi::Function MemoryWindow::Init(Napi::Env env) {
  return DefineClass(env, "MemoryWindow",
                     {
                         InstanceMethod<&MemoryWindow::Dealloc>("dealloc"),
                         InstanceAccessor<&MemoryWindow::Rkey>("rkey"),
                     });
}

// new MemoryWindow(pd): an unbound type 2 window in that protection domain.
MemoryWindow::MemoryWindow(const Napi::CallbackInfo& info) : Napi::ObjectWrap<MemoryWindow>(info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) throw Napi::TypeError::New(env, "new MemoryWindow(pd: ProtectionDomain)");
  owner = ProtectionDomain::Unwrap(info[0].As<Napi::Object>());
  if (owner->pd == nullptr || owner->deallocPending) throw Napi::Error::New(env, "MemoryWindow: the protection domain is deallocated");
  errno = 0;
  mw = ibv_alloc_mw(owner->pd, IBV_MW_TYPE_2);
  if (mw == nullptr) ThrowErrno(env, "ibv_alloc_mw", errno ? errno : EOPNOTSUPP);
  rkey = mw->rkey;
  counted_.Add(env, &ResourceCounts::memoryWindows);
  // A window pins its PD exactly like a region does (ibv_dealloc_pd fails while either exists).
  owner->liveRegions++;
  pdRef_ = Napi::Persistent(info[0].As<Napi::Object>());
}

MemoryWindow::~MemoryWindow() { Release(); }

// The one release path (dealloc() or garbage collection). A window still bound is invalidated
// by its deallocation: its rkey stops working at once.
void MemoryWindow::Release() {
  if (mw == nullptr) return;
  ibv_dealloc_mw(mw);
  mw = nullptr;
  counted_.Drop();
  owner->RegionReleased();
  pdRef_.Reset();
}

Napi::Value MemoryWindow::Dealloc(const Napi::CallbackInfo& info) {
  Release();
  return info.Env().Undefined();
}

// The rkey of the latest bind posted on this window (the key a remote peer must use).
Napi::Value MemoryWindow::Rkey(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), rkey); }

}  // namespace vof
