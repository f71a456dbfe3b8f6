/**
 * Sockets Node's dgram cannot make, through koffi: a raw IPv4 socket that
 * writes its own IP header (IP_HDRINCL), so the daemon chooses the IP
 * Identification its ICRC covers and reads the IP header of what arrives;
 * and a bound UDP socket that discards everything, which keeps port 4791
 * open (no ICMP port-unreachable) while the raw socket does the receiving.
 *
 * Receiving uses recvmmsg on a blocking socket, called asynchronously on
 * libuv's thread pool: up to BATCH datagrams per trip, into one anonymous
 * mapping whose addresses we know (the msghdr and iovec arrays point into
 * it). SO_RCVTIMEO makes a blocked call return now and then so close() is
 * prompt.
 */
import koffi from 'koffi';
import { mapAnon, SysError, unmap, type Mapping } from './libc.js';

const libc = koffi.load('libc.so.6');
const socket_ = libc.func('int socket(int domain, int type, int protocol)');
const bind_ = libc.func('int bind(int fd, void *addr, uint32_t len)');
const setsockopt_ = libc.func('int setsockopt(int fd, int level, int name, void *val, uint32_t len)');
const sendto_ = libc.func('intptr_t sendto(int fd, void *buf, size_t len, int flags, void *addr, uint32_t alen)');
const recvmmsg_ = libc.func('int recvmmsg(int fd, void *vec, unsigned int vlen, int flags, void *timeout)');
const close_ = libc.func('int close(int fd)');

const AF_INET = 2;
const SOCK_DGRAM = 2;
const SOCK_RAW = 3;
const SOCK_CLOEXEC = 0x80000;
const IPPROTO_IP = 0;
const IPPROTO_UDP = 17;
const IP_HDRINCL = 3;
const SOL_SOCKET = 1;
const SO_RCVBUF = 8;
const SO_SNDBUF = 7;
const SO_RCVTIMEO = 20;
const SO_ATTACH_FILTER = 26;
const SO_RCVBUFFORCE = 33;
const SO_SNDBUFFORCE = 32;
const MSG_DONTWAIT = 0x40;
const MSG_TRUNC = 0x20;
const MSG_WAITFORONE = 0x10000;

function check(call: string, r: number | bigint): number {
  const n = Number(r);
  if (n < 0) throw new SysError(call, koffi.errno());
  return n;
}

function sockaddrIn(addr: string, port: number): Buffer {
  const sa = Buffer.alloc(16);
  sa.writeUInt16LE(AF_INET, 0);
  sa.writeUInt16BE(port, 2);
  addr.split('.').forEach((o, i) => (sa[4 + i] = Number(o)));
  return sa;
}

function setInt(fd: number, level: number, name: number, v: number, call: string): void {
  const b = Buffer.alloc(4);
  b.writeInt32LE(v);
  check(call, setsockopt_(fd, level, name, b, 4) as number);
}

/** Classic BPF instructions {code, jt, jf, k} (struct sock_filter). */
type Bpf = ReadonlyArray<readonly [number, number, number, number]>;

/**
 * Accept only UDP datagrams to port 4791 that are not fragments: the raw
 * socket would otherwise get a copy of every UDP datagram for its address.
 */
const ROCE_ONLY: Bpf = [
  [0x28, 0, 0, 6], // ldh [6]            flags + fragment offset
  [0x45, 4, 0, 0x1fff], // jset #0x1fff  a fragment: drop
  [0xb1, 0, 0, 0], // ldxb 4*([0]&0xf)   IP header length
  [0x48, 0, 0, 2], // ldh [x+2]          UDP destination port
  [0x15, 0, 1, 4791], // jeq #4791
  [0x06, 0, 0, 0x40000], // ret: the whole datagram
  [0x06, 0, 0, 0], // ret 0: not for us
];
const DROP_ALL: Bpf = [[0x06, 0, 0, 0]];

function attachFilter(fd: number, prog: Bpf): void {
  // struct sock_fprog { u16 len; void *filter; } with the program in one mapping, so its address is known
  const m = mapAnon(4096);
  try {
    const dv = new DataView(m.buffer);
    prog.forEach(([code, jt, jf, k], i) => {
      dv.setUint16(16 + i * 8, code, true);
      dv.setUint8(16 + i * 8 + 2, jt);
      dv.setUint8(16 + i * 8 + 3, jf);
      dv.setUint32(16 + i * 8 + 4, k, true);
    });
    dv.setUint16(0, prog.length, true);
    dv.setBigUint64(8, m.addr + 16n, true);
    // the kernel copies the program: the mapping can go once this returns
    check('setsockopt(SO_ATTACH_FILTER)', setsockopt_(fd, SOL_SOCKET, SO_ATTACH_FILTER, m.ptr, 16) as number);
  } finally {
    unmap(m);
  }
}

/**
 * A bound UDP socket on addr:port that drops everything it is given: it
 * claims the port (a second daemon on the address is refused, as with a
 * dgram socket) and keeps the kernel from answering with ICMP.
 */
export class PortClaim {
  private fd: number;
  constructor(addr: string, port: number) {
    this.fd = check('socket(AF_INET, SOCK_DGRAM)', socket_(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0) as number);
    try {
      attachFilter(this.fd, DROP_ALL);
      const sa = sockaddrIn(addr, port);
      check(`bind(${addr}:${port})`, bind_(this.fd, sa, 16) as number);
    } catch (e) {
      close_(this.fd);
      throw e;
    }
  }
  close(): void {
    if (this.fd >= 0) close_(this.fd);
    this.fd = -1;
  }
}

const BATCH = 32;
const SLOT = 9216; // a jumbo frame; a longer datagram is truncated and dropped
const MMSG = 64; // struct mmsghdr: msghdr (56) + msg_len, padded
const IOV = 16;

/**
 * A raw IPv4 socket for UDP, bound to one local address: sends whole IP
 * packets, receives whole IP packets for port 4791 at that address.
 */
export class RawUdp4 {
  private fd: number;
  private readonly ring: Mapping;
  private readonly dv: DataView;
  private readonly bytes: Uint8Array;
  private readonly dests = new Map<number, Buffer>();
  private closing = false;
  private fastFailures = 0;
  private reading = false;
  /** Datagrams the kernel would not take (socket buffer full): the caller counts them. */
  sendErrors = 0;

  /** Throws SysError EPERM without CAP_NET_RAW. */
  constructor(readonly addr: string) {
    this.fd = check('socket(AF_INET, SOCK_RAW, IPPROTO_UDP)', socket_(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_UDP) as number);
    try {
      setInt(this.fd, IPPROTO_IP, IP_HDRINCL, 1, 'setsockopt(IP_HDRINCL)');
      attachFilter(this.fd, ROCE_ONLY);
      // a raw socket's bind filters arriving packets by destination address
      check(`bind(${addr})`, bind_(this.fd, sockaddrIn(addr, 0), 16) as number);
      const tv = Buffer.alloc(16);
      tv.writeBigInt64LE(0n, 0);
      tv.writeBigInt64LE(100_000n, 8);
      check('setsockopt(SO_RCVTIMEO)', setsockopt_(this.fd, SOL_SOCKET, SO_RCVTIMEO, tv, 16) as number);
      for (const [force, plain] of [[SO_RCVBUFFORCE, SO_RCVBUF], [SO_SNDBUFFORCE, SO_SNDBUF]] as const) {
        try {
          setInt(this.fd, SOL_SOCKET, force, 8 << 20, 'setsockopt(SO_*BUFFORCE)');
        } catch {
          setInt(this.fd, SOL_SOCKET, plain, 8 << 20, 'setsockopt(SO_*BUF)');
        }
      }
    } catch (e) {
      close_(this.fd);
      throw e;
    }
    this.ring = mapAnon(BATCH * (MMSG + IOV + SLOT));
    this.dv = new DataView(this.ring.buffer);
    this.bytes = new Uint8Array(this.ring.buffer);
    const iovBase = BATCH * MMSG;
    const dataBase = iovBase + BATCH * IOV;
    for (let i = 0; i < BATCH; i++) {
      const h = i * MMSG;
      const iov = iovBase + i * IOV;
      this.dv.setBigUint64(iov, this.ring.addr + BigInt(dataBase + i * SLOT), true);
      this.dv.setBigUint64(iov + 8, BigInt(SLOT), true);
      this.dv.setBigUint64(h + 16, this.ring.addr + BigInt(iov), true); // msg_iov
      this.dv.setBigUint64(h + 24, 1n, true); // msg_iovlen
    }
  }

  /** Sends one whole IPv4 packet (header included, destination `dst` as a u32) without blocking; false if the kernel refused it. */
  send(pkt: Uint8Array, len: number, dst: number): boolean {
    let sa = this.dests.get(dst);
    if (!sa) {
      sa = sockaddrIn(`${dst >>> 24}.${(dst >> 16) & 255}.${(dst >> 8) & 255}.${dst & 255}`, 0);
      this.dests.set(dst, sa);
    }
    const r = Number(sendto_(this.fd, pkt, len, MSG_DONTWAIT, sa, 16));
    if (r < 0) {
      this.sendErrors++;
      return false;
    }
    return true;
  }

  /**
   * Starts the receive loop: `onPacket` sees each datagram as a window on
   * the receive mapping, valid only until it returns.
   */
  start(onPacket: (buf: Uint8Array, len: number) => void, onError: (e: Error) => void): void {
    if (this.reading) return;
    this.reading = true;
    const dataBase = BATCH * (MMSG + IOV);
    const loop = (): void => {
      if (this.closing) return this.finish();
      for (let i = 0; i < BATCH; i++) this.dv.setUint32(i * MMSG + 48, 0, true); // msg_flags
      const t0 = Date.now();
      recvmmsg_.async(this.fd, this.ring.ptr, BATCH, MSG_WAITFORONE, null, (err: Error | null, n: number) => {
        if (this.closing) return this.finish();
        if (err) return onError(err);
        if (n < 0) {
          // errno lives on the pool thread; a timeout (EAGAIN) takes 100 ms, so fast failures mean a broken socket
          if (Date.now() - t0 < 5 && ++this.fastFailures > 100) return onError(new Error('recvmmsg keeps failing on the raw socket'));
        } else this.fastFailures = 0;
        for (let i = 0; i < n; i++) {
          const len = this.dv.getUint32(i * MMSG + 56, true);
          if (this.dv.getUint32(i * MMSG + 48, true) & MSG_TRUNC) continue;
          try {
            onPacket(this.bytes.subarray(dataBase + i * SLOT, dataBase + i * SLOT + len), len);
          } catch (e) {
            onError(e as Error);
          }
        }
        loop();
      });
    };
    loop();
  }

  private finish(): void {
    if (this.fd >= 0) {
      close_(this.fd);
      this.fd = -1;
      unmap(this.ring);
    }
  }

  /** Closes the socket once the receive call in flight (at most 100 ms) returns. */
  close(): void {
    if (this.closing) return;
    this.closing = true;
    if (!this.reading) this.finish();
  }
}
