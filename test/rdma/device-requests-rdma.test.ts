import { deviceRequestsSuite } from '../suites/device-requests-suite.js';
import { rdmaAddress } from './rdma-env.js';

// The same suite as test/device-requests.test.ts, over keyed data transfers on rxe: the
// device fills registered memory the RDMA WRITE sends from.
deviceRequestsSuite('RDMA', `rdma://${rdmaAddress()}:0`);
