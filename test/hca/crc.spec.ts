/**
 * The wire's CRC-32: the SIMD library where it loads, zlib otherwise, and
 * both must give zlib's answer for every length, offset and starting value
 * (every ICRC sent or checked goes through it).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { crc32 as zlibCrc32 } from 'node:zlib';
import { crc32, crcImpl } from '../../src/hca/crc.js';

test('crc32 agrees with zlib for every length, alignment and starting CRC', () => {
  const buf = randomBytes(10000);
  for (let len = 0; len <= 4200; len += len < 300 ? 1 : 37) {
    for (const off of [0, 1, 3, 7]) {
      const v = new Uint8Array(buf.buffer, buf.byteOffset + off, len);
      const init = (len * 2654435761) >>> 0;
      assert.equal(crc32(v), zlibCrc32(v), `len ${len} off ${off}`);
      assert.equal(crc32(v, init), zlibCrc32(v, init), `len ${len} off ${off} from ${init}`);
    }
  }
  // a CRC continued in pieces is the CRC of the whole, whichever implementation each piece went to
  const whole = buf.subarray(0, 5000);
  assert.equal(crc32(whole.subarray(100), crc32(whole.subarray(0, 100))), zlibCrc32(whole));
});

test('on linux x64 and arm64 (glibc) the SIMD CRC is the one in use', { skip: process.platform !== 'linux' || !['x64', 'arm64'].includes(process.arch) || !process.report?.getReport || !(process.report.getReport() as { header: { glibcVersionRuntime?: string } }).header.glibcVersionRuntime }, () => {
  // @node-rs/crc32 ships these binaries: losing it silently would cost every frame a third of its CPU
  assert.equal(crcImpl, '@node-rs/crc32');
});
