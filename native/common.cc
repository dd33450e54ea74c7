#include "common.h"

#include <fcntl.h>

namespace vof {

EnvData& EnvDataOf(Napi::Env env) { return *env.GetInstanceData<EnvData>(); }

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
  // The raw call, not node-addon-api's MakeCallback: that one turns a failed status into a C++
  // exception by creating a JS Error object, and while a worker thread is being terminated no JS
  // can run, so creating that Error is itself a fatal error ("Error::Error
  // napi_define_properties"). Completions that arrive then have nobody left to receive them.
  napi_value result;
  napi_status status = napi_make_callback(env, nullptr, recv, fn.Value(), args.size(), args.begin(), &result);
  if (status == napi_ok) return;
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) != napi_ok || !pending) return;  // environment ending
  // The callback threw: there is no JS frame above the loop to catch it, so it becomes the
  // process's (or worker's) uncaught exception, exactly as a throw from a libuv-driven JS
  // callback would.
  napi_value error;
  if (napi_get_and_clear_last_exception(env, &error) == napi_ok) napi_fatal_exception(env, error);
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
