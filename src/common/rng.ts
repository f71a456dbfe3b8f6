/** xorshift32: a tiny seeded PRNG, so fault injection and fuzzing are reproducible from their seed. Values in [0, 1). */
export function xorshift32(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x100000000;
  };
}
