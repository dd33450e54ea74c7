#include "file_ring.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>

namespace vof {

using namespace uring;

namespace {
// user_data of the ring's own entries (the probe NOP, the exit-time cancel): never a slot.
constexpr uint64_t kInternalTag = ~0ull;
// The kernel caps one read/write at MAX_RW_COUNT (INT_MAX rounded down to a page).
constexpr double kMaxLength = 0x7ffff000;
constexpr double kMaxPosition = 9007199254740991.0;  // Number.MAX_SAFE_INTEGER
constexpr double kAsyncFromBytes = 64 * 1024;

bool IsCount(double v, double max) { return v >= 0 && v <= max && v == static_cast<double>(static_cast<uint64_t>(v)); }
}  // namespace

Napi::Function FileRing::Init(Napi::Env env) {
  return DefineClass(env, "FileRing",
                     {
                         InstanceMethod<&FileRing::Read>("read"),
                         InstanceMethod<&FileRing::Write>("write"),
                         InstanceMethod<&FileRing::Fsync>("fsync"),
                         InstanceMethod<&FileRing::Close>("close"),
                         InstanceAccessor<&FileRing::InFlight>("inFlight"),
                         InstanceAccessor<&FileRing::Wakes>("wakes"),
                     });
}

// new FileRing(entries, onCompletions(count)); this.completions, this.slots.
FileRing::FileRing(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FileRing>(info) {
  Napi::Env env = info.Env();
  env_ = env;
  uint32_t entries = info[0].IsNumber() ? info[0].As<Napi::Number>().Uint32Value() : 0;
  if (entries < 2 || entries > 4096 || !info[1].IsFunction()) {
    throw Napi::TypeError::New(env, "FileRing(entries: 2..4096, onCompletions: function)");
  }
  io_uring_params params{};
  int err = io_uring_queue_init_params(entries, &ring_, &params);
  if (err < 0) ThrowErrno(env, "io_uring_queue_init", -err);
  open_ = true;
  // From here on a throw must not leak the ring: Release() undoes what exists.
  auto fail = [&](const char* what, int e) {
    Release(false);
    ThrowErrno(env, what, e);
  };
  io_uring_probe* probe = io_uring_get_probe_ring(&ring_);
  bool ops = probe != nullptr && io_uring_opcode_supported(probe, IORING_OP_READ) &&
             io_uring_opcode_supported(probe, IORING_OP_WRITE) && io_uring_opcode_supported(probe, IORING_OP_FSYNC);
  if (probe != nullptr) io_uring_free_probe(probe);
  if (!ops) fail("io_uring probe (READ, WRITE and FSYNC need Linux 5.6 or later)", EOPNOTSUPP);
  // A round trip through the ring before anyone relies on it (a seccomp filter or a kernel that
  // refuses io_uring_enter shows up here, not at the first disk request).
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  io_uring_prep_nop(sqe);
  io_uring_sqe_set_data64(sqe, kInternalTag);
  err = io_uring_submit_and_wait(&ring_, 1);
  if (err < 0) fail("io_uring_enter", -err);
  io_uring_cqe* cqe = nullptr;
  err = io_uring_peek_cqe(&ring_, &cqe);
  if (err < 0) fail("io_uring_peek_cqe", -err);
  io_uring_cqe_seen(&ring_, cqe);

  slots_ = params.cq_entries;
  buffers_.assign(slots_, nullptr);
  busy_.assign(slots_, 0);
  Napi::Int32Array words = Napi::Int32Array::New(env, 2 * kBatch);
  resultWords_ = words.Data();
  results_ = Napi::Persistent(words.As<Napi::Object>());
  Napi::Object self = info.This().As<Napi::Object>();
  self.Set("completions", words);
  self.Set("slots", Napi::Number::New(env, slots_));
  onCompletions_ = Napi::Persistent(info[1].As<Napi::Function>());
  poll_ = static_cast<uv_poll_t*>(malloc(sizeof(uv_poll_t)));
  // libuv watches the ring's own descriptor: io_uring reports it readable while the completion
  // queue holds entries (level-triggered), so a wake costs no read of an eventfd, and the
  // completions reaped in the check phase leave nothing to wake the loop for.
  uv_poll_init(LoopOf(env), poll_, ring_.fd);
  poll_->data = this;
  uv_poll_start(poll_, UV_READABLE, &FileRing::OnReadable);
  // Idle, the ring keeps nothing alive: the loop is held only while I/O is in flight.
  uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
  prepare_ = static_cast<uv_prepare_t*>(malloc(sizeof(uv_prepare_t)));
  uv_prepare_init(LoopOf(env), prepare_);
  prepare_->data = this;
  uv_unref(reinterpret_cast<uv_handle_t*>(prepare_));
  check_ = static_cast<uv_check_t*>(malloc(sizeof(uv_check_t)));
  uv_check_init(LoopOf(env), check_);
  check_->data = this;
  uv_unref(reinterpret_cast<uv_handle_t*>(check_));
  if (napi_add_env_cleanup_hook(env, &FileRing::OnEnvCleanup, this) == napi_ok) cleanupHook_ = true;
  // Open, the ring is owned by its JS object; close() (or the environment's end) releases it.
  Ref();
}

FileRing::~FileRing() { Release(false); }

void FileRing::OnEnvCleanup(void* self) {
  auto* ring = static_cast<FileRing*>(self);
  ring->cleanupHook_ = false;  // a hook removes itself by running
  ring->Release(true);
}

// The one release path (close(), last completion after close(), destructor, environment end).
// Kernel I/O may still target a Buffer only while its reference is held, so anything in flight
// is cancelled and waited for before the references go.
//
// At the environment's end (envEnding) the handles are closed without a close callback and
// left allocated: a worker's loop runs its close callbacks after the addon may have been
// unloaded, and a callback into unmapped code would crash the process.
void FileRing::Release(bool envEnding) {
  if (!open_) return;
  WaitOutInFlight();
  open_ = false;
  closing_ = false;
  auto closeHandle = [envEnding](uv_handle_t* h) {
    if (envEnding) uv_close(h, nullptr);
    else uv_close(h, [](uv_handle_t* c) { free(c); });
  };
  if (prepare_ != nullptr) {
    uv_prepare_stop(prepare_);
    closeHandle(reinterpret_cast<uv_handle_t*>(prepare_));
    prepare_ = nullptr;
  }
  if (check_ != nullptr) {
    uv_check_stop(check_);
    closeHandle(reinterpret_cast<uv_handle_t*>(check_));
    check_ = nullptr;
  }
  flushArmed_ = false;
  if (poll_ != nullptr) {
    uv_poll_stop(poll_);
    closeHandle(reinterpret_cast<uv_handle_t*>(poll_));
    poll_ = nullptr;
  }
  io_uring_queue_exit(&ring_);
  for (napi_ref& ref : buffers_) {
    if (ref != nullptr) napi_delete_reference(env_, ref);
    ref = nullptr;
  }
  onCompletions_.Reset();
  if (cleanupHook_) napi_remove_env_cleanup_hook(env_, &FileRing::OnEnvCleanup, this);
  cleanupHook_ = false;
}

// Synchronous: only for teardown paths that cannot wait for the loop (environment end, GC).
void FileRing::WaitOutInFlight() {
  if (inFlight_ == 0) return;
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (sqe == nullptr) {
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  if (sqe != nullptr) {
    // Cancels what has not started (Linux 5.19+; older kernels answer EINVAL and we just wait).
    io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
    io_uring_sqe_set_data64(sqe, kInternalTag);
  }
  io_uring_submit(&ring_);
  unsubmitted_ = 0;
  while (inFlight_ > 0) {
    io_uring_cqe* cqe = nullptr;
    int err = io_uring_wait_cqe(&ring_, &cqe);
    if (err == -EINTR) continue;
    if (err < 0) break;  // the ring is broken: nothing more will complete
    uint64_t tag = cqe->user_data;
    io_uring_cqe_seen(&ring_, cqe);
    if (tag < slots_ && busy_[tag]) Settle(static_cast<uint32_t>(tag));
  }
}

Napi::Value FileRing::Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!open_) return Napi::Boolean::New(env, true);
  closing_ = true;
  if (inFlight_ > 0) return Napi::Boolean::New(env, false);  // released after the last completion
  Release(false);
  Unref();
  return Napi::Boolean::New(env, true);
}

Napi::Value FileRing::InFlight(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), inFlight_); }
Napi::Value FileRing::Wakes(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), wakes_); }

uint32_t FileRing::CheckSlot(Napi::Env env, Napi::Value v) {
  if (!open_ || closing_) throw Napi::Error::New(env, "FileRing is closed");
  uint32_t slot = v.As<Napi::Number>().Uint32Value();
  if (slot >= slots_) throw Napi::RangeError::New(env, "FileRing: slot out of range");
  if (busy_[slot]) throw Napi::Error::New(env, "FileRing: slot already in flight");
  return slot;
}

io_uring_sqe* FileRing::NextSqe(Napi::Env env) {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (sqe == nullptr) {
    // The submission queue is full of this turn's entries: hand them to the kernel now.
    int n = io_uring_submit(&ring_);
    if (n > 0) unsubmitted_ -= std::min<uint32_t>(unsubmitted_, n);
    sqe = io_uring_get_sqe(&ring_);
  }
  if (sqe == nullptr) throw Napi::Error::New(env, "FileRing: submission queue full");
  return sqe;
}

void FileRing::QueueRw(const Napi::CallbackInfo& info, bool write) {
  Napi::Env env = info.Env();
  uint32_t slot = CheckSlot(env, info[5]);
  int fd = info[0].As<Napi::Number>().Int32Value();
  napi_typedarray_type type;
  size_t byteLength = 0;
  void* data = nullptr;
  if (!info[1].IsTypedArray() ||
      napi_get_typedarray_info(env, info[1], &type, &byteLength, &data, nullptr, nullptr) != napi_ok ||
      type != napi_uint8_array) {
    throw Napi::TypeError::New(env, "FileRing: the buffer must be a Buffer or Uint8Array");
  }
  double offset = info[2].As<Napi::Number>().DoubleValue();
  double length = info[3].As<Napi::Number>().DoubleValue();
  double position = info[4].As<Napi::Number>().DoubleValue();
  if (!IsCount(offset, kMaxPosition) || !IsCount(length, kMaxLength) || length == 0 ||
      offset + length > static_cast<double>(byteLength) || !IsCount(position, kMaxPosition)) {
    throw Napi::RangeError::New(env, "FileRing: buffer range or file position out of range");
  }
  napi_ref ref = nullptr;
  if (napi_create_reference(env, info[1], 1, &ref) != napi_ok) throw Napi::Error::New(env, "FileRing: napi_create_reference failed");
  io_uring_sqe* sqe;
  try {
    sqe = NextSqe(env);
  } catch (...) {
    napi_delete_reference(env, ref);
    throw;
  }
  auto* at = static_cast<uint8_t*>(data) + static_cast<size_t>(offset);
  if (write) {
    io_uring_prep_write(sqe, fd, at, static_cast<unsigned>(length), static_cast<uint64_t>(position));
  } else {
    io_uring_prep_read(sqe, fd, at, static_cast<unsigned>(length), static_cast<uint64_t>(position));
  }
  io_uring_sqe_set_data64(sqe, slot);
  // A large transfer is copied by an io-wq worker rather than inline in io_uring_enter on the
  // event loop's thread: copies of several 128 KiB reads then run in parallel, and the loop
  // keeps serving the network (measured: 128 KiB reads QD8 ~25 % more IOPS than inline).
  if (length >= kAsyncFromBytes) sqe->flags |= IOSQE_ASYNC;
  buffers_[slot] = ref;
  Queued(slot);
}

Napi::Value FileRing::Read(const Napi::CallbackInfo& info) {
  QueueRw(info, false);
  return info.Env().Undefined();
}

Napi::Value FileRing::Write(const Napi::CallbackInfo& info) {
  QueueRw(info, true);
  return info.Env().Undefined();
}

// fsync(fd, datasync, slot)
Napi::Value FileRing::Fsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t slot = CheckSlot(env, info[2]);
  int fd = info[0].As<Napi::Number>().Int32Value();
  bool datasync = info[1].ToBoolean().Value();
  io_uring_sqe* sqe = NextSqe(env);
  io_uring_prep_fsync(sqe, fd, datasync ? IORING_FSYNC_DATASYNC : 0);
  io_uring_sqe_set_data64(sqe, slot);
  Queued(slot);
  return env.Undefined();
}

void FileRing::Queued(uint32_t slot) {
  busy_[slot] = 1;
  if (inFlight_++ == 0) uv_ref(reinterpret_cast<uv_handle_t*>(poll_));
  unsubmitted_++;
  ArmFlush();
}

// Entries queued during a loop turn are submitted together: in the check phase (after the poll
// phase's I/O callbacks queued them) or, for entries queued elsewhere (timers, immediates), in
// the prepare phase before the loop blocks.
void FileRing::ArmFlush() {
  if (flushArmed_) return;
  flushArmed_ = true;
  uv_prepare_start(prepare_, &FileRing::OnPrepare);
  uv_check_start(check_, &FileRing::OnCheck);
}

void FileRing::OnPrepare(uv_prepare_t* h) { static_cast<FileRing*>(h->data)->Flush(false); }
void FileRing::OnCheck(uv_check_t* h) { static_cast<FileRing*>(h->data)->Flush(true); }

void FileRing::Flush(bool deliver) {
  if (flushArmed_) {
    uv_prepare_stop(prepare_);
    uv_check_stop(check_);
    flushArmed_ = false;
  }
  if (!open_) return;
  // Cached reads complete inside io_uring_enter: the check phase hands them over now rather
  // than one loop turn later through a wake. JS must not run in the prepare phase (entries it
  // queued there would wait for the next turn while the loop blocks in poll), so only the check
  // phase does. What it reaps no longer makes the ring's descriptor readable: no wake follows.
  if (unsubmitted_ > 0) {
    int n = io_uring_submit(&ring_);
    if (n > 0) unsubmitted_ -= std::min<uint32_t>(unsubmitted_, n);
    // EINTR, EAGAIN, EBUSY (completion queue full): try again next turn.
    if (unsubmitted_ > 0) ArmFlush();
  }
  if (!deliver) return;
  Deliver();
}

void FileRing::OnReadable(uv_poll_t* handle, int status, int) {
  auto* self = static_cast<FileRing*>(handle->data);
  if (status < 0 || !self->open_) return;
  self->wakes_++;
  // Readable with an empty completion queue: the kernel holds completions back as task work
  // (or an overflow list); entering with GETEVENTS posts them, else the descriptor stays
  // readable and the loop would spin.
  if (io_uring_cq_ready(&self->ring_) == 0) uring::Enter(&self->ring_, 0, 0, IORING_ENTER_GETEVENTS);
  self->Deliver();
}

void FileRing::Settle(uint32_t slot) {
  busy_[slot] = 0;
  if (buffers_[slot] != nullptr) napi_delete_reference(env_, buffers_[slot]);
  buffers_[slot] = nullptr;
  if (--inFlight_ == 0 && poll_ != nullptr) uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
}

void FileRing::Deliver() {
  Napi::Env env = Env();
  Napi::HandleScope scope(env);
  io_uring_cqe* cqes[kBatch];
  while (open_) {
    unsigned n = io_uring_peek_batch_cqe(&ring_, cqes, kBatch);
    if (n == 0) break;
    uint32_t out = 0;
    for (unsigned i = 0; i < n; i++) {
      uint64_t tag = cqes[i]->user_data;
      if (tag >= slots_ || !busy_[tag]) continue;
      Settle(static_cast<uint32_t>(tag));
      resultWords_[2 * out] = static_cast<int32_t>(tag);
      resultWords_[2 * out + 1] = cqes[i]->res;
      out++;
    }
    io_uring_cq_advance(&ring_, n);
    if (out > 0) CallFromLoop(env, onCompletions_, Value(), {Napi::Number::New(env, out)});
    if (n < static_cast<unsigned>(kBatch)) break;
  }
  if (open_ && closing_ && inFlight_ == 0) {
    Release(false);
    Unref();
  }
}

}  // namespace vof
