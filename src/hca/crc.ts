/**
 * CRC-32 (the IEEE 802.3 polynomial the ICRC uses) for the wire's hot path.
 *
 * Node 20's zlib.crc32 is table-driven, a byte at a time; @node-rs/crc32 uses
 * the CPU's carry-less multiply, several times faster on a frame, but a call
 * into it costs more, so only long inputs go there. A platform it ships no
 * binary for keeps zlib for everything; `crcImpl` says which is in use.
 */
import { createRequire } from 'node:module';
import { crc32 as zlibCrc32 } from 'node:zlib';

type Crc32 = (data: Uint8Array, initial?: number) => number;

function loadSimd(): Crc32 | null {
  try {
    return (createRequire(import.meta.url)('@node-rs/crc32') as { crc32: Crc32 }).crc32;
  } catch {
    return null;
  }
}
const simd = loadSimd();

/** '@node-rs/crc32' for long inputs, or 'zlib' alone. */
export const crcImpl: string = simd ? '@node-rs/crc32' : 'zlib';

/** Shorter inputs stay with zlib: a call into it costs less, and below about 256 bytes that outweighs the speed. */
const LONG = 256;

/** CRC-32 of `data` continuing from `initial` (0 to start), unsigned. */
export function crc32(data: Uint8Array, initial = 0): number {
  return simd !== null && data.length >= LONG ? simd(data, initial) >>> 0 : zlibCrc32(data, initial);
}
