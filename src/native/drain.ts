/**
 * Reading the sockets Node does not read: the raw socket (raw-udp4.ts), and
 * a dgram socket whose reading the caller took over (hca/transport.ts), with
 * what the kernel says of each datagram besides its bytes (its sender, its
 * UDP GRO segment size).
 */
import { libc, mapAnon, unmap, type Mapping } from './libc.js';
import { CMSG, cmsgLen, cmsgSpace, SIN, SIN6, MM_SIZE, MM_NAME, MM_NAMELEN, MM_IOV, MM_IOVLEN, MM_CONTROL, MM_CONTROLLEN, MM_FLAGS, MM_LEN,
  IOV_SIZE, IOV_BASE, IOV_LEN } from './layouts.js';
import { AF_INET6, MSG_DONTWAIT, NAME_SLOT, setInt, SOL_UDP } from './socket.js';

const recvmmsg_ = libc.func('int recvmmsg(int fd, void *vec, unsigned int vlen, int flags, void *timeout)');

const UDP_GRO = 104;
const MSG_TRUNC = 0x20;

const CMSG_LEVEL = CMSG.cmsg_level;
const CMSG_TYPE = CMSG.cmsg_type;
const CMSG_DATA = cmsgLen(0);
// sockaddr_in and sockaddr_in6 begin alike (family, then port): the family says which one the rest is
const FAMILY = SIN.sin_family;
const PORT = SIN.sin_port;
const ADDR4 = SIN.sin_addr;
const ADDR6 = SIN6.sin6_addr;
/** the msg_namelen a read offers: room for either sockaddr */
const NAME_ROOM = SIN6.SIZE;

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
/** room for the one control message a drain asks for: UDP_GRO's segment size, an int */
const CTL = cmsgSpace(4);
/** CTL as the u64 msg_controllen takes it, made once (a BigInt per message per read would be an allocation) */
const CTL_LEN = BigInt(CTL);
/** the cmsg_len of UDP_GRO's control message: a shorter msg_controllen carries no segment size */
const GRO_CMSG_LEN = cmsgLen(4);

/**
 * Batched non-blocking reads of one socket: RX_MSGS mmsghdrs with their
 * iovecs, data slots and (for a UDP socket) sender addresses, in one
 * mapping; each drain() takes everything waiting, RX_MSGS to a recvmmsg.
 */
export class Drain {
  private readonly m: Mapping;
  private readonly dv: DataView;
  private readonly iovs = RX_MSGS * MM_SIZE;
  private readonly nameOff = this.iovs + RX_MSGS * IOV_SIZE;
  private readonly ctlOff = this.nameOff + RX_MSGS * NAME_SLOT;
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
      const hdr = i * MM_SIZE;
      if (withNames) this.dv.setBigUint64(hdr + MM_NAME, a + BigInt(this.nameOff + i * NAME_SLOT), true);
      if (gro) this.dv.setBigUint64(hdr + MM_CONTROL, a + BigInt(this.ctlOff + i * CTL), true);
      this.dv.setBigUint64(hdr + MM_IOV, a + BigInt(this.iovs + i * IOV_SIZE), true);
      this.dv.setBigUint64(hdr + MM_IOVLEN, 1n, true);
      this.dv.setBigUint64(this.iovs + i * IOV_SIZE + IOV_BASE, a + BigInt(this.data + i * slot), true);
      this.dv.setBigUint64(this.iovs + i * IOV_SIZE + IOV_LEN, BigInt(slot), true);
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
        dv.setUint32(i * MM_SIZE + MM_FLAGS, 0, true);
        if (this.withNames) dv.setUint32(i * MM_SIZE + MM_NAMELEN, NAME_ROOM, true);
        if (this.gro) dv.setBigUint64(i * MM_SIZE + MM_CONTROLLEN, CTL_LEN, true);
      }
      const n = recvmmsg_(this.fd, this.m.ptr, RX_MSGS, MSG_DONTWAIT, null) as number;
      if (n <= 0) return total; // EAGAIN: nothing more
      for (let i = 0; i < n; i++) {
        if (dv.getUint32(i * MM_SIZE + MM_FLAGS, true) & MSG_TRUNC) continue;
        dg.off = this.data + i * this.slot;
        dg.len = dv.getUint32(i * MM_SIZE + MM_LEN, true);
        dg.seg = 0;
        if (this.gro && dv.getUint32(i * MM_SIZE + MM_CONTROLLEN, true) >= GRO_CMSG_LEN) {
          // the only control message asked for is UDP_GRO's
          const c = this.ctlOff + i * CTL;
          if (dv.getInt32(c + CMSG_LEVEL, true) === SOL_UDP && dv.getInt32(c + CMSG_TYPE, true) === UDP_GRO) dg.seg = dv.getInt32(c + CMSG_DATA, true);
        }
        if (this.withNames) {
          const name = this.nameOff + i * NAME_SLOT;
          if (dv.getUint16(name + FAMILY, true) === AF_INET6) {
            for (let k = 0; k < 16; k++) this.from6[k] = dg.bytes[name + ADDR6 + k]!;
            dg.from = this.from6;
          } else {
            for (let k = 0; k < 4; k++) this.from4[k] = dg.bytes[name + ADDR4 + k]!;
            dg.from = this.from4;
          }
          dg.port = dv.getUint16(name + PORT, false);
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

/**
 * UDP GRO on a socket: a train of equal datagrams from one sender (a local sender's GSO message, or what a
 * NIC's GRO merged) arrives as one, its segment size in a control message. Never undone (RoceTransport.ownPort says why).
 */
export function enableGro(fd: number): void {
  setInt(fd, SOL_UDP, UDP_GRO, 1, 'setsockopt(UDP_GRO)');
}
