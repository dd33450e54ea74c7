#include "addon.h"

#include <cstdio>

namespace vof {

static const char* PortState(ibv_port_state s) {
  switch (s) {
    case IBV_PORT_DOWN: return "DOWN";
    case IBV_PORT_INIT: return "INIT";
    case IBV_PORT_ARMED: return "ARMED";
    case IBV_PORT_ACTIVE: return "ACTIVE";
    case IBV_PORT_ACTIVE_DEFER: return "ACTIVE_DEFER";
    default: return "NOP";
  }
}

static int MtuBytes(ibv_mtu m) { return 128 << static_cast<int>(m); }

static std::string GidString(const ibv_gid& gid) {
  char buf[40];
  const uint8_t* r = gid.raw;
  std::snprintf(buf, sizeof buf, "%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x", r[0], r[1],
                r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15]);
  return buf;
}

// listDevices() → [{ name, nodeGuid, ports: [{ port, state, activeMtu, linkLayer, gids: [{ index, gid }] }] }]
Napi::Value ListDevices(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array out = Napi::Array::New(env);
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (list == nullptr) {
    // ENOSYS: no kernel support at all, which is an empty list, not an error.
    if (errno == ENOSYS) return out;
    ThrowErrno(env, "ibv_get_device_list", errno);
  }
  for (int i = 0; i < n; i++) {
    Napi::Object dev = Napi::Object::New(env);
    dev.Set("name", Napi::String::New(env, ibv_get_device_name(list[i])));
    char guid[20];
    uint64_t g = be64toh(ibv_get_device_guid(list[i]));
    std::snprintf(guid, sizeof guid, "%04x:%04x:%04x:%04x", unsigned(g >> 48) & 0xffff, unsigned(g >> 32) & 0xffff,
                  unsigned(g >> 16) & 0xffff, unsigned(g) & 0xffff);
    dev.Set("nodeGuid", Napi::String::New(env, guid));
    Napi::Array ports = Napi::Array::New(env);
    ibv_context* ctx = ibv_open_device(list[i]);
    if (ctx == nullptr) {
      dev.Set("error", Napi::String::New(env, std::string("ibv_open_device: ") + std::strerror(errno)));
    } else {
      ibv_device_attr attr{};
      if (ibv_query_device(ctx, &attr) == 0) {
        for (uint8_t p = 1; p <= attr.phys_port_cnt; p++) {
          ibv_port_attr pa{};
          if (ibv_query_port(ctx, p, &pa) != 0) continue;
          Napi::Object port = Napi::Object::New(env);
          port.Set("port", Napi::Number::New(env, p));
          port.Set("state", Napi::String::New(env, PortState(pa.state)));
          port.Set("activeMtu", Napi::Number::New(env, MtuBytes(pa.active_mtu)));
          port.Set("linkLayer", Napi::String::New(env, pa.link_layer == IBV_LINK_LAYER_ETHERNET ? "Ethernet" : "InfiniBand"));
          Napi::Array gids = Napi::Array::New(env);
          for (int gi = 0; gi < pa.gid_tbl_len && gi < 256; gi++) {
            ibv_gid gid{};
            if (ibv_query_gid(ctx, p, gi, &gid) != 0) continue;
            bool zero = true;
            for (uint8_t b : gid.raw) zero = zero && b == 0;
            if (zero) continue;
            Napi::Object e = Napi::Object::New(env);
            e.Set("index", Napi::Number::New(env, gi));
            e.Set("gid", Napi::String::New(env, GidString(gid)));
            gids.Set(gids.Length(), e);
          }
          port.Set("gids", gids);
          ports.Set(ports.Length(), port);
        }
      }
      ibv_close_device(ctx);
    }
    dev.Set("ports", ports);
    out.Set(out.Length(), dev);
  }
  ibv_free_device_list(list);
  return out;
}

}  // namespace vof
