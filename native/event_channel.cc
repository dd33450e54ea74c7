#include "addon.h"

namespace vof {

Napi::Function EventChannel::Init(Napi::Env env) {
  return DefineClass(env, "EventChannel", {InstanceMethod<&EventChannel::Close>("close")});
}

EventChannel::EventChannel(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EventChannel>(info) {
  Napi::Env env = info.Env();
  if (!info[0].IsFunction()) throw Napi::TypeError::New(env, "EventChannel(onEvent: function)");
  channel = rdma_create_event_channel();
  if (channel == nullptr) ThrowErrno(env, "rdma_create_event_channel", errno);
  counted_.Add(env, &ResourceCounts::eventChannels);
  SetNonBlocking(env, channel->fd, "fcntl(cm event channel)");
  poll_ = WatchReadable(env, channel->fd, this, &EventChannel::OnReadable);
  onEvent_ = Napi::Persistent(info[0].As<Napi::Function>());
  // The open channel keeps its JS object (and so its callback) alive until close().
  Ref();
}

EventChannel::~EventChannel() { Release(); }

void EventChannel::Release() {
  StopWatching(poll_);
  if (channel != nullptr) {
    rdma_destroy_event_channel(channel);
    channel = nullptr;
    counted_.Drop();
  }
  // A strong root closing over the transport: released with the channel (see CompletionQueue).
  onEvent_.Reset();
}

Napi::Value EventChannel::Close(const Napi::CallbackInfo& info) {
  if (liveIds > 0) {
    throw Napi::Error::New(info.Env(), "EventChannel.close: " + std::to_string(liveIds) + " CM ids still use it");
  }
  if (channel != nullptr) {
    Release();
    Unref();
  }
  return info.Env().Undefined();
}

void EventChannel::OnReadable(uv_poll_t* handle, int status, int) {
  auto* self = static_cast<EventChannel*>(handle->data);
  if (status < 0) return;
  self->Drain();
}

static const char* EventName(rdma_cm_event_type t) {
  const char* s = rdma_event_str(t);
  const char* prefix = "RDMA_CM_EVENT_";
  return std::strncmp(s, prefix, std::strlen(prefix)) == 0 ? s + std::strlen(prefix) : s;
}

void EventChannel::Drain() {
  Napi::Env env = Env();
  Napi::HandleScope scope(env);
  while (channel != nullptr) {
    rdma_cm_event* ev = nullptr;
    if (rdma_get_cm_event(channel, &ev) != 0) return;  // EAGAIN: drained
    Napi::Object obj = Napi::Object::New(env);
    obj.Set("type", Napi::String::New(env, EventName(ev->event)));
    obj.Set("status", Napi::Number::New(env, ev->status));
    const void* priv = nullptr;
    uint8_t privLen = 0;
    if (ev->event == RDMA_CM_EVENT_CONNECT_REQUEST || ev->event == RDMA_CM_EVENT_ESTABLISHED ||
        ev->event == RDMA_CM_EVENT_REJECTED || ev->event == RDMA_CM_EVENT_CONNECT_RESPONSE) {
      priv = ev->param.conn.private_data;
      privLen = ev->param.conn.private_data_len;
    }
    if (priv != nullptr && privLen > 0) {
      obj.Set("privateData", Napi::Buffer<uint8_t>::Copy(env, static_cast<const uint8_t*>(priv), privLen));
    }
    if (ev->event == RDMA_CM_EVENT_CONNECT_REQUEST) {
      // A new id for the passive side; it shares this channel until destroyed.
      obj.Set("responderResources", Napi::Number::New(env, ev->param.conn.responder_resources));
      obj.Set("initiatorDepth", Napi::Number::New(env, ev->param.conn.initiator_depth));
      auto* listener = static_cast<CmId*>(ev->listen_id->context);
      Napi::Object child = CtorsOf(env).cmId.New({Value(), Napi::External<rdma_cm_id>::New(env, ev->id)});
      obj.Set("id", child);
      if (listener != nullptr) obj.Set("listenId", listener->Value());
    } else {
      auto* owner = static_cast<CmId*>(ev->id->context);
      if (owner != nullptr) obj.Set("id", owner->Value());
    }
    rdma_ack_cm_event(ev);
    CallFromLoop(env, onEvent_, Value(), {obj});
  }
}

}  // namespace vof
