import { ioSlotsSuite } from '../suites/io-slots-suite.js';
import { rdmaAddress } from './rdma-env.js';

// The same suite as test/io-slots.test.ts, over keyed data transfers on rxe: the
// device fills registered memory the RDMA WRITE sends from.
ioSlotsSuite('RDMA', `rdma://${rdmaAddress()}:0`);
