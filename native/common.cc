#include "common.h"

#include <fcntl.h>

namespace vof {

ResourceCounts& Counts() {
  static ResourceCounts counts;
  return counts;
}

void ThrowErrno(Napi::Env env, const char* what, int err) {
  std::string msg = std::string(what) + " failed: " + std::strerror(err);
  Napi::Error e = Napi::Error::New(env, msg);
  const char* name = strerrorname_np(err);
  e.Set("code", Napi::String::New(env, name ? name : "EUNKNOWN"));
  e.Set("errno", Napi::Number::New(env, err));
  throw e;
}

uv_loop_t* LoopOf(Napi::Env env) {
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
    throw Napi::Error::New(env, "cannot get the libuv loop");
  }
  return loop;
}

void CallFromLoop(Napi::Env env, Napi::FunctionReference& fn, Napi::Object recv,
                  const std::initializer_list<napi_value>& args) {
  if (fn.IsEmpty()) return;  // released by destroy()/close() during an earlier callback
  try {
    fn.MakeCallback(recv, args);
  } catch (const Napi::Error& e) {
    napi_fatal_exception(env, e.Value());
  }
}

uv_poll_t* WatchReadable(Napi::Env env, int fd, void* data, uv_poll_cb cb) {
  auto* poll = new uv_poll_t;
  uv_poll_init(LoopOf(env), poll, fd);
  poll->data = data;
  uv_poll_start(poll, UV_READABLE, cb);
  return poll;
}

void StopWatching(uv_poll_t*& poll) {
  if (poll == nullptr) return;
  uv_poll_stop(poll);
  uv_close(reinterpret_cast<uv_handle_t*>(poll), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
  poll = nullptr;
}

void SetNonBlocking(Napi::Env env, int fd, const char* what) {
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) ThrowErrno(env, what, errno);
}

}  // namespace vof
