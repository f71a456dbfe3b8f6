/**
 * What the ring specs share: comparing a WQE record read out of a ring with what was posted, field by field,
 * and keeping the names compared so that a spec can check its cases together cover every field.
 */
import assert from 'node:assert/strict';
import type { SendWqeFields } from '../../src/abi/wqe.js';

export function fieldChecker(): { seen: Set<string>; expect(w: SendWqeFields, want: Partial<Record<keyof SendWqeFields, unknown>>): void } {
  const seen = new Set<string>();
  return {
    seen,
    expect(w, want) {
      for (const [k, v] of Object.entries(want)) {
        seen.add(k);
        const got = w[k as keyof SendWqeFields];
        assert.deepEqual(got instanceof Uint8Array || Array.isArray(got) ? [...got].slice(0, (v as unknown[]).length) : got, v, k);
      }
    },
  };
}
