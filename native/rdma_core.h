// rdma-core (libibverbs, librdmacm) loaded at run time: see rdma_core.cc.
#pragma once

namespace vof {

// Loads rdma-core's libraries once: nullptr when every function the addon uses is there, else
// why not (dlerror's text, e.g. "libibverbs.so.1: cannot open shared object file ...").
const char* LoadRdmaCore();

}  // namespace vof
