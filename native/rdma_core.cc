// rdma-core loaded at run time. The addon is compiled against rdma-core's headers but not linked
// to its libraries: every libibverbs/librdmacm function the addon calls is defined here as a stub
// that jumps through a pointer filled by LoadRdmaCore() (dlopen of libibverbs.so.1 and
// librdmacm.so.1, dlsym of each symbol). So one binary (a prebuild) loads on machines without
// rdma-core, where io_uring file I/O still works and the RDMA transport says what to install.
//
// The inline functions of verbs.h (ibv_post_send, ibv_poll_cq, ibv_req_notify_cq, ...) call
// through the device's ops table and need no symbol. The list below is exactly the set of
// symbols the addon imports; test/no-rdma-core.test.ts fails if the addon gains an undefined
// ibv_/rdma_ symbol that is not stubbed here. Each prototype is checked by the compiler against
// the header's declaration.
#include "rdma_core.h"

#include <dlfcn.h>
#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#include <string>

// verbs.h turns ibv_query_port into a call of an inline wrapper; here it is the real symbol.
#undef ibv_query_port

namespace {

// lib: 0 libibverbs, 1 librdmacm. X(lib, return type, name, (parameters), (arguments))
#define VOF_RDMA_CORE_FUNCTIONS(X)                                                                              \
  X(0, void, ibv_ack_cq_events, (struct ibv_cq * cq, unsigned int n), (cq, n))                                  \
  X(0, struct ibv_pd*, ibv_alloc_pd, (struct ibv_context * c), (c))                                             \
  X(0, int, ibv_close_device, (struct ibv_context * c), (c))                                                    \
  X(0, struct ibv_comp_channel*, ibv_create_comp_channel, (struct ibv_context * c), (c))                        \
  X(0, struct ibv_cq*, ibv_create_cq,                                                                           \
    (struct ibv_context * c, int cqe, void* ctx, struct ibv_comp_channel* ch, int vec), (c, cqe, ctx, ch, vec)) \
  X(0, int, ibv_dealloc_pd, (struct ibv_pd * pd), (pd))                                                         \
  X(0, int, ibv_dereg_mr, (struct ibv_mr * mr), (mr))                                                           \
  X(0, int, ibv_destroy_comp_channel, (struct ibv_comp_channel * ch), (ch))                                     \
  X(0, int, ibv_destroy_cq, (struct ibv_cq * cq), (cq))                                                         \
  X(0, void, ibv_free_device_list, (struct ibv_device * *l), (l))                                               \
  X(0, int, ibv_get_cq_event, (struct ibv_comp_channel * ch, struct ibv_cq * *cq, void** ctx), (ch, cq, ctx))   \
  X(0, __be64, ibv_get_device_guid, (struct ibv_device * d), (d))                                               \
  X(0, struct ibv_device**, ibv_get_device_list, (int* n), (n))                                                 \
  X(0, const char*, ibv_get_device_name, (struct ibv_device * d), (d))                                          \
  X(0, struct ibv_context*, ibv_open_device, (struct ibv_device * d), (d))                                      \
  X(0, int, ibv_query_device, (struct ibv_context * c, struct ibv_device_attr * a), (c, a))                     \
  X(0, int, ibv_query_gid, (struct ibv_context * c, uint8_t port, int index, union ibv_gid* gid),               \
    (c, port, index, gid))                                                                                      \
  X(0, int, ibv_query_port, (struct ibv_context * c, uint8_t port, struct _compat_ibv_port_attr * a),         \
    (c, port, a))                                                                                               \
  X(0, int, ibv_modify_qp, (struct ibv_qp * qp, struct ibv_qp_attr * a, int mask), (qp, a, mask))                \
  X(0, int, ibv_query_qp, (struct ibv_qp * qp, struct ibv_qp_attr * a, int mask, struct ibv_qp_init_attr * i),  \
    (qp, a, mask, i))                                                                                           \
  X(0, struct ibv_mr*, ibv_reg_mr_iova2,                                                                        \
    (struct ibv_pd * pd, void* addr, size_t len, uint64_t iova, unsigned int access), (pd, addr, len, iova, access)) \
  X(0, const char*, ibv_wc_status_str, (enum ibv_wc_status s), (s))                                             \
  X(1, int, rdma_accept, (struct rdma_cm_id * id, struct rdma_conn_param * p), (id, p))                         \
  X(1, int, rdma_ack_cm_event, (struct rdma_cm_event * e), (e))                                                 \
  X(1, int, rdma_bind_addr, (struct rdma_cm_id * id, struct sockaddr * a), (id, a))                             \
  X(1, int, rdma_connect, (struct rdma_cm_id * id, struct rdma_conn_param * p), (id, p))                        \
  X(1, struct rdma_event_channel*, rdma_create_event_channel, (void), ())                                       \
  X(1, int, rdma_create_id,                                                                                     \
    (struct rdma_event_channel * ch, struct rdma_cm_id * *id, void* ctx, enum rdma_port_space ps), (ch, id, ctx, ps)) \
  X(1, int, rdma_create_qp, (struct rdma_cm_id * id, struct ibv_pd * pd, struct ibv_qp_init_attr * a), (id, pd, a)) \
  X(1, void, rdma_free_devices, (struct ibv_context * *l), (l))                                                \
  X(1, struct ibv_context**, rdma_get_devices, (int* n), (n))                                                   \
  X(1, void, rdma_destroy_event_channel, (struct rdma_event_channel * ch), (ch))                                \
  X(1, int, rdma_destroy_id, (struct rdma_cm_id * id), (id))                                                    \
  X(1, void, rdma_destroy_qp, (struct rdma_cm_id * id), (id))                                                   \
  X(1, int, rdma_disconnect, (struct rdma_cm_id * id), (id))                                                    \
  X(1, const char*, rdma_event_str, (enum rdma_cm_event_type e), (e))                                           \
  X(1, int, rdma_get_cm_event, (struct rdma_event_channel * ch, struct rdma_cm_event * *e), (ch, e))            \
  X(1, int, rdma_listen, (struct rdma_cm_id * id, int backlog), (id, backlog))                                  \
  X(1, int, rdma_reject, (struct rdma_cm_id * id, const void* data, uint8_t len), (id, data, len))              \
  X(1, int, rdma_resolve_addr, (struct rdma_cm_id * id, struct sockaddr * src, struct sockaddr * dst, int ms),  \
    (id, src, dst, ms))                                                                                         \
  X(1, int, rdma_resolve_route, (struct rdma_cm_id * id, int ms), (id, ms))

// The pointers, named p_<function>.
#define VOF_POINTER(lib, ret, name, params, args) ret(*p_##name) params = nullptr;
VOF_RDMA_CORE_FUNCTIONS(VOF_POINTER)

const char* const kLibraries[2] = {"libibverbs.so.1", "librdmacm.so.1"};
std::string loadError = "not loaded yet";
bool loaded = false;

}  // namespace

// The stubs: hidden, so that the addon's own calls bind to them and nothing outside sees them.
#define VOF_STUB(lib, ret, name, params, args) \
  extern "C" __attribute__((visibility("hidden"))) ret name params { return p_##name args; }
VOF_RDMA_CORE_FUNCTIONS(VOF_STUB)

namespace vof {

const char* LoadRdmaCore() {
  if (loaded) return nullptr;
  void* handles[2] = {nullptr, nullptr};
  for (int i = 0; i < 2; i++) {
    // RTLD_LOCAL: nothing of rdma-core enters the process's global namespace through us; the
    // verbs providers it dlopens find libibverbs through their own dependencies.
    handles[i] = dlopen(kLibraries[i], RTLD_NOW | RTLD_LOCAL);
    if (!handles[i]) {
      const char* why = dlerror();
      loadError = why ? why : kLibraries[i];
      return loadError.c_str();
    }
  }
  std::string missing;
#define VOF_RESOLVE(lib, ret, name, params, args)                         \
  p_##name = reinterpret_cast<ret(*) params>(dlsym(handles[lib], #name)); \
  if (!p_##name) missing += std::string(missing.empty() ? "" : ", ") + #name;
  VOF_RDMA_CORE_FUNCTIONS(VOF_RESOLVE)
#undef VOF_RESOLVE
  if (!missing.empty()) {
    loadError = "rdma-core is too old: missing " + missing;
    return loadError.c_str();
  }
  loaded = true;
  return nullptr;
}

}  // namespace vof
