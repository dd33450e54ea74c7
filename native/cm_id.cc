#include "addon.h"

#include <arpa/inet.h>
#include <netinet/in.h>

namespace vof {

Napi::Function CmId::Init(Napi::Env env) {
  return DefineClass(env, "CmId",
                     {
                         InstanceMethod<&CmId::Bind>("bind"),
                         InstanceMethod<&CmId::Listen>("listen"),
                         InstanceMethod<&CmId::ResolveAddr>("resolveAddr"),
                         InstanceMethod<&CmId::ResolveRoute>("resolveRoute"),
                         InstanceMethod<&CmId::Connect>("connect"),
                         InstanceMethod<&CmId::Accept>("accept"),
                         InstanceMethod<&CmId::Reject>("reject"),
                         InstanceMethod<&CmId::Disconnect>("disconnect"),
                         InstanceMethod<&CmId::CreateQp>("createQp"),
                         InstanceMethod<&CmId::Destroy>("destroy"),
                         InstanceMethod<&CmId::DestroyQp>("destroyQp"),
                         InstanceMethod<&CmId::LocalAddress>("localAddress"),
                         InstanceMethod<&CmId::PeerAddress>("peerAddress"),
                         InstanceMethod<&CmId::DeviceName>("deviceName"),
                         InstanceMethod<&CmId::MaxReadDepth>("maxReadDepth"),
                     });
}

// new CmId(channel) creates an id; new CmId(channel, External) adopts a connection request's.
CmId::CmId(const Napi::CallbackInfo& info) : Napi::ObjectWrap<CmId>(info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) throw Napi::TypeError::New(env, "CmId(channel: EventChannel)");
  channel_ = EventChannel::Unwrap(info[0].As<Napi::Object>());
  if (channel_->channel == nullptr) throw Napi::Error::New(env, "CmId: the event channel is closed");
  if (info.Length() > 1 && info[1].IsExternal()) {
    id = info[1].As<Napi::External<rdma_cm_id>>().Data();
  } else if (rdma_create_id(channel_->channel, &id, nullptr, RDMA_PS_TCP) != 0) {
    ThrowErrno(env, "rdma_create_id", errno);
  }
  id->context = this;
  counted_.Add(env, &ResourceCounts::cmIds);
  channel_->liveIds++;
  channelRef_ = Napi::Persistent(info[0].As<Napi::Object>());
  // Events find this object through id->context: it lives until destroy().
  Ref();
}

CmId::~CmId() { Release(); }

void CmId::Release() {
  if (id == nullptr) return;
  if (qp != nullptr) qp->Release();
  rdma_destroy_id(id);
  id = nullptr;
  counted_.Drop();
  channel_->liveIds--;
  channelRef_.Reset();
}

rdma_cm_id* CmId::Live(Napi::Env env) const {
  if (id == nullptr) throw Napi::Error::New(env, "CM id already destroyed");
  return id;
}

ibv_context* CmId::Verbs(Napi::Env env) const {
  rdma_cm_id* cm = Live(env);
  if (cm->verbs == nullptr) throw Napi::Error::New(env, "CM id is not bound to an RDMA device yet (resolve or bind first)");
  return cm->verbs;
}

static sockaddr_storage ParseAddress(Napi::Env env, Napi::Value host, Napi::Value port) {
  sockaddr_storage ss{};
  std::string h = host.As<Napi::String>().Utf8Value();
  uint16_t p = static_cast<uint16_t>(port.As<Napi::Number>().Uint32Value());
  auto* v4 = reinterpret_cast<sockaddr_in*>(&ss);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (inet_pton(AF_INET, h.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(p);
  } else if (inet_pton(AF_INET6, h.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(p);
  } else {
    throw Napi::TypeError::New(env, "not a numeric IPv4 or IPv6 address: " + h);
  }
  return ss;
}

static Napi::Value AddressObject(Napi::Env env, const sockaddr* sa) {
  char buf[INET6_ADDRSTRLEN] = "";
  uint16_t port = 0;
  if (sa->sa_family == AF_INET) {
    auto* v4 = reinterpret_cast<const sockaddr_in*>(sa);
    inet_ntop(AF_INET, &v4->sin_addr, buf, sizeof buf);
    port = ntohs(v4->sin_port);
  } else if (sa->sa_family == AF_INET6) {
    auto* v6 = reinterpret_cast<const sockaddr_in6*>(sa);
    inet_ntop(AF_INET6, &v6->sin6_addr, buf, sizeof buf);
    port = ntohs(v6->sin6_port);
  } else {
    return env.Null();
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("host", Napi::String::New(env, buf));
  o.Set("port", Napi::Number::New(env, port));
  return o;
}

Napi::Value CmId::Bind(const Napi::CallbackInfo& info) {
  sockaddr_storage ss = ParseAddress(info.Env(), info[0], info[1]);
  if (rdma_bind_addr(Live(info.Env()), reinterpret_cast<sockaddr*>(&ss)) != 0) ThrowErrno(info.Env(), "rdma_bind_addr", errno);
  return info.Env().Undefined();
}

Napi::Value CmId::Listen(const Napi::CallbackInfo& info) {
  int backlog = info[0].IsNumber() ? info[0].As<Napi::Number>().Int32Value() : 128;
  if (rdma_listen(Live(info.Env()), backlog) != 0) ThrowErrno(info.Env(), "rdma_listen", errno);
  return info.Env().Undefined();
}

Napi::Value CmId::ResolveAddr(const Napi::CallbackInfo& info) {
  sockaddr_storage dst = ParseAddress(info.Env(), info[0], info[1]);
  int timeoutMs = info[2].As<Napi::Number>().Int32Value();
  if (rdma_resolve_addr(Live(info.Env()), nullptr, reinterpret_cast<sockaddr*>(&dst), timeoutMs) != 0) {
    ThrowErrno(info.Env(), "rdma_resolve_addr", errno);
  }
  return info.Env().Undefined();
}

Napi::Value CmId::ResolveRoute(const Napi::CallbackInfo& info) {
  int timeoutMs = info[0].As<Napi::Number>().Int32Value();
  if (rdma_resolve_route(Live(info.Env()), timeoutMs) != 0) ThrowErrno(info.Env(), "rdma_resolve_route", errno);
  return info.Env().Undefined();
}

// { responderResources, initiatorDepth, retryCount, rnrRetryCount, privateData? }
static rdma_conn_param ConnParam(Napi::Env env, Napi::Value v, std::string& privStore) {
  rdma_conn_param p{};
  if (!v.IsObject()) return p;
  Napi::Object o = v.As<Napi::Object>();
  auto num = [&](const char* k, uint32_t def) {
    Napi::Value x = o.Get(k);
    return x.IsNumber() ? x.As<Napi::Number>().Uint32Value() : def;
  };
  p.responder_resources = static_cast<uint8_t>(num("responderResources", 0));
  p.initiator_depth = static_cast<uint8_t>(num("initiatorDepth", 0));
  p.retry_count = static_cast<uint8_t>(num("retryCount", 7));
  p.rnr_retry_count = static_cast<uint8_t>(num("rnrRetryCount", 7));
  p.flow_control = 1;
  Napi::Value priv = o.Get("privateData");
  if (priv.IsBuffer()) {
    auto b = priv.As<Napi::Buffer<uint8_t>>();
    if (b.Length() > 56) throw Napi::RangeError::New(env, "privateData is limited to 56 bytes");
    privStore.assign(reinterpret_cast<const char*>(b.Data()), b.Length());
    p.private_data = privStore.data();
    p.private_data_len = static_cast<uint8_t>(b.Length());
  }
  return p;
}

Napi::Value CmId::Connect(const Napi::CallbackInfo& info) {
  std::string priv;
  rdma_conn_param p = ConnParam(info.Env(), info[0], priv);
  if (rdma_connect(Live(info.Env()), &p) != 0) ThrowErrno(info.Env(), "rdma_connect", errno);
  return info.Env().Undefined();
}

Napi::Value CmId::Accept(const Napi::CallbackInfo& info) {
  std::string priv;
  rdma_conn_param p = ConnParam(info.Env(), info[0], priv);
  if (rdma_accept(Live(info.Env()), &p) != 0) ThrowErrno(info.Env(), "rdma_accept", errno);
  return info.Env().Undefined();
}

Napi::Value CmId::Reject(const Napi::CallbackInfo& info) {
  if (rdma_reject(Live(info.Env()), nullptr, 0) != 0) ThrowErrno(info.Env(), "rdma_reject", errno);
  return info.Env().Undefined();
}

Napi::Value CmId::Disconnect(const Napi::CallbackInfo& info) {
  // EINVAL means "not connected (any more)": disconnecting twice is not an error for callers.
  if (rdma_disconnect(Live(info.Env())) != 0 && errno != EINVAL) ThrowErrno(info.Env(), "rdma_disconnect", errno);
  return info.Env().Undefined();
}

// createQp(pd, cq, { maxSendWr, maxRecvWr, maxSendSge, maxRecvSge }). No inline sends: vof's
// SENDs come from registered memory, so max_inline_data stays 0 (zero-initialised).
Napi::Value CmId::CreateQp(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  rdma_cm_id* cm = Live(env);
  if (qp != nullptr) throw Napi::Error::New(env, "this CM id already has a queue pair");
  auto* pd = ProtectionDomain::Unwrap(info[0].As<Napi::Object>());
  auto* cq = CompletionQueue::Unwrap(info[1].As<Napi::Object>());
  if (pd->pd == nullptr || cq->cq == nullptr) throw Napi::Error::New(env, "createQp: PD or CQ already released");
  Napi::Object caps = info[2].As<Napi::Object>();
  auto num = [&](const char* k) { return caps.Get(k).As<Napi::Number>().Uint32Value(); };
  ibv_qp_init_attr attr{};
  attr.qp_type = IBV_QPT_RC;
  attr.send_cq = cq->cq;
  attr.recv_cq = cq->cq;
  attr.sq_sig_all = 0;
  attr.cap.max_send_wr = num("maxSendWr");
  attr.cap.max_recv_wr = num("maxRecvWr");
  attr.cap.max_send_sge = num("maxSendSge");
  attr.cap.max_recv_sge = num("maxRecvSge");
  if (rdma_create_qp(cm, pd->pd, &attr) != 0) ThrowErrno(env, "rdma_create_qp", errno);
  Napi::Object obj = CtorsOf(env).queuePair.New({});
  auto* wrapper = QueuePair::Unwrap(obj);
  wrapper->Attach(this, Value(), pd, info[0].As<Napi::Object>(), cq, info[1].As<Napi::Object>(), cm->qp,
                  attr.cap.max_send_sge);
  qp = wrapper;
  return obj;
}

Napi::Value CmId::Destroy(const Napi::CallbackInfo& info) {
  if (id != nullptr) {
    Release();
    Unref();
  }
  return info.Env().Undefined();
}

// The QP alone, before the CQ, registrations and PD it uses: the CM id goes last, because the
// last CM id on a removed device is what makes librdmacm close that device's verbs context
// (see SyncDevices), and nothing may be left on a closed context.
Napi::Value CmId::DestroyQp(const Napi::CallbackInfo& info) {
  if (qp != nullptr) qp->Release();
  return info.Env().Undefined();
}

Napi::Value CmId::LocalAddress(const Napi::CallbackInfo& info) {
  return AddressObject(info.Env(), rdma_get_local_addr(Live(info.Env())));
}

Napi::Value CmId::PeerAddress(const Napi::CallbackInfo& info) {
  return AddressObject(info.Env(), rdma_get_peer_addr(Live(info.Env())));
}

Napi::Value CmId::DeviceName(const Napi::CallbackInfo& info) {
  rdma_cm_id* cm = Live(info.Env());
  if (cm->verbs == nullptr) return info.Env().Null();
  return Napi::String::New(info.Env(), ibv_get_device_name(cm->verbs->device));
}

// The most RDMA READs this device lets one QP have outstanding (for initiator_depth).
Napi::Value CmId::MaxReadDepth(const Napi::CallbackInfo& info) {
  ibv_device_attr attr{};
  int err = ibv_query_device(Verbs(info.Env()), &attr);
  if (err != 0) ThrowErrno(info.Env(), "ibv_query_device", err);
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("initiator", Napi::Number::New(info.Env(), attr.max_qp_init_rd_atom));
  o.Set("responder", Napi::Number::New(info.Env(), attr.max_qp_rd_atom));
  o.Set("maxSge", Napi::Number::New(info.Env(), attr.max_sge));
  o.Set("maxQpWr", Napi::Number::New(info.Env(), attr.max_qp_wr));
  o.Set("maxCqe", Napi::Number::New(info.Env(), attr.max_cqe));
  return o;
}

}  // namespace vof
