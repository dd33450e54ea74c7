import { blkEndToEndSuite } from '../suites/blk-e2e.js';
import { rdmaAddress } from './rdma-env.js';

// The same end-to-end suite as test/e2e-tcp.test.ts, over keyed data transfers on rxe.
blkEndToEndSuite('RDMA', `rdma://${rdmaAddress()}:0`, { diskMiB: 8 });
