#include "direct_io.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include <cstdint>

namespace vof {

Napi::Value AddressRemainder(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  napi_typedarray_type type;
  size_t length = 0;
  void* data = nullptr;
  if (info.Length() < 2 || !info[0].IsTypedArray() || !info[1].IsNumber() ||
      napi_get_typedarray_info(env, info[0], &type, &length, &data, nullptr, nullptr) != napi_ok ||
      type != napi_uint8_array) {
    throw Napi::TypeError::New(env, "addressRemainder(view: Uint8Array, align: number)");
  }
  uint32_t align = info[1].As<Napi::Number>().Uint32Value();
  if (align == 0 || (align & (align - 1)) != 0) throw Napi::RangeError::New(env, "addressRemainder: align must be a power of two");
  // An empty view may have no backing store (data == nullptr): any answer is as good as another.
  return Napi::Number::New(env, static_cast<double>(reinterpret_cast<uintptr_t>(data) & (align - 1)));
}

Napi::Value DirectIoAlignment(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "directIoAlignment(fd: number)");
  int fd = info[0].As<Napi::Number>().Int32Value();
  struct stat st {};
  if (fstat(fd, &st) < 0) ThrowErrno(env, "fstat", errno);
  Napi::Object out = Napi::Object::New(env);
#ifdef STATX_DIOALIGN
  struct statx sx {};
  if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN) != 0) {
    out.Set("memAlign", Napi::Number::New(env, sx.stx_dio_mem_align));
    out.Set("offsetAlign", Napi::Number::New(env, sx.stx_dio_offset_align));
    return out;
  }
#endif
  // Older kernels: a block device's logical block size is its rule for both (the historical
  // O_DIRECT contract); a regular file's file system does not say.
  if (S_ISBLK(st.st_mode)) {
    int logical = 0;
    if (ioctl(fd, BLKSSZGET, &logical) < 0) ThrowErrno(env, "ioctl(BLKSSZGET)", errno);
    out.Set("memAlign", Napi::Number::New(env, logical));
    out.Set("offsetAlign", Napi::Number::New(env, logical));
    return out;
  }
  return env.Null();
}

}  // namespace vof
