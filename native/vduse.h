// VDUSE (vDPA Device in Userspace, Linux drivers/vdpa/vdpa_user): the ioctls on
// /dev/vduse/control and /dev/vduse/NAME, the IOVA mappings and the readiness of the device fd and
// of the kick eventfds. Thin and verb-shaped: the split ring, the request handling and every
// policy live in src/vduse. Needs no library, only the kernel's uapi header.
#pragma once

#include "common.h"

namespace vof {

void InitVduse(Napi::Env env, Napi::Object exports);

}  // namespace vof
