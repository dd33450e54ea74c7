// Shared helpers for the vof RDMA addon: resource counters, error helpers, the uv loop.
#pragma once

#include <napi.h>
#include <uv.h>
#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace vof {

// Live native resources by kind. Tests compare them with a baseline to prove that a vanished
// peer leaves nothing behind.
struct ResourceCounts {
  int eventChannels = 0;
  int cmIds = 0;
  int protectionDomains = 0;
  int completionQueues = 0;
  int queuePairs = 0;
  int memoryRegions = 0;
};
ResourceCounts& Counts();

// A JS Error whose message names the failing call and errno, with .code = the errno name.
[[noreturn]] void ThrowErrno(Napi::Env env, const char* what, int err);

uv_loop_t* LoopOf(Napi::Env env);

// Calls a JS callback from a libuv callback: a thrown exception becomes an uncaught exception
// of the process rather than being lost inside native code.
void CallFromLoop(Napi::Env env, Napi::FunctionReference& fn, Napi::Object recv,
                  const std::initializer_list<napi_value>& args);

// Makes an fd non-blocking so the uv_poll callbacks can drain it without ever blocking.
void SetNonBlocking(Napi::Env env, int fd, const char* what);

}  // namespace vof
