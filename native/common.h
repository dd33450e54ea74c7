// Shared helpers of the addon (RDMA and io_uring parts): resource counters, error helpers, the
// uv loop. Nothing here needs rdma-core: the io_uring part is built without it.
#pragma once

#include <napi.h>
#include <uv.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

namespace vof {

// Live native resources by kind, per Node.js environment: the main thread and each worker thread
// (its own isolate, loading the addon again) count what they created, so a leak check that
// compares a thread's counts with its own baseline is not moved by another thread's target or
// initiator, and no two threads ever write one counter. Each environment's objects are created
// and released on its thread; the counters stay atomic anyway so that reading them is never a
// data race whatever thread a future caller reads from (they change once per resource, not per
// I/O).
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

struct Constructors;  // addon.h (RDMA builds only)

// The addon's per-environment data (napi instance data): the counters and, in RDMA builds, the
// classes' constructors. The counters are shared with every counted object (see Counted): a
// worker's objects may be finalized during its environment's teardown, in whatever order Node
// runs finalizers, and must still find their counters.
struct EnvData {
  std::shared_ptr<ResourceCounts> counts = std::make_shared<ResourceCounts>();
  Constructors* ctors = nullptr;
  ~EnvData();
};
EnvData& EnvDataOf(Napi::Env env);

// One live native resource of one kind, counted in the environment that created it from Add()
// until Drop() (idempotent: every object has one release path, but Drop may be reached twice).
class Counted {
 public:
  void Add(Napi::Env env, std::atomic<int> ResourceCounts::*kind) {
    counts_ = EnvDataOf(env).counts;
    kind_ = kind;
    ((*counts_).*kind_)++;
  }
  void Drop() {
    if (!counts_) return;
    ((*counts_).*kind_)--;
    counts_.reset();
  }

 private:
  std::shared_ptr<ResourceCounts> counts_;
  std::atomic<int> ResourceCounts::*kind_ = nullptr;
};

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
