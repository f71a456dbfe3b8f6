/**
 * The frame assembler both ends of a device socket use: frames come out whole
 * and in order however the stream is cut, a bad length stops it, and each
 * byte is copied at most once (a frame dribbled a byte at a time used to cost
 * a concatenation of everything so far per byte).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FrameAssembler } from '../../src/abi/framing.js';
import { xorshift32 } from '../../src/common/rng.js';

/** Request frames: in_words*4 bytes in all, the header's bytes 4..5 saying how many words. */
function request(words: number, fill: number): Buffer {
  const f = Buffer.alloc(words * 4, fill);
  f.writeUInt32LE(fill, 0);
  f.writeUInt16LE(words, 4);
  return f;
}

const sizeOf = (h: Buffer) => h.readUInt16LE(4) * 4;

test('frames come out whole and in order, however the stream is cut (one byte at a time, random cuts, many per chunk)', () => {
  const frames = [request(2, 1), request(0xffff, 2), request(10, 3), request(3, 4), request(4096, 5)];
  const stream = Buffer.concat(frames);
  const rand = xorshift32(7);
  for (const cut of ['bytes', 'random', 'whole'] as const) {
    const got: Buffer[] = [];
    const a = new FrameAssembler(sizeOf, (f) => got.push(Buffer.from(f)));
    if (cut === 'whole') a.push(stream);
    else {
      let off = 0;
      while (off < stream.length) {
        const n = cut === 'bytes' ? 1 : 1 + Math.floor(rand() * 70_000);
        a.push(stream.subarray(off, off + n));
        off += n;
      }
    }
    assert.equal(got.length, frames.length, cut);
    got.forEach((f, i) => assert.ok(f.equals(frames[i]!), `${cut}: frame ${i}`));
  }
});

test('a 262,140-byte frame dribbled one byte at a time: each byte copied once (linear), not the whole prefix per byte', () => {
  const big = request(0xffff, 9);
  let copied = 0;
  const orig = Buffer.prototype.copy;
  Buffer.prototype.copy = function (this: Buffer, ...args: Parameters<Buffer['copy']>) {
    const n = orig.apply(this, args);
    copied += n;
    return n;
  };
  try {
    let got = 0;
    const a = new FrameAssembler(sizeOf, () => got++);
    for (let i = 0; i < big.length; i++) a.push(big.subarray(i, i + 1));
    assert.equal(got, 1);
  } finally {
    Buffer.prototype.copy = orig;
  }
  assert.ok(copied <= big.length + 16, `${copied} bytes copied for a ${big.length}-byte frame`);
});

test('a length below the header stops the assembler: the garbage callback runs, nothing after it is delivered', () => {
  const got: Buffer[] = [];
  let garbage = 0;
  const a = new FrameAssembler(sizeOf, (f) => got.push(f), () => garbage++);
  const bad = Buffer.alloc(8);
  bad.writeUInt16LE(1, 4);
  a.push(Buffer.concat([request(2, 1), bad, request(2, 3)]));
  assert.equal(got.length, 1);
  assert.equal(garbage, 1);
  a.push(request(2, 4));
  assert.equal(got.length, 1);
});
