export * from './constants.js';
export * from './command.js';
export * from './completion.js';
export * from './connect-body.js';
export * from './keyed-descriptor.js';
export * from './admin-command.js';
export * from './admin-records.js';
export * from './inline-data.js';
