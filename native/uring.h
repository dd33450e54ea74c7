// The few io_uring operations FileRing needs, straight on the kernel's interface
// (<linux/io_uring.h> and three system calls), so that the addon builds with nothing but a C++
// toolchain: no liburing. Names and return conventions follow liburing's (negative errno on
// failure) so the calling code reads the same. One thread only, no SQPOLL, no SQE128/CQE32.
//
// Memory ordering is the kernel's documented protocol: the application publishes SQEs with a
// store-release of the SQ tail and reads CQEs after a load-acquire of the CQ tail, and hands CQ
// slots back with a store-release of the CQ head.
#pragma once

#include <linux/io_uring.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace vof::uring {

struct Ring {
  int fd = -1;
  unsigned features = 0;
  // Submission ring.
  unsigned* sqHead = nullptr;
  unsigned* sqTail = nullptr;
  unsigned sqMask = 0;
  unsigned sqEntries = 0;
  unsigned* sqFlags = nullptr;
  io_uring_sqe* sqes = nullptr;
  unsigned sqeTail = 0;  // SQEs handed out by GetSqe, published to the kernel at Submit
  // Completion ring.
  unsigned* cqHead = nullptr;
  unsigned* cqTail = nullptr;
  unsigned cqMask = 0;
  unsigned* cqFlags = nullptr;  // null before Linux 5.8
  io_uring_cqe* cqes = nullptr;
  // Mappings.
  void* sqRing = nullptr;
  size_t sqRingBytes = 0;
  void* cqRing = nullptr;
  size_t cqRingBytes = 0;
  size_t sqesBytes = 0;
};

inline int Errno(long r) { return r < 0 ? -errno : static_cast<int>(r); }

inline int Enter(Ring* r, unsigned toSubmit, unsigned minComplete, unsigned flags) {
  for (;;) {
    long n = syscall(__NR_io_uring_enter, r->fd, toSubmit, minComplete, flags, nullptr, 0);
    if (n >= 0 || errno != EINTR) return Errno(n);
  }
}

inline void io_uring_queue_exit(Ring* r) {
  if (r->sqes) munmap(r->sqes, r->sqesBytes);
  if (r->cqRing && r->cqRing != r->sqRing) munmap(r->cqRing, r->cqRingBytes);
  if (r->sqRing) munmap(r->sqRing, r->sqRingBytes);
  if (r->fd >= 0) close(r->fd);
  *r = Ring{};
}

inline int io_uring_queue_init_params(unsigned entries, Ring* r, io_uring_params* p) {
  *r = Ring{};
  r->fd = static_cast<int>(syscall(__NR_io_uring_setup, entries, p));
  if (r->fd < 0) {
    int err = -errno;
    r->fd = -1;
    return err;
  }
  r->features = p->features;
  r->sqRingBytes = p->sq_off.array + p->sq_entries * sizeof(unsigned);
  r->cqRingBytes = p->cq_off.cqes + p->cq_entries * sizeof(io_uring_cqe);
  const bool single = (p->features & IORING_FEAT_SINGLE_MMAP) != 0;
  if (single) r->sqRingBytes = r->cqRingBytes = r->sqRingBytes > r->cqRingBytes ? r->sqRingBytes : r->cqRingBytes;
  void* sq = mmap(nullptr, r->sqRingBytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQ_RING);
  if (sq == MAP_FAILED) {
    int err = -errno;
    io_uring_queue_exit(r);
    return err;
  }
  r->sqRing = sq;
  void* cq = sq;
  if (!single) {
    cq = mmap(nullptr, r->cqRingBytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_CQ_RING);
    if (cq == MAP_FAILED) {
      int err = -errno;
      io_uring_queue_exit(r);
      return err;
    }
  }
  r->cqRing = cq;
  r->sqesBytes = p->sq_entries * sizeof(io_uring_sqe);
  void* sqes = mmap(nullptr, r->sqesBytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
  if (sqes == MAP_FAILED) {
    int err = -errno;
    io_uring_queue_exit(r);
    return err;
  }
  r->sqes = static_cast<io_uring_sqe*>(sqes);
  char* s = static_cast<char*>(sq);
  r->sqHead = reinterpret_cast<unsigned*>(s + p->sq_off.head);
  r->sqTail = reinterpret_cast<unsigned*>(s + p->sq_off.tail);
  r->sqMask = *reinterpret_cast<unsigned*>(s + p->sq_off.ring_mask);
  r->sqEntries = *reinterpret_cast<unsigned*>(s + p->sq_off.ring_entries);
  r->sqFlags = reinterpret_cast<unsigned*>(s + p->sq_off.flags);
  // SQE i always sits at array index i: SQEs are handed out and consumed in ring order.
  unsigned* array = reinterpret_cast<unsigned*>(s + p->sq_off.array);
  for (unsigned i = 0; i < r->sqEntries; i++) array[i] = i;
  r->sqeTail = *r->sqTail;
  char* c = static_cast<char*>(cq);
  r->cqHead = reinterpret_cast<unsigned*>(c + p->cq_off.head);
  r->cqTail = reinterpret_cast<unsigned*>(c + p->cq_off.tail);
  r->cqMask = *reinterpret_cast<unsigned*>(c + p->cq_off.ring_mask);
  r->cqFlags = p->cq_off.flags ? reinterpret_cast<unsigned*>(c + p->cq_off.flags) : nullptr;
  r->cqes = reinterpret_cast<io_uring_cqe*>(c + p->cq_off.cqes);
  return 0;
}

// The next free SQE, or null when the submission ring is full (submit first).
inline io_uring_sqe* io_uring_get_sqe(Ring* r) {
  unsigned head = __atomic_load_n(r->sqHead, __ATOMIC_ACQUIRE);
  if (r->sqeTail - head >= r->sqEntries) return nullptr;
  return &r->sqes[r->sqeTail++ & r->sqMask];
}

// Publishes the SQEs handed out so far and enters the kernel: returns how many it consumed.
inline int io_uring_submit_and_wait(Ring* r, unsigned waitNr) {
  unsigned tail = r->sqeTail;
  unsigned pending = tail - *r->sqTail;
  if (pending > 0) __atomic_store_n(r->sqTail, tail, __ATOMIC_RELEASE);
  // Completions the CQ could not hold wait in the kernel until an enter with GETEVENTS.
  bool overflow = (__atomic_load_n(r->sqFlags, __ATOMIC_RELAXED) & IORING_SQ_CQ_OVERFLOW) != 0;
  if (pending == 0 && waitNr == 0 && !overflow) return 0;
  return Enter(r, pending, waitNr, waitNr > 0 || overflow ? IORING_ENTER_GETEVENTS : 0);
}

inline int io_uring_submit(Ring* r) { return io_uring_submit_and_wait(r, 0); }

inline unsigned io_uring_cq_ready(const Ring* r) { return __atomic_load_n(r->cqTail, __ATOMIC_ACQUIRE) - *r->cqHead; }

inline void io_uring_cq_advance(Ring* r, unsigned n) {
  if (n > 0) __atomic_store_n(r->cqHead, *r->cqHead + n, __ATOMIC_RELEASE);
}

inline void io_uring_cqe_seen(Ring* r, io_uring_cqe*) { io_uring_cq_advance(r, 1); }

// Up to `count` completions without consuming them (io_uring_cq_advance does).
inline unsigned io_uring_peek_batch_cqe(Ring* r, io_uring_cqe** out, unsigned count) {
  unsigned ready = io_uring_cq_ready(r);
  if (ready == 0 && (__atomic_load_n(r->sqFlags, __ATOMIC_RELAXED) & IORING_SQ_CQ_OVERFLOW) != 0) {
    Enter(r, 0, 0, IORING_ENTER_GETEVENTS);  // bring the overflowed completions into the ring
    ready = io_uring_cq_ready(r);
  }
  unsigned n = ready < count ? ready : count;
  unsigned head = *r->cqHead;
  for (unsigned i = 0; i < n; i++) out[i] = &r->cqes[(head + i) & r->cqMask];
  return n;
}

inline int io_uring_peek_cqe(Ring* r, io_uring_cqe** cqe) {
  return io_uring_peek_batch_cqe(r, cqe, 1) == 1 ? 0 : (*cqe = nullptr, -EAGAIN);
}

inline int io_uring_wait_cqe(Ring* r, io_uring_cqe** cqe) {
  for (;;) {
    if (io_uring_peek_cqe(r, cqe) == 0) return 0;
    int err = Enter(r, 0, 1, IORING_ENTER_GETEVENTS);
    if (err < 0) return err;
  }
}

constexpr unsigned kProbeOps = 256;

inline io_uring_probe* io_uring_get_probe_ring(Ring* r) {
  size_t bytes = sizeof(io_uring_probe) + kProbeOps * sizeof(io_uring_probe_op);
  auto* probe = static_cast<io_uring_probe*>(calloc(1, bytes));
  if (!probe) return nullptr;
  if (syscall(__NR_io_uring_register, r->fd, IORING_REGISTER_PROBE, probe, kProbeOps) < 0) {
    free(probe);
    return nullptr;
  }
  return probe;
}

inline bool io_uring_opcode_supported(const io_uring_probe* p, int op) {
  return op <= p->last_op && (p->ops[op].flags & IO_URING_OP_SUPPORTED) != 0;
}

inline void io_uring_free_probe(io_uring_probe* p) { free(p); }

inline void PrepRw(io_uring_sqe* sqe, int op, int fd, const void* addr, unsigned len, __u64 off) {
  *sqe = io_uring_sqe{};
  sqe->opcode = static_cast<__u8>(op);
  sqe->fd = fd;
  sqe->off = off;
  sqe->addr = reinterpret_cast<unsigned long>(addr);
  sqe->len = len;
}

inline void io_uring_prep_nop(io_uring_sqe* sqe) { PrepRw(sqe, IORING_OP_NOP, -1, nullptr, 0, 0); }

inline void io_uring_prep_read(io_uring_sqe* sqe, int fd, void* buf, unsigned n, __u64 off) {
  PrepRw(sqe, IORING_OP_READ, fd, buf, n, off);
}

inline void io_uring_prep_write(io_uring_sqe* sqe, int fd, const void* buf, unsigned n, __u64 off) {
  PrepRw(sqe, IORING_OP_WRITE, fd, buf, n, off);
}

inline void io_uring_prep_fsync(io_uring_sqe* sqe, int fd, unsigned flags) {
  PrepRw(sqe, IORING_OP_FSYNC, fd, nullptr, 0, 0);
  sqe->fsync_flags = flags;
}

inline void io_uring_prep_cancel64(io_uring_sqe* sqe, __u64 userData, int flags) {
  PrepRw(sqe, IORING_OP_ASYNC_CANCEL, -1, nullptr, 0, 0);
  sqe->addr = userData;
  sqe->cancel_flags = static_cast<__u32>(flags);
}

inline void io_uring_sqe_set_data64(io_uring_sqe* sqe, __u64 data) { sqe->user_data = data; }

}  // namespace vof::uring
