export declare const HOST_GROUPS: string[];
export declare const RDMA_GROUPS: string[];
export declare function prepareTestDeps(groups: readonly string[], opts?: { who?: string; log?: (line: string) => void }): void;
