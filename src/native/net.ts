/**
 * The sockets Node's dgram cannot make, through koffi.
 *
 * `UdpWire`: the UDP socket every RoCEv2 frame leaves through. It is
 * unconnected with IP_PMTUDISC_DO, so the kernel sends each IPv4 datagram
 * with DF and IP Identification 0: the ICRC (which covers the ID) is exact
 * without a raw socket or root. Frames are built in place in a send arena
 * and leave in batches, one sendmmsg for up to TX_MSGS messages;
 * consecutive frames of one size to one destination go as one UDP GSO
 * message (UDP_SEGMENT), whose segments the kernel numbers from ID 0
 * upward wherever it cuts them (the caller learns the index each gets).
 *
 * `RawUdp4`: a raw IPv4 socket that reads whole IP packets for port 4791
 * at one address, so the ICRC of what arrives can be checked against the
 * IP header as it came. Node cannot wait on it, so the caller says when to
 * read (a dgram socket on the port gets a copy of each datagram); drain()
 * then takes everything waiting with non-blocking recvmmsg.
 */
import koffi from 'koffi';
import { mapAnon, SysError, unmap, type Mapping } from './libc.js';

const libc = koffi.load('libc.so.6');
const socket_ = libc.func('int socket(int domain, int type, int protocol)');
const bind_ = libc.func('int bind(int fd, void *addr, uint32_t len)');
const setsockopt_ = libc.func('int setsockopt(int fd, int level, int name, void *val, uint32_t len)');
const sendmmsg_ = libc.func('int sendmmsg(int fd, void *vec, unsigned int vlen, int flags)');
const recvmmsg_ = libc.func('int recvmmsg(int fd, void *vec, unsigned int vlen, int flags, void *timeout)');
const getsockname_ = libc.func('int getsockname(int fd, void *addr, void *len)');
const close_ = libc.func('int close(int fd)');
const poll_ = libc.func('int poll(void *fds, unsigned long nfds, int timeout)');

const AF_INET = 2;
const AF_INET6 = 10;
const SOCK_DGRAM = 2;
const SOCK_RAW = 3;
const SOCK_CLOEXEC = 0x80000;
const IPPROTO_IP = 0;
const IPPROTO_IPV6 = 41;
const IPPROTO_UDP = 17;
const IP_MTU_DISCOVER = 10;
const IPV6_MTU_DISCOVER = 23;
const IP_PMTUDISC_DO = 2;
const SOL_SOCKET = 1;
const SOL_UDP = 17;
const UDP_GRO = 104;
const UDP_SEGMENT = 103;
const SO_RCVBUF = 8;
const SO_SNDBUF = 7;
const SO_ATTACH_FILTER = 26;
const SO_RCVBUFFORCE = 33;
const SO_SNDBUFFORCE = 32;
const MSG_DONTWAIT = 0x40;
const MSG_TRUNC = 0x20;
const EIO = 5;
const EINVAL = 22;

function check(call: string, r: number | bigint): number {
  const n = Number(r);
  if (n < 0) throw new SysError(call, koffi.errno());
  return n;
}

/** struct sockaddr_in / sockaddr_in6 for an address given as 4 or 16 bytes. */
function sockaddr(ip: Uint8Array, port: number): Buffer {
  const sa = Buffer.alloc(ip.length === 4 ? 16 : 28);
  sa.writeUInt16LE(ip.length === 4 ? AF_INET : AF_INET6, 0);
  sa.writeUInt16BE(port, 2);
  sa.set(ip, ip.length === 4 ? 4 : 8);
  return sa;
}

function setInt(fd: number, level: number, name: number, v: number, call: string): void {
  const b = Buffer.alloc(4);
  b.writeInt32LE(v);
  check(call, setsockopt_(fd, level, name, b, 4) as number);
}

function bigBuffers(fd: number): void {
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

/** Keep nothing: the send socket's receive queue stays empty. */
const NOTHING: Bpf = [[0x06, 0, 0, 0]];

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

// struct mmsghdr on x86-64/aarch64: msghdr (name 0, namelen 8, iov 16, iovlen 24, control 32, controllen 40, flags 48) + msg_len 56
const MMSG = 64;
const IOV = 16;

/** One arriving datagram, as the wire's receive paths hand it on. */
export interface Datagram {
  /** where it lies: bytes[off, off + len), valid only during the callback */
  bytes: Uint8Array;
  off: number;
  len: number;
  /** the sender's address (4 or 16 bytes) and port */
  from: Uint8Array;
  port: number;
  /** UDP GRO: the size of each datagram coalesced into this one, the last maybe shorter (0: one datagram) */
  seg: number;
}

const RX_MSGS = 32;
/** CMSG_SPACE(sizeof(int)): room for the one control message a drain asks for (UDP_GRO's segment size) */
const CTL = 24;
/** CTL as the u64 msg_controllen takes it, made once (a BigInt per message per read would be an allocation) */
const CTL_LEN = BigInt(CTL);

/**
 * Batched non-blocking reads of one socket: RX_MSGS mmsghdrs with their
 * iovecs, data slots and (for a UDP socket) sender addresses, in one
 * mapping; each drain() takes everything waiting, RX_MSGS to a recvmmsg.
 */
export class Drain {
  private readonly m: Mapping;
  private readonly dv: DataView;
  private readonly iovs = RX_MSGS * MMSG;
  private readonly nameOff = this.iovs + RX_MSGS * IOV;
  private readonly ctlOff = this.nameOff + RX_MSGS * 32;
  private readonly data = this.ctlOff + RX_MSGS * CTL;
  private readonly dg: Datagram;
  private readonly from4 = new Uint8Array(4);
  private readonly from6 = new Uint8Array(16);

  /**
   * `slot`: the longest datagram kept (a longer one is dropped); `withNames`: learn each sender's address;
   * `gro`: learn the segment size of datagrams UDP GRO coalesced (its control message).
   */
  constructor(private fd: number, private readonly slot: number, private readonly withNames = false, private readonly gro = false) {
    this.m = mapAnon(this.data + RX_MSGS * slot);
    this.dv = new DataView(this.m.buffer);
    const a = this.m.addr;
    for (let i = 0; i < RX_MSGS; i++) {
      const hdr = i * MMSG;
      if (withNames) this.dv.setBigUint64(hdr, a + BigInt(this.nameOff + i * 32), true); // msg_name
      if (gro) this.dv.setBigUint64(hdr + 32, a + BigInt(this.ctlOff + i * CTL), true); // msg_control
      this.dv.setBigUint64(hdr + 16, a + BigInt(this.iovs + i * IOV), true); // msg_iov
      this.dv.setBigUint64(hdr + 24, 1n, true); // msg_iovlen
      this.dv.setBigUint64(this.iovs + i * IOV, a + BigInt(this.data + i * slot), true);
      this.dv.setBigUint64(this.iovs + i * IOV + 8, BigInt(slot), true);
    }
    this.dg = { bytes: new Uint8Array(this.m.buffer), off: 0, len: 0, from: this.from4, port: 0, seg: 0 };
  }

  /**
   * Reads every datagram waiting, without blocking: `onDatagram` sees each
   * as a window on the receive memory, valid only until it returns;
   * `onBatch` runs after each full batch that more may follow (what the
   * batch caused can leave before the next is read). Returns how many
   * there were.
   */
  drain(onDatagram: (d: Datagram) => void, onBatch?: () => void): number {
    const dv = this.dv;
    const dg = this.dg;
    let total = 0;
    for (;;) {
      if (this.fd < 0) return total;
      for (let i = 0; i < RX_MSGS; i++) {
        dv.setUint32(i * MMSG + 48, 0, true); // msg_flags
        if (this.withNames) dv.setUint32(i * MMSG + 8, 28, true); // msg_namelen
        if (this.gro) dv.setBigUint64(i * MMSG + 40, CTL_LEN, true); // msg_controllen
      }
      const n = recvmmsg_(this.fd, this.m.ptr, RX_MSGS, MSG_DONTWAIT, null) as number;
      if (n <= 0) return total; // EAGAIN: nothing more
      for (let i = 0; i < n; i++) {
        if (dv.getUint32(i * MMSG + 48, true) & MSG_TRUNC) continue;
        dg.off = this.data + i * this.slot;
        dg.len = dv.getUint32(i * MMSG + 56, true);
        dg.seg = 0;
        if (this.gro && dv.getUint32(i * MMSG + 40, true) >= 20) {
          // struct cmsghdr { u64 len; i32 level; i32 type; } then the int: the only one asked for is UDP_GRO's
          const c = this.ctlOff + i * CTL;
          if (dv.getInt32(c + 8, true) === SOL_UDP && dv.getInt32(c + 12, true) === UDP_GRO) dg.seg = dv.getInt32(c + 16, true);
        }
        if (this.withNames) {
          const name = this.nameOff + i * 32;
          if (dv.getUint16(name, true) === AF_INET6) {
            for (let k = 0; k < 16; k++) this.from6[k] = dg.bytes[name + 8 + k]!;
            dg.from = this.from6;
          } else {
            for (let k = 0; k < 4; k++) this.from4[k] = dg.bytes[name + 4 + k]!;
            dg.from = this.from4;
          }
          dg.port = dv.getUint16(name + 2, false);
        }
        onDatagram(dg);
      }
      total += n;
      if (n < RX_MSGS) return total;
      onBatch?.();
    }
  }

  /** The socket is someone else's to close; this only forgets it and frees the memory. */
  close(): void {
    this.fd = -1;
    unmap(this.m);
  }
}

const POLLIN = 1;
const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
const pipe2_ = libc.func('int pipe2(int *fds, int flags)');
const read_ = libc.func('intptr_t read(int fd, void *buf, size_t n)');
const write_ = libc.func('intptr_t write(int fd, const void *buf, size_t n)');
/** pollfds one wait can hold (the wake pipe's among them) */
const MAX_WAITS = 256;

/**
 * Sockets Node does not read, waited on together: one poll() on a worker
 * thread of koffi's (libuv's pool) for all of them, with a pipe that wakes
 * it when the set changes. Each socket's `ready` runs on the main thread,
 * once, when it is readable; then it is out of the set until waited on
 * again. An empty set holds no thread, and a waiting one costs no CPU.
 * A thread's hop is a wake-up more than Node's own epoll: this is for
 * sockets that are mostly read while busy anyway.
 */
export class ReadableSet {
  private readonly waits = new Map<number, () => void>();
  /** struct pollfd { int fd; short events; short revents; } x MAX_WAITS, where the worker thread can see it */
  private readonly m: Mapping = mapAnon(MAX_WAITS * 8);
  private readonly dv = new DataView(this.m.buffer);
  private readonly pipe: [number, number];
  private polling = false;
  private readonly byte = Buffer.alloc(64);

  constructor() {
    const fds = new Int32Array(2);
    check('pipe2', pipe2_(fds, O_NONBLOCK | O_CLOEXEC) as number);
    this.pipe = [fds[0]!, fds[1]!];
  }

  /** Calls `ready` once `fd` is readable (at most MAX_WAITS - 1 sockets wait at once). */
  wait(fd: number, ready: () => void): void {
    if (!this.waits.has(fd) && this.waits.size >= MAX_WAITS - 1) throw new SysError('ReadableSet.wait', EINVAL);
    this.waits.set(fd, ready);
    this.changed();
  }

  /** `fd` is no longer waited on (it is about to be closed). */
  cancel(fd: number): void {
    if (this.waits.delete(fd)) this.changed();
  }

  private changed(): void {
    // a poll under way does not see the new set: the pipe ends it, and its return starts the next
    if (this.polling) write_(this.pipe[1], this.byte, 1);
    else this.start();
  }

  private start(): void {
    if (this.waits.size === 0) return;
    const dv = this.dv;
    let n = 0;
    for (const fd of [this.pipe[0], ...this.waits.keys()]) {
      dv.setInt32(n * 8, fd, true);
      dv.setInt16(n * 8 + 4, POLLIN, true);
      dv.setInt16(n * 8 + 6, 0, true);
      n++;
    }
    this.polling = true;
    poll_.async(this.m.ptr, n, -1, (err: unknown, r: number) => {
      this.polling = false;
      if (!err && r > 0) {
        // the pipe only woke us; what it holds is spent
        if (dv.getInt16(6, true) !== 0) while (Number(read_(this.pipe[0], this.byte, this.byte.length)) > 0);
        const ready: (() => void)[] = [];
        for (let i = 1; i < n; i++) {
          if (dv.getInt16(i * 8 + 6, true) === 0) continue;
          const fd = dv.getInt32(i * 8, true);
          const f = this.waits.get(fd);
          if (f) {
            this.waits.delete(fd);
            ready.push(f);
          }
        }
        for (const f of ready) f();
      }
      if (!this.polling) this.start();
    });
  }
}

let readables: ReadableSet | null = null;
/** The process's ReadableSet. */
export function readableSet(): ReadableSet {
  return (readables ??= new ReadableSet());
}

/**
 * UDP GRO on a socket: a train of equal datagrams from one sender (a local sender's GSO message, or what a
 * NIC's GRO merged) arrives as one, its segment size in a control message. Never undone (RoceTransport.ownPort says why).
 */
export function enableGro(fd: number): void {
  setInt(fd, SOL_UDP, UDP_GRO, 1, 'setsockopt(UDP_GRO)');
}

const TX_MSGS = 64;
const TX_ARENA = 1 << 20;
/** UDP GSO limits: a message's payload fits one IPv4 datagram; UDP_MAX_SEGMENTS is 64 on older kernels */
const GSO_MAX_BYTES = 65000;
const GSO_MAX_SEGS = 64;

/**
 * The RoCEv2 UDP socket (see the top of this file). `frame()` places the
 * next frame's UDP payload in the send arena and says which IP ID it will
 * carry (`seg`); `flush()` sends everything placed since the last flush.
 */
export class UdpWire {
  private fd: number;
  private readonly tx: Mapping;
  /** the send arena: frame() returns offsets into it; txDv is a DataView over all of it */
  readonly txBytes: Uint8Array;
  readonly txDv: DataView;
  private readonly txViews: Uint8Array[] = [];
  private readonly msgSegs = new Uint16Array(TX_MSGS);
  private readonly msgSegLen = new Uint32Array(TX_MSGS);
  private readonly msgLen = new Uint32Array(TX_MSGS);
  private msgs = 0;
  private used = 0;
  private readonly lastDst = new Uint8Array(16);
  /** GSO in use (off after the kernel refused it once, with why in gsoOff) */
  gso = true;
  gsoOff = '';
  /** the port bound (the source port of every frame, which the ICRC covers) */
  readonly port: number = 0;
  /** the IP Identification the frame placed last will carry: its index in its GSO message */
  seg = 0;
  private readonly hdrs = 0;
  private readonly iovs = TX_MSGS * MMSG;
  private readonly names = this.iovs + TX_MSGS * IOV;
  private readonly ctls = this.names + TX_MSGS * 32;
  private readonly data = this.ctls + TX_MSGS * 32;

  /**
   * Binds `ip` (4 or 16 bytes) and an ephemeral port; frames go to port
   * `dstPort`. It only sends: a filter drops whatever arrives.
   */
  constructor(readonly ip: Uint8Array, readonly dstPort: number) {
    const v6 = ip.length === 16;
    this.fd = check('socket(SOCK_DGRAM)', socket_(v6 ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0) as number);
    try {
      // unconnected + DF: the kernel gives every IPv4 datagram ID 0, which the ICRC covers
      if (v6) setInt(this.fd, IPPROTO_IPV6, IPV6_MTU_DISCOVER, IP_PMTUDISC_DO, 'setsockopt(IPV6_MTU_DISCOVER)');
      else setInt(this.fd, IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO, 'setsockopt(IP_MTU_DISCOVER)');
      attachFilter(this.fd, NOTHING);
      bigBuffers(this.fd);
      const sa = sockaddr(ip, 0);
      check('bind(UDP)', bind_(this.fd, sa, sa.length) as number);
      const len = Buffer.alloc(4);
      len.writeUInt32LE(sa.length);
      check('getsockname', getsockname_(this.fd, sa, len) as number);
      this.port = sa.readUInt16BE(2);
    } catch (e) {
      close_(this.fd);
      throw e;
    }
    this.tx = mapAnon(this.data + TX_ARENA);
    this.txDv = new DataView(this.tx.buffer);
    this.txBytes = new Uint8Array(this.tx.buffer);
    const a = this.tx.addr;
    for (let i = 0; i < TX_MSGS; i++) {
      const h = this.hdrs + i * MMSG;
      this.txDv.setBigUint64(h, a + BigInt(this.names + i * 32), true);
      this.txDv.setUint32(h + 8, v6 ? 28 : 16, true);
      this.txDv.setBigUint64(h + 16, a + BigInt(this.iovs + i * IOV), true);
      this.txDv.setBigUint64(h + 24, 1n, true);
      const name = this.names + i * 32;
      this.txDv.setUint16(name, v6 ? AF_INET6 : AF_INET, true);
      this.txDv.setUint16(name + 2, dstPort, false);
      // the control message a GSO message carries: UDP_SEGMENT with its segment size (set at flush)
      const c = this.ctls + i * 32;
      this.txDv.setBigUint64(c, 18n, true); // CMSG_LEN(sizeof(u16))
      this.txDv.setInt32(c + 8, SOL_UDP, true);
      this.txDv.setInt32(c + 12, UDP_SEGMENT, true);
      // a window from message i on, for sending what is left after a partial sendmmsg
      this.txViews.push(new Uint8Array(this.tx.buffer, h));
    }
  }

  /**
   * Places a frame of `len` bytes to `dst` (4 or 16 bytes): returns its
   * offset in txBytes (write it there before the next call) and sets `seg`.
   */
  frame(len: number, dst: Uint8Array): number {
    const m = this.msgs - 1;
    const v6 = dst.length === 16;
    if (
      m >= 0 && this.gso && this.msgSegLen[m] === len && this.msgSegs[m]! < GSO_MAX_SEGS && this.msgLen[m]! + len <= GSO_MAX_BYTES &&
      this.used + len <= TX_ARENA && this.sameDst(dst)
    ) {
      this.seg = this.msgSegs[m]!++;
      this.msgLen[m]! += len;
      const off = this.data + this.used;
      this.used += len;
      return off;
    }
    if (this.msgs === TX_MSGS || this.used + len > TX_ARENA) this.flush();
    const i = this.msgs++;
    const off = this.data + this.used;
    this.used += len;
    this.msgSegs[i] = 1;
    this.msgSegLen[i] = len;
    this.msgLen[i] = len;
    this.seg = 0;
    this.txDv.setBigUint64(this.iovs + i * IOV, this.tx.addr + BigInt(off), true);
    this.txBytes.set(dst, this.names + i * 32 + (v6 ? 8 : 4));
    this.lastDst.set(dst);
    return off;
  }

  private sameDst(dst: Uint8Array): boolean {
    const l = this.lastDst;
    for (let i = dst.length - 1; i >= 0; i--) if (l[i] !== dst[i]) return false;
    return true;
  }

  /** Sends what frame() placed, without blocking; returns how many frames were not sent. */
  flush(): number {
    const n = this.msgs;
    if (n === 0 || this.fd < 0) return 0;
    for (let i = 0; i < n; i++) {
      const h = this.hdrs + i * MMSG;
      this.txDv.setBigUint64(this.iovs + i * IOV + 8, BigInt(this.msgLen[i]!), true);
      if (this.msgSegs[i]! > 1) {
        this.txDv.setBigUint64(h + 32, this.tx.addr + BigInt(this.ctls + i * 32), true);
        this.txDv.setBigUint64(h + 40, 24n, true);
        this.txDv.setUint16(this.ctls + i * 32 + 16, this.msgSegLen[i]!, true);
      } else {
        this.txDv.setBigUint64(h + 32, 0n, true);
        this.txDv.setBigUint64(h + 40, 0n, true);
      }
    }
    this.msgs = 0;
    this.used = 0;
    let lost = 0;
    for (let at = 0; at < n;) {
      const r = sendmmsg_(this.fd, this.txViews[at]!, n - at, MSG_DONTWAIT) as number;
      if (r > 0) {
        at += r;
        continue;
      }
      // the message at `at` did not go (a full buffer, or the kernel refused GSO for this route): lose it, as a
      // wire would, and try the rest; RC retransmits
      const errno = koffi.errno();
      if (this.msgSegs[at]! > 1 && (errno === EIO || errno === EINVAL) && this.gso) {
        this.gso = false;
        this.gsoOff = `UDP GSO refused (${errno === EIO ? 'EIO' : 'EINVAL'}): frames go one datagram each`;
      }
      lost += this.msgSegs[at]!;
      at++;
    }
    return lost;
  }

  close(): void {
    if (this.fd < 0) return;
    close_(this.fd);
    this.fd = -1;
    unmap(this.tx);
  }
}

/** Room for one jumbo IP packet, or one GSO batch of a local sender (which a raw socket sees unsegmented). */
const RAW_SLOT = 65536;

/**
 * A raw IPv4 socket for UDP bound to one local address: receives whole IP
 * packets for port 4791 there (it sends nothing: UdpWire does).
 */
export class RawUdp4 {
  private fd: number;

  /** Throws SysError EPERM without CAP_NET_RAW. */
  constructor(readonly ip: Uint8Array) {
    this.fd = check('socket(AF_INET, SOCK_RAW, IPPROTO_UDP)', socket_(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_UDP) as number);
    try {
      attachFilter(this.fd, ROCE_ONLY);
      // a raw socket's bind filters arriving packets by destination address
      check('bind(raw)', bind_(this.fd, sockaddr(ip, 0), 16) as number);
      bigBuffers(this.fd);
    } catch (e) {
      close_(this.fd);
      throw e;
    }
  }

  private reader: Drain | null = null;

  /**
   * Reads every packet waiting, without blocking (see Drain). The caller
   * knows when to call: a UDP socket on the port gets a copy of each.
   */
  drain(onDatagram: (d: Datagram) => void, onBatch?: () => void): number {
    return (this.reader ??= new Drain(this.fd, RAW_SLOT)).drain(onDatagram, onBatch);
  }

  /** The descriptor, to wait on when the port socket's copies no longer ring (see ReadableSet). */
  get descriptor(): number {
    return this.fd;
  }

  close(): void {
    if (this.fd < 0) return;
    this.reader?.close();
    close_(this.fd);
    this.fd = -1;
  }
}
