import { deviceRequestsSuite } from './suites/device-requests-suite.js';

deviceRequestsSuite('TCP', 'tcp://127.0.0.1:0');
