/** Reads `length` config bytes at `offset` (a consistent snapshot; see readConsistentConfig). */
export type ConfigReader = (offset: number, length: number) => Promise<Buffer>;

export interface ConfigValue {
  readonly value: bigint;
  readonly generation: number;
}

/** Reads 1, 2, 4 or 8 config bytes at `offset`, with the config generation it saw. */
export type ConfigFieldReader = (offset: number, bytes: 1 | 2 | 4 | 8) => Promise<ConfigValue>;

/**
 * Read a consistent run of config bytes through `get`: retried while the generation changes
 * underneath, as the virtio spec asks of drivers.
 */
export async function readConsistentConfig(offset: number, length: number, get: ConfigFieldReader): Promise<Buffer> {
  for (;;) {
    const out = Buffer.alloc(length);
    let generation = -1;
    let consistent = true;
    for (let pos = 0; pos < length; ) {
      const left = length - pos;
      const bytes = left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
      const { value, generation: g } = await get(offset + pos, bytes);
      if (generation >= 0 && g !== generation) consistent = false;
      generation = g;
      const tmp = Buffer.alloc(8);
      tmp.writeBigUInt64LE(value);
      tmp.copy(out, pos, 0, bytes);
      pos += bytes;
    }
    if (consistent) return out;
  }
}
