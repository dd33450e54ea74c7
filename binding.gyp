{
  "variables": {
    "vof_rdma%": "<!(node scripts/rdma-build-mode.mjs)"
  },
  "targets": [
    {
      "target_name": "vof_rdma",
      "sources": [
        "native/addon.cc",
        "native/common.cc",
        "native/file_ring.cc",
        "native/direct_io.cc",
        "native/vduse.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "cflags_cc!": ["-fno-exceptions"],
      "conditions": [
        ["vof_rdma=='yes'", {
          "defines": ["VOF_HAVE_RDMA"],
          "sources": [
            "native/rdma_core.cc",
            "native/event_channel.cc",
            "native/cm_id.cc",
            "native/protection_domain.cc",
            "native/completion_queue.cc",
            "native/queue_pair.cc",
            "native/memory_window.cc",
            "native/devices.cc"
          ],
          "libraries": ["-ldl"]
        }]
      ]
    }
  ]
}
