// Block-file I/O through io_uring, for the target's file exports: the kernel's interface directly
// (uring.h), so it is built wherever the addon is, with or without rdma-core. Where the kernel
// refuses io_uring, the constructor throws and JS falls back to libuv's thread pool.
#pragma once

#include "common.h"

#include <vector>

#include "uring.h"

namespace vof {

// One io_uring, owned by one JS object. Hot calls take flat numbers and a typed array:
//   read(fd, buffer, bufferOffset, length, position, slot)   write(...same)
//   fsync(fd, datasync 0|1, slot)
// `slot` (< this.slots) names the operation; its completion arrives in this.completions, an
// Int32Array of (slot, result) pairs, through onCompletions(count). Submissions are batched per
// event-loop turn (submitted in the loop's prepare and check phases); completions are signalled
// by the ring's own descriptor, watched by libuv (no eventfd). The Buffer of an operation stays
// referenced until its completion has been delivered. close(), the destructor and the environment's cleanup hook
// share one release path; with I/O in flight, close() defers it to the last completion and the
// cleanup hook (process or worker exit) cancels and waits for what is left.
class FileRing : public Napi::ObjectWrap<FileRing> {
 public:
  static constexpr int kBatch = 128;
  static Napi::Function Init(Napi::Env env);
  explicit FileRing(const Napi::CallbackInfo& info);
  ~FileRing() override;

 private:
  Napi::Value Read(const Napi::CallbackInfo& info);
  Napi::Value Write(const Napi::CallbackInfo& info);
  Napi::Value Fsync(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value InFlight(const Napi::CallbackInfo& info);
  Napi::Value Wakes(const Napi::CallbackInfo& info);

  void QueueRw(const Napi::CallbackInfo& info, bool write);
  uint32_t CheckSlot(Napi::Env env, Napi::Value v);
  io_uring_sqe* NextSqe(Napi::Env env);
  void Queued(uint32_t slot);
  void ArmFlush();
  void Flush(bool deliver);
  void Deliver();
  void Settle(uint32_t slot);
  void Release(bool envEnding);
  void WaitOutInFlight();
  static void OnPrepare(uv_prepare_t* h);
  static void OnCheck(uv_check_t* h);
  static void OnReadable(uv_poll_t* handle, int status, int events);
  static void OnEnvCleanup(void* self);

  uring::Ring ring_{};
  bool open_ = false;
  bool closing_ = false;
  bool flushArmed_ = false;
  bool cleanupHook_ = false;
  uint32_t slots_ = 0;
  uint32_t inFlight_ = 0;
  uint32_t unsubmitted_ = 0;
  // Times the ring's descriptor woke the loop (tests and stats: completions reaped in the check
  // phase should not cost one).
  double wakes_ = 0;
  std::vector<napi_ref> buffers_;  // per slot: the Buffer an operation reads into/writes from
  std::vector<uint8_t> busy_;
  uv_poll_t* poll_ = nullptr;
  uv_prepare_t* prepare_ = nullptr;
  uv_check_t* check_ = nullptr;
  napi_env env_ = nullptr;
  Napi::FunctionReference onCompletions_;
  Napi::ObjectReference results_;
  int32_t* resultWords_ = nullptr;
};

}  // namespace vof
