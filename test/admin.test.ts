import { adminSuite } from './suites/admin-suite.js';

adminSuite('TCP', 'tcp://127.0.0.1:0');
