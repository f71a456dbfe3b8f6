/**
 * Registrable memory: Buffers backed by a memfd the daemon can map. A plain
 * Buffer lives in Node's heap, which no other process can see, so
 * registering one is an error that says so.
 */
import { closeSync, ftruncateSync } from 'node:fs';
import { mapShared, memfdCreate, type Mapping } from '../native/libc.js';
import { VerbsError } from './errors.js';

const PAGE = 4096;

/** A memfd-backed region of this process. */
export interface Region {
  readonly fd: number;
  readonly mapping: Mapping;
  /** Address of byte 0 of the mapping. */
  readonly addr: bigint;
  readonly length: number;
}

const byBuffer = new WeakMap<ArrayBuffer, Region>();
const regions: Region[] = [];

/** Allocates `length` bytes of shared memory (page-rounded, zeroed) and returns a Buffer over exactly `length` of them. */
export function allocShared(length: number, name = 'softverbs'): { buf: Buffer; region: Region } {
  if (!Number.isSafeInteger(length) || length <= 0) throw new VerbsError('allocBuffer', 'EINVAL', `length ${length}`);
  const size = Math.ceil(length / PAGE) * PAGE;
  const fd = memfdCreate(name);
  try {
    ftruncateSync(fd, size);
    const mapping = mapShared(fd, size, 0);
    const region: Region = { fd, mapping, addr: mapping.addr, length: size };
    byBuffer.set(mapping.buffer, region);
    regions.push(region);
    return { buf: Buffer.from(mapping.buffer, 0, length), region };
  } catch (e) {
    closeSync(fd);
    throw new VerbsError('allocBuffer', (e as { code?: string }).code ?? 'ENOMEM', (e as Error).message);
  }
}

/** The region under a Buffer, and the Buffer's offset in it; null for memory the daemon cannot see. */
export function regionOf(buf: Uint8Array): { region: Region; offset: number } | null {
  const region = byBuffer.get(buf.buffer as ArrayBuffer);
  return region ? { region, offset: buf.byteOffset } : null;
}

/** Finds the bytes at a process address (for inline sends): [region, offset]. */
export function atAddress(addr: bigint, length: number): Uint8Array | null {
  for (const r of regions) {
    if (addr >= r.addr && addr + BigInt(length) <= r.addr + BigInt(r.length)) {
      return new Uint8Array(r.mapping.buffer, Number(addr - r.addr), length);
    }
  }
  return null;
}
