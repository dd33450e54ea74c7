import { adminSuite } from '../suites/admin-suite.js';
import { rngSuite } from '../suites/rng-suite.js';
import { rdmaAddress } from './rdma-env.js';

// The same admin-queue and virtio-rng suites as test/admin.test.ts and test/rng.test.ts, over
// keyed data transfers on rxe.
adminSuite('RDMA', `rdma://${rdmaAddress()}:0`);
rngSuite('RDMA', `rdma://${rdmaAddress()}:0`);
