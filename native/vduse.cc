#include "vduse.h"

#include <fcntl.h>
#include <linux/vduse.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace vof {

namespace {

constexpr double kMaxSafe = 9007199254740991.0;  // Number.MAX_SAFE_INTEGER

// A u64 from the kernel as a JS number: -1 when a double cannot hold it exactly (JS refuses it).
double SafeNumber(uint64_t v) { return v > static_cast<uint64_t>(kMaxSafe) ? -1 : static_cast<double>(v); }

uint64_t U64Arg(Napi::Env env, Napi::Value v, const char* what) {
  if (v.IsBigInt()) {
    bool lossless = false;
    uint64_t r = v.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) throw Napi::RangeError::New(env, std::string(what) + ": not a u64");
    return r;
  }
  if (!v.IsNumber()) throw Napi::TypeError::New(env, std::string(what) + ": a number or bigint");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= kMaxSafe) || d != static_cast<double>(static_cast<uint64_t>(d))) {
    throw Napi::RangeError::New(env, std::string(what) + ": not a safe non-negative integer");
  }
  return static_cast<uint64_t>(d);
}

uint32_t U32Arg(Napi::Env env, Napi::Value v, const char* what) {
  if (!v.IsNumber()) throw Napi::TypeError::New(env, std::string(what) + ": a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= 4294967295.0) || d != static_cast<double>(static_cast<uint32_t>(d))) {
    throw Napi::RangeError::New(env, std::string(what) + ": not a u32");
  }
  return static_cast<uint32_t>(d);
}

std::string NameArg(Napi::Env env, Napi::Value v) {
  if (!v.IsString()) throw Napi::TypeError::New(env, "VDUSE device name: a string");
  std::string name = v.As<Napi::String>().Utf8Value();
  // The kernel makes /dev/vduse/NAME of it: no path separators, and it must fit with its NUL.
  if (name.empty() || name.size() >= VDUSE_NAME_MAX || name.find('/') != std::string::npos || name == "." || name == ".." ||
      name == "control") {
    throw Napi::RangeError::New(env, "VDUSE device name: 1.." + std::to_string(VDUSE_NAME_MAX - 1) + " bytes, no '/', not control");
  }
  return name;
}

// Live IOVA mappings (external Buffers not yet finalized): tests check that they go away.
int liveMappings = 0;

// `length` bytes mmapped at `p` as a Buffer that owns them: munmapped (and uncounted) when the
// GC finalizes it, never before.
Napi::Buffer<uint8_t> MappedBuffer(Napi::Env env, void* p, size_t length) {
  liveMappings++;
  return Napi::Buffer<uint8_t>::New(
      env, static_cast<uint8_t*>(p), length,
      [](Napi::Env, uint8_t* data, size_t* len) {
        munmap(data, *len);
        liveMappings--;
        delete len;
      },
      new size_t(length));
}

}  // namespace

// /dev/vduse/control: creates and destroys VDUSE devices. One fd, released by close() or the
// destructor.
class VduseControl : public Napi::ObjectWrap<VduseControl> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "VduseControl",
                       {
                           InstanceMethod<&VduseControl::CreateDevice>("createDevice"),
                           InstanceMethod<&VduseControl::DestroyDevice>("destroyDevice"),
                           InstanceMethod<&VduseControl::Close>("close"),
                       });
  }

  // new VduseControl(path = "/dev/vduse/control")
  explicit VduseControl(const Napi::CallbackInfo& info) : Napi::ObjectWrap<VduseControl>(info) {
    Napi::Env env = info.Env();
    std::string path = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "/dev/vduse/control";
    fd_ = open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd_ < 0) ThrowErrno(env, ("open " + path).c_str(), errno);
    uint64_t version = VDUSE_API_VERSION;
    if (ioctl(fd_, VDUSE_SET_API_VERSION, &version) < 0) {
      int e = errno;
      Release();
      ThrowErrno(env, "VDUSE_SET_API_VERSION", e);
    }
  }
  ~VduseControl() override { Release(); }

 private:
  int Live(Napi::Env env) {
    if (fd_ < 0) throw Napi::Error::New(env, "VduseControl is closed");
    return fd_;
  }

  // createDevice(name, features: bigint, vqNum, vqAlign, config: Buffer)
  Napi::Value CreateDevice(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = Live(env);
    std::string name = NameArg(env, info[0]);
    uint64_t features = U64Arg(env, info[1], "features");
    uint32_t vqNum = U32Arg(env, info[2], "vqNum");
    uint32_t vqAlign = U32Arg(env, info[3], "vqAlign");
    if (!info[4].IsBuffer()) throw Napi::TypeError::New(env, "createDevice: config must be a Buffer");
    auto config = info[4].As<Napi::Buffer<uint8_t>>();
    if (config.Length() > 4096) throw Napi::RangeError::New(env, "createDevice: config space larger than a page");
    std::vector<uint8_t> raw(sizeof(vduse_dev_config) + config.Length(), 0);
    auto* c = reinterpret_cast<vduse_dev_config*>(raw.data());
    std::memcpy(c->name, name.data(), name.size());
    c->vendor_id = 0x1af4;  // virtio's PCI vendor id, as QEMU and every virtio device use
    c->device_id = 2;       // virtio-blk
    c->features = features;
    c->vq_num = vqNum;
    c->vq_align = vqAlign;
    c->config_size = static_cast<uint32_t>(config.Length());
    std::memcpy(c->config, config.Data(), config.Length());
    if (ioctl(fd, VDUSE_CREATE_DEV, c) < 0) ThrowErrno(env, "VDUSE_CREATE_DEV", errno);
    return env.Undefined();
  }

  // destroyDevice(name): 0, or the errno (EBUSY while the device fd is open or the vdpa device
  // exists, EINVAL when there is no such device): the caller decides whether to retry.
  Napi::Value DestroyDevice(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = Live(env);
    std::string name = NameArg(env, info[0]);
    char buf[VDUSE_NAME_MAX] = {0};
    std::memcpy(buf, name.data(), name.size());
    int r = ioctl(fd, VDUSE_DESTROY_DEV, buf);
    return Napi::Number::New(env, r < 0 ? errno : 0);
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Release();
    return info.Env().Undefined();
  }

  void Release() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

  int fd_ = -1;
};

// /dev/vduse/NAME: the device's messages (read/write), its virtqueues' ioctls, the IOVA
// mappings and the kick eventfds. Readiness of the device fd and of every kick eventfd reaches
// one JS callback, onReady(kind, index): kind 0 = a message to read (index 0), kind 1 = a kick of
// virtqueue `index` (the eventfd is already drained). close() and the destructor share Release().
class VduseDevice : public Napi::ObjectWrap<VduseDevice> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "VduseDevice",
                       {
                           InstanceMethod<&VduseDevice::SetupVq>("setupVq"),
                           InstanceMethod<&VduseDevice::VqInfo>("vqInfo"),
                           InstanceMethod<&VduseDevice::SetupKick>("setupKick"),
                           InstanceMethod<&VduseDevice::ClearKick>("clearKick"),
                           InstanceMethod<&VduseDevice::InjectIrq>("injectIrq"),
                           InstanceMethod<&VduseDevice::ReadRequest>("readRequest"),
                           InstanceMethod<&VduseDevice::WriteResponse>("writeResponse"),
                           InstanceMethod<&VduseDevice::SetConfig>("setConfig"),
                           InstanceMethod<&VduseDevice::InjectConfigIrq>("injectConfigIrq"),
                           InstanceMethod<&VduseDevice::GetFeatures>("getFeatures"),
                           InstanceMethod<&VduseDevice::MapIova>("mapIova"),
                           InstanceMethod<&VduseDevice::RegisterBounceMemory>("registerBounceMemory"),
                           InstanceMethod<&VduseDevice::DeregisterBounceMemory>("deregisterBounceMemory"),
                           InstanceMethod<&VduseDevice::Close>("close"),
                           StaticValue("requestBytes", Napi::Number::New(env, sizeof(vduse_dev_request))),
                           StaticValue("responseBytes", Napi::Number::New(env, sizeof(vduse_dev_response))),
                       });
  }

  // new VduseDevice(name, onReady(kind, index), dir = "/dev/vduse")
  explicit VduseDevice(const Napi::CallbackInfo& info) : Napi::ObjectWrap<VduseDevice>(info) {
    Napi::Env env = info.Env();
    std::string name = NameArg(env, info[0]);
    if (!info[1].IsFunction()) throw Napi::TypeError::New(env, "VduseDevice(name, onReady: function)");
    std::string dir = info[2].IsString() ? info[2].As<Napi::String>().Utf8Value() : "/dev/vduse";
    std::string path = dir + "/" + name;
    fd_ = open(path.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd_ < 0) ThrowErrno(env, ("open " + path).c_str(), errno);
    onReady_ = Napi::Persistent(info[1].As<Napi::Function>());
    deviceWatch_ = Watch(env, fd_, 0, 0);
    // Open, the device is owned by its JS object and keeps it (and its callback) alive: close()
    // releases it.
    Ref();
  }
  ~VduseDevice() override { Release(); }

 private:
  struct Watcher {
    VduseDevice* owner;
    int kind;
    uint32_t index;
    int fd;
    uv_poll_t* poll;
  };

  Watcher* Watch(Napi::Env env, int fd, int kind, uint32_t index) {
    auto* w = new Watcher{this, kind, index, fd, nullptr};
    w->poll = WatchReadable(env, fd, w, &VduseDevice::OnReadable);
    return w;
  }

  static void Unwatch(Watcher*& w) {
    if (w == nullptr) return;
    StopWatching(w->poll);
    delete w;
    w = nullptr;
  }

  static void OnReadable(uv_poll_t* handle, int status, int) {
    auto* w = static_cast<Watcher*>(handle->data);
    VduseDevice* self = w->owner;
    if (self->fd_ < 0) return;
    int kind = w->kind;
    uint32_t index = w->index;
    if (kind == 1) {
      // Drain the counter first: a kick that lands while JS runs wakes the loop again.
      uint64_t n;
      while (read(w->fd, &n, sizeof(n)) == sizeof(n)) {
      }
    }
    Napi::Env env = self->Env();
    Napi::HandleScope scope(env);
    // A poll error on the device fd (the kernel marks a broken device EPOLLERR) is reported as
    // readable: the JS read then fails and says why.
    (void)status;
    CallFromLoop(env, self->onReady_, self->Value(), {Napi::Number::New(env, kind), Napi::Number::New(env, index)});
  }

  int Live(Napi::Env env) {
    if (fd_ < 0) throw Napi::Error::New(env, "VduseDevice is closed");
    return fd_;
  }

  // setupVq(index, maxSize)
  Napi::Value SetupVq(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = Live(env);
    vduse_vq_config c{};
    c.index = U32Arg(env, info[0], "index");
    uint32_t max = U32Arg(env, info[1], "maxSize");
    if (max == 0 || max > 32768) throw Napi::RangeError::New(env, "setupVq: maxSize 1..32768");
    c.max_size = static_cast<uint16_t>(max);
    if (ioctl(fd, VDUSE_VQ_SETUP, &c) < 0) ThrowErrno(env, "VDUSE_VQ_SETUP", errno);
    return env.Undefined();
  }

  // vqInfo(index) → { num, descAddr, driverAddr, deviceAddr, availIdx, ready } (an address the
  // kernel gives above 2^53-1 is -1)
  Napi::Value VqInfo(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = Live(env);
    vduse_vq_info q{};
    q.index = U32Arg(env, info[0], "index");
    if (ioctl(fd, VDUSE_VQ_GET_INFO, &q) < 0) ThrowErrno(env, "VDUSE_VQ_GET_INFO", errno);
    Napi::Object o = Napi::Object::New(env);
    o.Set("num", Napi::Number::New(env, q.num));
    o.Set("descAddr", Napi::Number::New(env, SafeNumber(q.desc_addr)));
    o.Set("driverAddr", Napi::Number::New(env, SafeNumber(q.driver_addr)));
    o.Set("deviceAddr", Napi::Number::New(env, SafeNumber(q.device_addr)));
    o.Set("availIdx", Napi::Number::New(env, q.split.avail_index));
    o.Set("ready", Napi::Boolean::New(env, q.ready != 0));
    return o;
  }

  // setupKick(index): a new eventfd for virtqueue `index`, handed to the kernel and watched.
  Napi::Value SetupKick(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = Live(env);
    uint32_t index = U32Arg(env, info[0], "index");
    if (index > 0xffff) throw Napi::RangeError::New(env, "setupKick: index");
    DropKick(fd, index);
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd < 0) ThrowErrno(env, "eventfd", errno);
    vduse_vq_eventfd e{};
    e.index = index;
    e.fd = efd;
    if (ioctl(fd, VDUSE_VQ_SETUP_KICKFD, &e) < 0) {
      int err = errno;
      close(efd);
      ThrowErrno(env, "VDUSE_VQ_SETUP_KICKFD", err);
    }
    if (kicks_.size() <= index) kicks_.resize(index + 1, nullptr);
    kicks_[index] = Watch(env, efd, 1, index);
    return env.Undefined();
  }

  Napi::Value ClearKick(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = Live(env);
    DropKick(fd, U32Arg(env, info[0], "index"));
    return env.Undefined();
  }

  // The one release path of a kick eventfd: the kernel lets go of it, then we stop and close.
  void DropKick(int fd, uint32_t index) {
    if (index >= kicks_.size() || kicks_[index] == nullptr) return;
    if (fd >= 0) {
      vduse_vq_eventfd e{};
      e.index = index;
      e.fd = VDUSE_EVENTFD_DEASSIGN;
      ioctl(fd, VDUSE_VQ_SETUP_KICKFD, &e);  // fails only for a bad index: nothing to undo
    }
    int efd = kicks_[index]->fd;
    Unwatch(kicks_[index]);
    close(efd);
  }

  // injectIrq(index) → 0 or the errno (EINVAL before DRIVER_OK): the hot path does not throw.
  Napi::Value InjectIrq(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t index = info[0].As<Napi::Number>().Uint32Value();
    if (fd_ < 0) return Napi::Number::New(env, EBADF);
    int r = ioctl(fd_, VDUSE_VQ_INJECT_IRQ, &index);
    return Napi::Number::New(env, r < 0 ? errno : 0);
  }

  // readRequest(buf) → bytes read (requestBytes), or 0 when no message is waiting.
  Napi::Value ReadRequest(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = Live(env);
    if (!info[0].IsBuffer()) throw Napi::TypeError::New(env, "readRequest(buf: Buffer)");
    auto buf = info[0].As<Napi::Buffer<uint8_t>>();
    if (buf.Length() < sizeof(vduse_dev_request)) throw Napi::RangeError::New(env, "readRequest: buffer too small");
    ssize_t n = read(fd, buf.Data(), sizeof(vduse_dev_request));
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) return Napi::Number::New(env, 0);
      ThrowErrno(env, "read VDUSE request", errno);
    }
    return Napi::Number::New(env, static_cast<double>(n));
  }

  // writeResponse(buf): one struct vduse_dev_response.
  Napi::Value WriteResponse(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = Live(env);
    if (!info[0].IsBuffer()) throw Napi::TypeError::New(env, "writeResponse(buf: Buffer)");
    auto buf = info[0].As<Napi::Buffer<uint8_t>>();
    if (buf.Length() != sizeof(vduse_dev_response)) throw Napi::RangeError::New(env, "writeResponse: one vduse_dev_response");
    ssize_t n;
    do {
      n = write(fd, buf.Data(), buf.Length());
    } while (n < 0 && errno == EINTR);
    if (n < 0) ThrowErrno(env, "write VDUSE response", errno);
    return env.Undefined();
  }

  // setConfig(offset, bytes: Buffer)
  Napi::Value SetConfig(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = Live(env);
    uint32_t offset = U32Arg(env, info[0], "offset");
    if (!info[1].IsBuffer()) throw Napi::TypeError::New(env, "setConfig(offset, bytes: Buffer)");
    auto bytes = info[1].As<Napi::Buffer<uint8_t>>();
    if (bytes.Length() == 0 || bytes.Length() > 4096) throw Napi::RangeError::New(env, "setConfig: 1..4096 bytes");
    std::vector<uint8_t> raw(sizeof(vduse_config_data) + bytes.Length(), 0);
    auto* c = reinterpret_cast<vduse_config_data*>(raw.data());
    c->offset = offset;
    c->length = static_cast<uint32_t>(bytes.Length());
    std::memcpy(c->buffer, bytes.Data(), bytes.Length());
    if (ioctl(fd, VDUSE_DEV_SET_CONFIG, c) < 0) ThrowErrno(env, "VDUSE_DEV_SET_CONFIG", errno);
    return env.Undefined();
  }

  Napi::Value InjectConfigIrq(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = Live(env);
    int r = ioctl(fd, VDUSE_DEV_INJECT_CONFIG_IRQ);
    return Napi::Number::New(env, r < 0 ? errno : 0);
  }

  Napi::Value GetFeatures(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = Live(env);
    uint64_t f = 0;
    if (ioctl(fd, VDUSE_DEV_GET_FEATURES, &f) < 0) ThrowErrno(env, "VDUSE_DEV_GET_FEATURES", errno);
    return Napi::BigInt::New(env, f);
  }

  // mapIova(start, last) → { mapping: Buffer, start, last, perm } for the first IOVA region that
  // overlaps [start, last], or null when there is none. The region's whole range is mapped
  // (MAP_SHARED, with the protection its permission allows) and given to JS as an external Buffer
  // whose finalizer is the mapping's one release path (munmap): no view of it can outlive it.
  // The fd the kernel returns is closed at once (the mapping holds the file).
  Napi::Value MapIova(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = Live(env);
    vduse_iotlb_entry e{};
    e.start = U64Arg(env, info[0], "start");
    e.last = U64Arg(env, info[1], "last");
    if (e.start > e.last) throw Napi::RangeError::New(env, "mapIova: start > last");
    int rfd = ioctl(fd, VDUSE_IOTLB_GET_FD, &e);
    if (rfd < 0) {
      if (errno == EINVAL) return env.Null();  // no region there
      ThrowErrno(env, "VDUSE_IOTLB_GET_FD", errno);
    }
    uint64_t length = e.last - e.start + 1;  // e.last >= e.start for a region the kernel reports
    long page = sysconf(_SC_PAGESIZE);
    if (e.last < e.start || length == 0 || length > (1ull << 32) || (e.offset % page) != 0 || e.start > static_cast<uint64_t>(kMaxSafe) ||
        e.last > static_cast<uint64_t>(kMaxSafe)) {
      close(rfd);
      throw Napi::RangeError::New(env, "mapIova: the kernel reported a region this process cannot map (over 4 GiB, unaligned or above 2^53)");
    }
    int prot = 0;
    if (e.perm & VDUSE_ACCESS_RO) prot |= PROT_READ;
    if (e.perm & VDUSE_ACCESS_WO) prot |= PROT_WRITE;
    void* p = mmap(nullptr, length, prot, MAP_SHARED, rfd, static_cast<off_t>(e.offset));
    int err = errno;
    close(rfd);
    if (p == MAP_FAILED) ThrowErrno(env, "mmap IOVA region", err);
    Napi::Buffer<uint8_t> mapping = MappedBuffer(env, p, length);
    Napi::Object o = Napi::Object::New(env);
    o.Set("mapping", mapping);
    o.Set("start", Napi::Number::New(env, static_cast<double>(e.start)));
    o.Set("last", Napi::Number::New(env, static_cast<double>(e.last)));
    o.Set("perm", Napi::Number::New(env, e.perm));
    return o;
  }

  // registerBounceMemory(size) → Buffer: `size` bytes of this process's memory (anonymous,
  // page-aligned, populated) made the device's bounce buffer with VDUSE_IOTLB_REG_UMEM (Linux >=
  // 6.3), so that IOVA [0, size) is that Buffer: memory that can also be registered with an RDMA
  // device (the kernel's own bounce pages, mmapped with VDUSE_IOTLB_GET_FD, cannot: its fault
  // handler refuses a page no DMA has used yet, so pinning the region fails with EFAULT). The
  // kernel copies the bytes of mappings in use over. Throws with the errno (EINVAL: no bounce
  // map yet or `size` is not the bounce size; EEXIST: registered already; ENOMEM: over
  // RLIMIT_MEMLOCK, which this raises first). The Buffer is kept referenced here until
  // deregisterBounceMemory() or close(): the kernel never writes into memory JS has freed; it is
  // munmapped when collected after that.
  Napi::Value RegisterBounceMemory(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = Live(env);
    uint64_t size = U64Arg(env, info[0], "size");
    long page = sysconf(_SC_PAGESIZE);
    if (size == 0 || size > (1ull << 32) || size % page != 0) throw Napi::RangeError::New(env, "registerBounceMemory: size must be whole pages, at most 4 GiB");
    if (!umem_.IsEmpty()) ThrowErrno(env, "VDUSE_IOTLB_REG_UMEM", EEXIST);
    // VDUSE counts the pages against RLIMIT_MEMLOCK with no capability exception (and the RDMA
    // registrations of this process count too): unlimited when allowed (CAP_SYS_RESOURCE), else
    // the hard limit. Best effort: the ioctl says ENOMEM if it is still short.
    struct rlimit unlimited {RLIM_INFINITY, RLIM_INFINITY};
    struct rlimit rl {};
    if (setrlimit(RLIMIT_MEMLOCK, &unlimited) != 0 && getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur != rl.rlim_max) {
      rl.rlim_cur = rl.rlim_max;
      setrlimit(RLIMIT_MEMLOCK, &rl);
    }
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED) ThrowErrno(env, "mmap bounce memory", errno);
    vduse_iova_umem u{};
    u.uaddr = reinterpret_cast<uintptr_t>(p);
    u.iova = 0;
    u.size = size;
    if (ioctl(fd, VDUSE_IOTLB_REG_UMEM, &u) < 0) {
      int err = errno;
      munmap(p, size);
      ThrowErrno(env, "VDUSE_IOTLB_REG_UMEM", err);
    }
    Napi::Buffer<uint8_t> mem = MappedBuffer(env, p, size);
    umem_ = Napi::Persistent(mem.As<Napi::Object>());
    umemSize_ = size;
    return mem;
  }

  // deregisterBounceMemory() → 0 or the errno of VDUSE_IOTLB_DEREG_UMEM (the kernel copies the
  // bytes of mappings in use back to its own pages); the Buffer is no longer referenced here.
  Napi::Value DeregisterBounceMemory(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (umem_.IsEmpty()) return Napi::Number::New(env, ENOENT);
    int err = 0;
    if (fd_ >= 0) {
      vduse_iova_umem u{};
      u.iova = 0;
      u.size = umemSize_;
      if (ioctl(fd_, VDUSE_IOTLB_DEREG_UMEM, &u) < 0) err = errno;
    }
    // Kept while the kernel may still hold it (the ioctl failed): the device fd's close releases it.
    if (err == 0) umem_.Reset();
    return Napi::Number::New(env, err);
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (fd_ >= 0) {
      Release();
      Unref();
    }
    return info.Env().Undefined();
  }

  // The one release path: kick eventfds (deassigned from the kernel first), the device fd's
  // watch, the device fd. Mappings stay with their Buffers.
  void Release() {
    for (uint32_t i = 0; i < kicks_.size(); i++) DropKick(fd_, i);
    kicks_.clear();
    Unwatch(deviceWatch_);
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
    onReady_.Reset();
    // The kernel unpins user bounce memory when the device fd goes (vduse_dev_release).
    umem_.Reset();
  }

  int fd_ = -1;
  Watcher* deviceWatch_ = nullptr;
  std::vector<Watcher*> kicks_;
  Napi::FunctionReference onReady_;
  Napi::ObjectReference umem_;
  uint64_t umemSize_ = 0;
};

static Napi::Value VduseMappings(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), liveMappings); }

void InitVduse(Napi::Env env, Napi::Object exports) {
  exports.Set("VduseControl", VduseControl::Init(env));
  exports.Set("VduseDevice", VduseDevice::Init(env));
  exports.Set("vduseMappings", Napi::Function::New(env, VduseMappings));
}

}  // namespace vof
