// Shared helpers of the addon (RDMA and io_uring parts): resource counters, error helpers, the
// uv loop. Nothing here needs rdma-core: the io_uring part is built without it.
#pragma once

#include <napi.h>
#include <uv.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

namespace vof {

// Live native resources by kind, for the whole process: the addon is loaded once per process
// but may run in several threads (worker_threads: a target in a worker beside an initiator in
// the main thread), so every counter is atomic. Tests compare them with a baseline to prove that
// a vanished peer leaves nothing behind.
struct ResourceCounts {
  std::atomic<int> eventChannels{0};
  std::atomic<int> cmIds{0};
  std::atomic<int> protectionDomains{0};
  std::atomic<int> completionQueues{0};
  std::atomic<int> queuePairs{0};
  std::atomic<int> memoryRegions{0};
  // Cumulative, never decremented: ibv_reg_mr calls that succeeded since the addon loaded. Tests
  // and `vof bench` compare it across a measurement to show no registration on the data path.
  std::atomic<int64_t> registrationsTotal{0};
  std::atomic<int> memoryWindows{0};
};
ResourceCounts& Counts();

// A JS Error whose message names the failing call and errno, with .code = the errno name.
[[noreturn]] void ThrowErrno(Napi::Env env, const char* what, int err);

uv_loop_t* LoopOf(Napi::Env env);

// Calls a JS callback from a libuv callback: a thrown exception becomes an uncaught exception
// of the process rather than being lost inside native code.
void CallFromLoop(Napi::Env env, Napi::FunctionReference& fn, Napi::Object recv,
                  const std::initializer_list<napi_value>& args);

// Watches `fd` for readability on the Node loop (calling `cb` with handle->data == data);
// StopWatching closes the handle, which libuv frees once closed.
uv_poll_t* WatchReadable(Napi::Env env, int fd, void* data, uv_poll_cb cb);
void StopWatching(uv_poll_t*& poll);

// Makes an fd non-blocking so the uv_poll callbacks can drain it without ever blocking.
void SetNonBlocking(Napi::Env env, int fd, const char* what);

}  // namespace vof
