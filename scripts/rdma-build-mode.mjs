#!/usr/bin/env node
// Prints whether binding.gyp compiles the RDMA part into the addon: "yes" where rdma-core's
// headers exist (infiniband/verbs.h and rdma/rdma_cma.h; /usr/include/rdma alone is the kernel's
// own, from linux-libc-dev), else "no": the addon then holds io_uring file I/O only. The addon
// never links rdma-core's libraries: it loads them at run time (native/rdma_core.cc).
// VOF_NO_RDMA=1 forces "no".
import { addonHeadersPresent } from './addon.mjs';

process.stdout.write(`${process.env.VOF_NO_RDMA !== '1' && addonHeadersPresent() ? 'yes' : 'no'}\n`);
