/**
 * The socket Node's dgram cannot make, through koffi: a raw IPv4 socket
 * that writes its own IP header (IP_HDRINCL), so the daemon chooses the IP
 * Identification its ICRC covers, and reads whole IP packets, so it can
 * check the ICRC of what arrives.
 *
 * Node cannot wait on a raw fd, so the caller says when to read (a plain
 * UDP socket on the same port gets a copy of each datagram through libuv's
 * poll and serves as the doorbell); drain() then takes everything waiting
 * with non-blocking recvmmsg, up to BATCH datagrams per call, into one
 * anonymous mapping whose addresses the msghdr and iovec arrays point at.
 */
import koffi from 'koffi';
import { mapAnon, SysError, unmap, type Mapping } from './libc.js';

const libc = koffi.load('libc.so.6');
const socket_ = libc.func('int socket(int domain, int type, int protocol)');
const bind_ = libc.func('int bind(int fd, void *addr, uint32_t len)');
const setsockopt_ = libc.func('int setsockopt(int fd, int level, int name, void *val, uint32_t len)');
const sendmmsg_ = libc.func('int sendmmsg(int fd, void *vec, unsigned int vlen, int flags)');
const recvmmsg_ = libc.func('int recvmmsg(int fd, void *vec, unsigned int vlen, int flags, void *timeout)');
const close_ = libc.func('int close(int fd)');

const AF_INET = 2;
const SOCK_RAW = 3;
const SOCK_CLOEXEC = 0x80000;
const IPPROTO_IP = 0;
const IPPROTO_UDP = 17;
const IP_HDRINCL = 3;
const SOL_SOCKET = 1;
const SO_RCVBUF = 8;
const SO_SNDBUF = 7;
const SO_ATTACH_FILTER = 26;
const SO_RCVBUFFORCE = 33;
const SO_SNDBUFFORCE = 32;
const MSG_DONTWAIT = 0x40;
const MSG_TRUNC = 0x20;

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

const BATCH = 32;
const SLOT = 9216; // a jumbo frame; a longer datagram is truncated and dropped
const MMSG = 64; // struct mmsghdr: msghdr (56) + msg_len, padded
const IOV = 16;
const SADDR = 16; // struct sockaddr_in

/**
 * A raw IPv4 socket for UDP, bound to one local address: sends whole IP
 * packets (built in place, BATCH to a sendmmsg), receives whole IP packets
 * for port 4791 at that address.
 */
export class RawUdp4 {
  private fd: number;
  private readonly ring: Mapping;
  private readonly dv: DataView;
  private readonly bytes: Uint8Array;

  /** Throws SysError EPERM without CAP_NET_RAW. */
  constructor(readonly addr: string) {
    this.fd = check('socket(AF_INET, SOCK_RAW, IPPROTO_UDP)', socket_(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_UDP) as number);
    try {
      setInt(this.fd, IPPROTO_IP, IP_HDRINCL, 1, 'setsockopt(IP_HDRINCL)');
      attachFilter(this.fd, ROCE_ONLY);
      // a raw socket's bind filters arriving packets by destination address
      check(`bind(${addr})`, bind_(this.fd, sockaddrIn(addr, 0), 16) as number);
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
    // the send side: BATCH frames built in place, each with its own destination, sent with one sendmmsg
    this.tx = mapAnon(BATCH * (MMSG + IOV + SADDR + SLOT));
    this.txDv = new DataView(this.tx.buffer);
    const tIov = BATCH * MMSG;
    const tAddr = tIov + BATCH * IOV;
    const tData = tAddr + BATCH * SADDR;
    for (let i = 0; i < BATCH; i++) {
      const h = i * MMSG;
      this.txDv.setBigUint64(h, this.tx.addr + BigInt(tAddr + i * SADDR), true); // msg_name
      this.txDv.setUint32(h + 8, 16, true); // msg_namelen
      this.txDv.setBigUint64(h + 16, this.tx.addr + BigInt(tIov + i * IOV), true);
      this.txDv.setBigUint64(h + 24, 1n, true);
      this.txDv.setBigUint64(tIov + i * IOV, this.tx.addr + BigInt(tData + i * SLOT), true);
      this.txDv.setUint16(tAddr + i * SADDR, AF_INET, true);
      this.txSlots.push(new Uint8Array(this.tx.buffer, tData + i * SLOT, SLOT));
    }
  }

  private readonly tx: Mapping;
  private readonly txDv: DataView;
  private readonly txSlots: Uint8Array[] = [];
  private queued = 0;

  /** Where to build the next frame (IP header first); queue() it once written. */
  nextSlot(): Uint8Array {
    if (this.queued === BATCH) this.flush();
    return this.txSlots[this.queued]!;
  }

  /** Queues the frame just built in nextSlot() (`len` bytes, to `dst` as a u32). */
  queue(len: number, dst: number): void {
    const i = this.queued++;
    this.txDv.setBigUint64(BATCH * MMSG + i * IOV + 8, BigInt(len), true);
    this.txDv.setUint32(BATCH * (MMSG + IOV) + i * SADDR + 4, dst, false);
  }

  /** Sends what is queued with one sendmmsg, without blocking; returns how many the kernel refused (socket buffer full). */
  flush(): number {
    const n = this.queued;
    if (n === 0 || this.fd < 0) return 0;
    this.queued = 0;
    const r = sendmmsg_(this.fd, this.tx.ptr, n, MSG_DONTWAIT) as number;
    return r < 0 ? n : n - r;
  }

  /**
   * Reads every datagram waiting on the socket, without blocking:
   * `onPacket` sees each as a window on the receive mapping, valid only
   * until it returns. Returns how many there were.
   */
  drain(onPacket: (buf: Uint8Array, len: number) => void): number {
    let total = 0;
    const dataBase = BATCH * (MMSG + IOV);
    for (;;) {
      if (this.fd < 0) return total;
      for (let i = 0; i < BATCH; i++) this.dv.setUint32(i * MMSG + 48, 0, true); // msg_flags
      const n = recvmmsg_(this.fd, this.ring.ptr, BATCH, MSG_DONTWAIT, null) as number;
      if (n <= 0) return total; // EAGAIN: nothing more
      for (let i = 0; i < n; i++) {
        if (this.dv.getUint32(i * MMSG + 48, true) & MSG_TRUNC) continue;
        const len = this.dv.getUint32(i * MMSG + 56, true);
        onPacket(this.bytes.subarray(dataBase + i * SLOT, dataBase + i * SLOT + len), len);
      }
      total += n;
      if (n < BATCH) return total;
    }
  }

  close(): void {
    if (this.fd < 0) return;
    close_(this.fd);
    this.fd = -1;
    unmap(this.ring);
    unmap(this.tx);
  }
}
