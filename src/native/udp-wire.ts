/**
 * The UDP socket every RoCEv2 frame leaves through, through koffi (Node's
 * dgram cannot batch or segment). It is unconnected with IP_PMTUDISC_DO, so
 * the kernel sends each IPv4 datagram with DF and IP Identification 0: the
 * ICRC (which covers the ID) is exact without a raw socket or root. Frames
 * are built in place in a send arena and leave in batches, one sendmmsg for
 * up to TX_MSGS messages; consecutive frames of one size to one destination
 * go as one UDP GSO message (UDP_SEGMENT), whose segments the kernel numbers
 * from ID 0 upward wherever it cuts them (the caller learns the index each
 * gets).
 */
import koffi from 'koffi';
import { check, libc, mapAnon, unmap, type Mapping } from './libc.js';
import { CMSG, cmsgLen, cmsgSpace, SIN, SIN6, MM_SIZE, MM_NAME, MM_NAMELEN, MM_IOV, MM_IOVLEN, MM_CONTROL, MM_CONTROLLEN, IOV_SIZE,
  IOV_BASE, IOV_LEN } from './layouts.js';
import {
  AF_INET,
  AF_INET6,
  attachFilter,
  bigBuffers,
  bind_,
  close_,
  MSG_DONTWAIT,
  NAME_SLOT,
  setInt,
  SOCK_CLOEXEC,
  sockaddr,
  socket_,
  SOL_UDP,
  type Bpf,
} from './socket.js';

const sendmmsg_ = libc.func('int sendmmsg(int fd, void *vec, unsigned int vlen, int flags)');
const getsockname_ = libc.func('int getsockname(int fd, void *addr, void *len)');

const SOCK_DGRAM = 2;
const IPPROTO_IP = 0;
const IPPROTO_IPV6 = 41;
const IP_MTU_DISCOVER = 10;
const IPV6_MTU_DISCOVER = 23;
const IP_PMTUDISC_DO = 2;
const UDP_SEGMENT = 103;
const EIO = 5;
const EINVAL = 22;

const ADDR4 = SIN.sin_addr;
const ADDR6 = SIN6.sin6_addr;
const CMSG_DATA = cmsgLen(0);

/** Keep nothing: the send socket's receive queue stays empty. */
const NOTHING: Bpf = [[0x06, 0, 0, 0]];

const TX_MSGS = 64;
const TX_ARENA = 1 << 20;
/** UDP GSO limits: a message's payload fits one IPv4 datagram; UDP_MAX_SEGMENTS is 64 on older kernels */
const GSO_MAX_BYTES = 65000;
const GSO_MAX_SEGS = 64;
/** room for the control message a GSO message carries: UDP_SEGMENT with its segment size, a u16 */
const TX_CTL = cmsgSpace(2);
/** TX_CTL as the u64 msg_controllen takes it, made once */
const TX_CTL_LEN = BigInt(TX_CTL);

/**
 * `frame()` places the next frame's UDP payload in the send arena and says
 * which IP ID it will carry (`seg`); `flush()` sends everything placed
 * since the last flush.
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
  private readonly iovs = TX_MSGS * MM_SIZE;
  private readonly names = this.iovs + TX_MSGS * IOV_SIZE;
  private readonly ctls = this.names + TX_MSGS * NAME_SLOT;
  private readonly data = this.ctls + TX_MSGS * TX_CTL;

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
      this.port = sa.readUInt16BE(v6 ? SIN6.sin6_port : SIN.sin_port);
    } catch (e) {
      close_(this.fd);
      throw e;
    }
    this.tx = mapAnon(this.data + TX_ARENA);
    this.txDv = new DataView(this.tx.buffer);
    this.txBytes = new Uint8Array(this.tx.buffer);
    const a = this.tx.addr;
    for (let i = 0; i < TX_MSGS; i++) {
      const h = this.hdrs + i * MM_SIZE;
      const name = this.names + i * NAME_SLOT;
      this.txDv.setBigUint64(h + MM_NAME, a + BigInt(name), true);
      this.txDv.setUint32(h + MM_NAMELEN, v6 ? SIN6.SIZE : SIN.SIZE, true);
      this.txDv.setBigUint64(h + MM_IOV, a + BigInt(this.iovs + i * IOV_SIZE), true);
      this.txDv.setBigUint64(h + MM_IOVLEN, 1n, true);
      this.txDv.setUint16(name + (v6 ? SIN6.sin6_family : SIN.sin_family), v6 ? AF_INET6 : AF_INET, true);
      this.txDv.setUint16(name + (v6 ? SIN6.sin6_port : SIN.sin_port), dstPort, false);
      // the control message a GSO message carries: UDP_SEGMENT with its segment size (set at flush)
      const c = this.ctls + i * TX_CTL;
      this.txDv.setBigUint64(c + CMSG.cmsg_len, BigInt(cmsgLen(2)), true);
      this.txDv.setInt32(c + CMSG.cmsg_level, SOL_UDP, true);
      this.txDv.setInt32(c + CMSG.cmsg_type, UDP_SEGMENT, true);
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
    this.txDv.setBigUint64(this.iovs + i * IOV_SIZE + IOV_BASE, this.tx.addr + BigInt(off), true);
    this.txBytes.set(dst, this.names + i * NAME_SLOT + (v6 ? ADDR6 : ADDR4));
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
      const h = this.hdrs + i * MM_SIZE;
      this.txDv.setBigUint64(this.iovs + i * IOV_SIZE + IOV_LEN, BigInt(this.msgLen[i]!), true);
      if (this.msgSegs[i]! > 1) {
        this.txDv.setBigUint64(h + MM_CONTROL, this.tx.addr + BigInt(this.ctls + i * TX_CTL), true);
        this.txDv.setBigUint64(h + MM_CONTROLLEN, TX_CTL_LEN, true);
        this.txDv.setUint16(this.ctls + i * TX_CTL + CMSG_DATA, this.msgSegLen[i]!, true);
      } else {
        this.txDv.setBigUint64(h + MM_CONTROL, 0n, true);
        this.txDv.setBigUint64(h + MM_CONTROLLEN, 0n, true);
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
