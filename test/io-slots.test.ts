import { ioSlotsSuite } from './suites/io-slots-suite.js';

ioSlotsSuite('TCP', 'tcp://127.0.0.1:0');
