/**
 * The socket structs the native calls hand the kernel, against glibc's
 * headers on Linux LP64 (x86-64, aarch64). Every offset below was written
 * down by hand from sys/uio.h, bits/socket.h, sys/poll.h, linux/filter.h
 * and netinet/in.h (pointers and size_t 8 bytes, natural alignment, tail
 * padding); the layout engine computes its own and they must agree.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { layout, pack, unpack, type StructDef } from '../../src/abi/layout.js';
import * as L from '../../src/native/layouts.js';

const expected: Array<[StructDef, number, Record<string, number>]> = [
  [L.IOVEC, 16, { iov_base: 0, iov_len: 8 }],
  [L.MSGHDR, 56, { msg_name: 0, msg_namelen: 8, msg_iov: 16, msg_iovlen: 24, msg_control: 32, msg_controllen: 40, msg_flags: 48 }],
  [L.MMSGHDR, 64, { msg_hdr: 0, msg_len: 56 }],
  [L.CMSGHDR, 16, { cmsg_len: 0, cmsg_level: 8, cmsg_type: 12 }],
  [L.POLLFD, 8, { fd: 0, events: 4, revents: 6 }],
  [L.SOCK_FILTER, 8, { code: 0, jt: 2, jf: 3, k: 4 }],
  [L.SOCK_FPROG, 16, { len: 0, filter: 8 }],
  [L.SOCKADDR_IN, 16, { sin_family: 0, sin_port: 2, sin_addr: 4, sin_zero: 8 }],
  [L.SOCKADDR_IN6, 28, { sin6_family: 0, sin6_port: 2, sin6_flowinfo: 4, sin6_addr: 8, sin6_scope_id: 24 }],
];

for (const [def, size, offsets] of expected) {
  test(`${def.name}: sizeof ${size} and every field offset as in the LP64 headers`, () => {
    const l = layout(def);
    assert.equal(l.size, size);
    assert.deepEqual(l.fields.map((f) => f.name), Object.keys(offsets), 'field order');
    for (const [name, off] of Object.entries(offsets)) assert.equal(l.byName.get(name)!.offset, off, `${def.name}.${name}`);
  });
}

test('the offset tables the hot paths read agree with the layouts', () => {
  assert.deepEqual(L.MMSG, { SIZE: 64, msg_hdr: 0, msg_len: 56 });
  assert.deepEqual(L.MSG, { SIZE: 56, msg_name: 0, msg_namelen: 8, msg_iov: 16, msg_iovlen: 24, msg_control: 32, msg_controllen: 40, msg_flags: 48 });
  assert.deepEqual(L.IOV, { SIZE: 16, iov_base: 0, iov_len: 8 });
  assert.deepEqual(L.CMSG, { SIZE: 16, cmsg_len: 0, cmsg_level: 8, cmsg_type: 12 });
  assert.deepEqual(L.PFD, { SIZE: 8, fd: 0, events: 4, revents: 6 });
});

test('CMSG_LEN and CMSG_SPACE as glibc computes them (size_t alignment)', () => {
  assert.equal(L.cmsgLen(0), 16, 'CMSG_DATA follows the header');
  assert.equal(L.cmsgLen(2), 18, 'UDP_SEGMENT (u16)');
  assert.equal(L.cmsgSpace(2), 24);
  assert.equal(L.cmsgLen(4), 20, 'UDP_GRO (int)');
  assert.equal(L.cmsgSpace(4), 24);
  assert.equal(L.cmsgSpace(9), 32);
});

test('a short field is signed both ways: pollfd revents -1 packs as 0xffff and reads back -1', () => {
  const b = pack(L.POLLFD, { fd: -1, events: 1, revents: -1 });
  assert.deepEqual([...b], [0xff, 0xff, 0xff, 0xff, 0x01, 0x00, 0xff, 0xff]);
  assert.deepEqual(unpack(L.POLLFD, b), { fd: -1, events: 1, revents: -1 });
});
