// What direct I/O (O_DIRECT) needs to know that Node cannot tell: where a buffer lies in memory,
// and the alignment a file's direct I/O demands (statx STATX_DIOALIGN, BLKSSZGET).
#pragma once

#include "common.h"

namespace vof {

// addressRemainder(view: Uint8Array, align: power of two) → the address of view[0] modulo align.
Napi::Value AddressRemainder(const Napi::CallbackInfo& info);
// directIoAlignment(fd) → { memAlign, offsetAlign } (0, 0: the file system does no direct I/O
// for this file) or null when the kernel cannot say (statx without STATX_DIOALIGN, Linux < 6.1).
Napi::Value DirectIoAlignment(const Napi::CallbackInfo& info);

}  // namespace vof
