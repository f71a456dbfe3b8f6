/**
 * Registrable memory: Buffers backed by a memfd the daemon can map. A plain
 * Buffer lives in Node's heap, which no other process can see, so
 * registering one is an error that says so.
 *
 * A region lives as long as its memory is reachable: once the last Buffer
 * over it is collected, its mapping and memfd are released (an MR the
 * daemon holds keeps its own mapping of the pages).
 */
import { closeSync, ftruncateSync } from 'node:fs';
import { mapShared, memfdCreate, unmap, type Mapping } from '../native/libc.js';
import { VerbsError } from './errors.js';
import { errnoOf, messageOf } from '../common/errors.js';
import { inlineAt } from '../abi/send-ring.js';

const PAGE = 4096;

/** A memfd-backed region of this process. */
export interface Region {
  readonly fd: number;
  /** Address of byte 0 of the mapping. */
  readonly addr: bigint;
  /** addr as a number (mappings lie far below 2^53), for the inline path's search */
  readonly start: number;
  readonly length: number;
  readonly memory: WeakRef<ArrayBuffer>;
}

const byBuffer = new WeakMap<ArrayBuffer, Region>();
/** Every live region, sorted by address: inline sends find theirs by binary search. */
const sorted: Region[] = [];

interface Release {
  region: Region;
  mapping: Omit<Mapping, 'buffer'> & { unmapped: boolean };
}
const released = new FinalizationRegistry<Release>(({ region, mapping }) => {
  const i = sorted.indexOf(region);
  if (i >= 0) sorted.splice(i, 1);
  try {
    unmap(mapping as Mapping);
    closeSync(region.fd);
  } catch {
    /* released at exit anyway */
  }
});

function insert(r: Region): void {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (sorted[mid]!.start < r.start) lo = mid + 1;
    else hi = mid;
  }
  sorted.splice(lo, 0, r);
}

/** Allocates `length` bytes of shared memory (page-rounded, zeroed) and returns a Buffer over exactly `length` of them. */
export function allocShared(length: number, name = 'softverbs'): { buf: Buffer; region: Region } {
  if (!Number.isSafeInteger(length) || length <= 0) throw new VerbsError('allocBuffer', 'EINVAL', `length ${length}`);
  const size = Math.ceil(length / PAGE) * PAGE;
  const fd = memfdCreate(name);
  try {
    ftruncateSync(fd, size);
    const mapping = mapShared(fd, size, 0);
    const region: Region = { fd, addr: mapping.addr, start: Number(mapping.addr), length: size, memory: new WeakRef(mapping.buffer) };
    byBuffer.set(mapping.buffer, region);
    insert(region);
    released.register(mapping.buffer, { region, mapping: { ptr: mapping.ptr, addr: mapping.addr, length: mapping.length, unmapped: false } });
    return { buf: Buffer.from(mapping.buffer, 0, length), region };
  } catch (e) {
    closeSync(fd);
    throw new VerbsError('allocBuffer', errnoOf(e) ?? 'ENOMEM', messageOf(e));
  }
}

/** The region under a Buffer, and the Buffer's offset in it; null for memory the daemon cannot see. */
export function regionOf(buf: Uint8Array): { region: Region; offset: number } | null {
  const region = byBuffer.get(buf.buffer as ArrayBuffer);
  return region ? { region, offset: buf.byteOffset } : null;
}

/**
 * The region an inline SGE was last found in, and its bytes, held until the current job ends: what
 * WeakRef.deref() promises anyway (its target stays alive until then), without a deref, a kept-objects entry and
 * a new view for every inline SEND of a loop that posts many.
 */
let lastRegion: Region | null = null;
let lastBytes: Uint8Array | null = null;
const forgetLast = (): void => {
  lastRegion = lastBytes = null;
};

/**
 * The bytes at a process address (for inline sends), or null if no live region holds all of them: an array
 * holding them from `inlineAt.offset` on (send-ring.ts). O(log regions); O(1) for the region used last.
 */
export function inlineBytes(addr: number, length: number): Uint8Array | null {
  // a length that is no count is the post's EINVAL (malformed), as the view made for it used to throw
  if (!Number.isSafeInteger(length) || length < 0) throw new RangeError(`inline SGE length ${length} is not a byte count`);
  // in numbers, not bigints: every bigint sum or difference is an allocation, and this runs per inline SGE
  if (!Number.isSafeInteger(addr)) return null;
  const r = lastRegion;
  if (r !== null && addr >= r.start && addr + length <= r.start + r.length) {
    inlineAt.offset = addr - r.start;
    return lastBytes;
  }
  const found = regionAt(addr, length);
  const mem = found?.memory.deref();
  if (!found || !mem) return null;
  if (lastRegion === null) queueMicrotask(forgetLast);
  lastRegion = found;
  lastBytes = new Uint8Array(mem);
  inlineAt.offset = addr - found.start;
  return lastBytes;
}

/** The live region holding [addr, addr+length) (addr a safe integer), or null. */
function regionAt(addr: number, length: number): Region | null {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (sorted[mid]!.start <= addr) lo = mid + 1;
    else hi = mid;
  }
  const r = sorted[lo - 1];
  return !r || addr + length > r.start + r.length ? null : r;
}
