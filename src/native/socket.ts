/**
 * What the sockets Node's dgram cannot make (udp-wire.ts, raw-udp4.ts) and
 * the batched reads of them (drain.ts) share: the libc calls that make and
 * set up a socket, socket addresses, and classic BPF filters, which keep
 * whatever a socket does not want from queueing on it.
 */
import { encode } from '../abi/layout.js';
import { check, libc, mapAnon, unmap } from './libc.js';
import { FILTER, FPROG, SIN, SIN6, SOCK_FILTER, SOCK_FPROG } from './layouts.js';

export const socket_ = libc.func('int socket(int domain, int type, int protocol)');
export const bind_ = libc.func('int bind(int fd, void *addr, uint32_t len)');
export const close_ = libc.func('int close(int fd)');
const setsockopt_ = libc.func('int setsockopt(int fd, int level, int name, void *val, uint32_t len)');

export const AF_INET = 2;
export const AF_INET6 = 10;
export const SOCK_CLOEXEC = 0x80000;
export const SOL_UDP = 17;
export const MSG_DONTWAIT = 0x40;
const SOL_SOCKET = 1;
const SO_SNDBUF = 7;
const SO_RCVBUF = 8;
const SO_ATTACH_FILTER = 26;
const SO_SNDBUFFORCE = 32;
const SO_RCVBUFFORCE = 33;

/** A sender's or receiver's address slot: the larger sockaddr, rounded up so the slot after it stays 8-byte aligned. */
export const NAME_SLOT = Math.ceil(SIN6.SIZE / 8) * 8;

/** struct sockaddr_in / sockaddr_in6 for an address given as 4 or 16 bytes. */
export function sockaddr(ip: Uint8Array, port: number): Buffer {
  const v4 = ip.length === 4;
  const sa = Buffer.alloc(v4 ? SIN.SIZE : SIN6.SIZE);
  sa.writeUInt16LE(v4 ? AF_INET : AF_INET6, v4 ? SIN.sin_family : SIN6.sin6_family);
  sa.writeUInt16BE(port, v4 ? SIN.sin_port : SIN6.sin6_port);
  sa.set(ip, v4 ? SIN.sin_addr : SIN6.sin6_addr);
  return sa;
}

/** setsockopt with an int value. */
export function setInt(fd: number, level: number, name: number, v: number, call: string): void {
  const b = Buffer.alloc(4);
  b.writeInt32LE(v);
  check(call, setsockopt_(fd, level, name, b, 4) as number);
}

/** 8 MiB socket buffers each way, past rmem_max / wmem_max where the process may (CAP_NET_ADMIN). */
export function bigBuffers(fd: number): void {
  for (const [force, plain] of [[SO_RCVBUFFORCE, SO_RCVBUF], [SO_SNDBUFFORCE, SO_SNDBUF]] as const) {
    try {
      setInt(fd, SOL_SOCKET, force, 8 << 20, 'setsockopt(SO_*BUFFORCE)');
    } catch {
      try {
        setInt(fd, SOL_SOCKET, plain, 8 << 20, 'setsockopt(SO_*BUF)');
      } catch {
        /* capped by rmem_max / wmem_max: fine */
      }
    }
  }
}

/** Classic BPF instructions {code, jt, jf, k} (struct sock_filter). */
export type Bpf = ReadonlyArray<readonly [number, number, number, number]>;

/** SO_ATTACH_FILTER: only what `prog` accepts queues on the socket. */
export function attachFilter(fd: number, prog: Bpf): void {
  // the program follows its sock_fprog in one mapping, so the address sock_fprog.filter takes is known
  const m = mapAnon(FPROG.SIZE + prog.length * FILTER.SIZE);
  try {
    const dv = new DataView(m.buffer);
    prog.forEach(([code, jt, jf, k], i) => encode(SOCK_FILTER, { code, jt, jf, k }, dv, FPROG.SIZE + i * FILTER.SIZE));
    encode(SOCK_FPROG, { len: prog.length, filter: m.addr + BigInt(FPROG.SIZE) }, dv);
    // the kernel copies the program: the mapping can go once this returns
    check('setsockopt(SO_ATTACH_FILTER)', setsockopt_(fd, SOL_SOCKET, SO_ATTACH_FILTER, m.ptr, FPROG.SIZE) as number);
  } finally {
    unmap(m);
  }
}
