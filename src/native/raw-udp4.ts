/**
 * A raw IPv4 socket that reads whole IP packets for port 4791 at one
 * address, so the ICRC of what arrives can be checked against the IP header
 * as it came; a BPF filter keeps every other UDP datagram for the address
 * off it. Node cannot wait on it, so the caller says when to read (a dgram
 * socket on the port gets a copy of each datagram); drain() then takes
 * everything waiting with non-blocking recvmmsg.
 */
import { check } from './libc.js';
import { Drain, type Datagram } from './drain.js';
import { AF_INET, attachFilter, bigBuffers, bind_, close_, SOCK_CLOEXEC, sockaddr, socket_, type Bpf } from './socket.js';

const SOCK_RAW = 3;
const IPPROTO_UDP = 17;

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

/** Room for one jumbo IP packet, or one GSO batch of a local sender (which a raw socket sees unsegmented). */
const RAW_SLOT = 65536;

/** Receives whole IP packets for port 4791 at `ip` (it sends nothing: UdpWire does). */
export class RawUdp4 {
  private fd: number;

  /** Throws SysError EPERM without CAP_NET_RAW. */
  constructor(readonly ip: Uint8Array) {
    this.fd = check('socket(AF_INET, SOCK_RAW, IPPROTO_UDP)', socket_(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_UDP) as number);
    try {
      attachFilter(this.fd, ROCE_ONLY);
      // a raw socket's bind filters arriving packets by destination address
      const sa = sockaddr(ip, 0);
      check('bind(raw)', bind_(this.fd, sa, sa.length) as number);
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
