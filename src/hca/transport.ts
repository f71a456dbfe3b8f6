/**
 * The wire: RoCEv2 frames between this device and other hosts' (or other
 * daemons') devices, UDP destination port 4791.
 *
 * IPv4 (mode "raw"): the IPv4 ICRC covers the IP Identification, which a
 * plain UDP socket leaves to the kernel, so with CAP_NET_RAW the daemon
 * writes whole IP packets itself through a raw socket (choosing the ID its
 * ICRC covers, and the UDP source port rxe would use), and reads whole IP
 * packets back, so it checks the ICRC of everything that arrives. A plain
 * UDP socket on the port holds it and rings for the raw socket.
 *
 * Without CAP_NET_RAW (mode "udp"), IPv4 goes through a plain dgram socket:
 * the ICRC assumes Identification 0 and cannot be checked on arrival (a
 * Linux rxe peer will drop what we send whenever its kernel picked another
 * ID), and every packet leaves from source port 4791. The daemon says so at
 * start-up and `ibv_devinfo -v` shows it.
 *
 * IPv6 always uses a dgram socket: its ICRC covers no field the kernel
 * chooses, so it is exact both ways (only the source port is 4791).
 *
 * Decoded packets go to the device as if they came through the daemon's
 * own FIFO, so the requester, responder and completer are the same code.
 */
import { createSocket, type Socket } from 'node:dgram';
import { isIPv4 } from 'node:net';
import { networkInterfaces } from 'node:os';
import { RawUdp4 } from '../native/net.js';
import { SysError } from '../native/libc.js';
import { decode, encodeFrame, frameBytes, icrcOk, ROCE_PORT, writeIpUdp } from './codec.js';
import { gidIp, gidOf, gidToAddr, isV4Gid } from './gid.js';
import { OPCODES } from './opcodes.js';
import type { Pkt } from './packet.js';
import type { PcapWriter } from './pcap.js';

/** The device a wire belongs to, as the wire sees it (SoftDevice is one). */
export interface WireDevice {
  readonly addr: string;
  readonly gids: readonly Uint8Array[];
  readonly counters: { send_err: number };
  newPkt(): Pkt;
  freePkt(p: Pkt): void;
  /** a packet off the wire; its payload lives only until this returns */
  receiveFromWire(p: Pkt): void;
  onBug: ((e: Error) => void) | null;
}

/** How the device's wire was asked for: raw if allowed (auto), raw or nothing, or plain UDP. */
export type WireRequest = 'auto' | 'raw' | 'udp';

export class RoceTransport {
  private raw: RawUdp4 | null = null;
  private sock: Socket | null = null;
  private backstop: NodeJS.Timeout | null = null;
  private readonly v4: boolean;
  private readonly srcIp: Uint8Array;
  private ipId: number;
  /** "raw" or "udp" once started. */
  mode: 'raw' | 'udp' = 'udp';
  /** Why IPv4 is on plain UDP (empty when it is not). */
  fallback = '';
  /** Frames that arrived and were dropped before reaching a QP, by reason. */
  readonly dropped = new Map<string, number>();

  constructor(readonly dev: WireDevice, private readonly request: WireRequest = 'auto', private readonly pcap: PcapWriter | null = null) {
    this.v4 = isIPv4(dev.addr);
    this.srcIp = gidIp(gidOf(dev.addr)).slice();
    this.ipId = (process.pid * 2654435761) & 0xffff || 1;
  }

  async start(): Promise<void> {
    if (this.v4 && this.request !== 'udp') {
      try {
        this.raw = new RawUdp4(this.dev.addr);
        this.mode = 'raw';
      } catch (e) {
        const eperm = e instanceof SysError && e.code === 'EPERM';
        if (!eperm || this.request === 'raw') throw e;
        this.fallback = 'no CAP_NET_RAW: IPv4 goes through a plain UDP socket, its ICRC assumes IP ID 0 and arriving ICRCs are not checked';
      }
    }
    try {
      // raw: the UDP socket claims the port (no ICMP unreachable, one daemon per address) and its copy of each
      // datagram is the doorbell that says the raw socket has something; dgram: it carries the traffic itself
      await this.startDgram();
    } catch (e) {
      this.raw?.close();
      this.raw = null;
      throw e;
    }
    if (this.raw) {
      // a frame whose UDP twin was dropped (a full buffer) still gets read
      this.backstop = setInterval(() => this.drainRaw(), 20).unref();
    }
    this.learnSubnets();
  }

  private readonly onRawFrame = (b: Uint8Array, len: number): void => this.onFrame(b, len);
  private drainRaw(): void {
    try {
      this.raw?.drain(this.onRawFrame);
    } catch (e) {
      this.dev.onBug?.(e as Error);
    }
  }

  private async startDgram(): Promise<void> {
    const s = createSocket({ type: this.v4 ? 'udp4' : 'udp6', reuseAddr: false });
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.bind(ROCE_PORT, this.dev.addr, () => {
        s.off('error', reject);
        resolve();
      });
    });
    s.on('message', (msg, rinfo) => (this.raw ? this.drainRaw() : this.onDatagram(msg, rinfo.address, rinfo.port)));
    s.on('error', (e) => this.dev.onBug?.(e));
    try {
      s.setRecvBufferSize(8 << 20);
      s.setSendBufferSize(8 << 20);
    } catch {
      /* capped by the kernel's rmem_max / wmem_max: fine */
    }
    this.sock = s;
  }

  private nets: Array<[number, number]> = [];
  private nets6: Uint8Array[] = [];
  private learnSubnets(): void {
    for (const list of Object.values(networkInterfaces())) {
      for (const a of list ?? []) {
        if (a.address !== this.dev.addr) continue;
        if (a.family === 'IPv4') {
          const ip = a.address.split('.').reduce((x, o) => ((x << 8) | Number(o)) >>> 0, 0);
          const mask = a.netmask.split('.').reduce((x, o) => ((x << 8) | Number(o)) >>> 0, 0);
          this.nets.push([(ip & mask) >>> 0, mask]);
        } else {
          const bits = Number(a.cidr?.split('/')[1] ?? 128);
          this.nets6.push(gidOf(a.address).subarray(0, Math.floor(bits / 8)));
        }
      }
    }
    // another address of this very host (a second device on loopback, say) is reachable too
    for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) if (a.family === 'IPv6') this.local6.push(gidOf(a.address.replace(/%.*$/, '')));
  }
  private local6: Uint8Array[] = [];

  stop(): void {
    if (this.backstop) clearInterval(this.backstop);
    this.raw?.close();
    this.sock?.close();
    this.raw = null;
    this.sock = null;
  }

  get running(): boolean {
    return this.raw !== null || this.sock !== null;
  }

  /**
   * Where this device may send: loopback, and the subnet of the interface
   * that carries its address (what a RoCE NIC reaches without a router).
   * Anything else is counted as send_err and not sent: a client cannot make
   * the daemon spray datagrams at arbitrary hosts through a made-up GID.
   */
  private reachable(g: Uint8Array): boolean {
    const v4 = isV4Gid(g);
    if (v4 !== this.v4) return false;
    if (v4) {
      if (g[12] === 127) return true;
      const a = ((g[12]! << 24) | (g[13]! << 16) | (g[14]! << 8) | g[15]!) >>> 0;
      return this.nets.some(([net, mask]) => ((a & mask) >>> 0) === net);
    }
    const loop = g.subarray(0, 15).every((b) => b === 0) && g[15] === 1;
    return loop || this.nets6.some((pfx) => pfx.every((b, i) => g[i] === b)) || this.local6.some((a) => a.every((b, i) => g[i] === b));
  }

  /** Frames and sends one packet to the address its destination GID stands for. */
  send(p: Pkt): void {
    if (!this.running || !OPCODES[p.opcode]) return;
    if (!this.reachable(p.dstGid)) {
      this.dev.counters.send_err++;
      return;
    }
    const dst = gidIp(p.dstGid);
    if (this.raw) {
      // built where sendmmsg will find it; flush() (at the end of the fabric's drain) sends the batch
      this.ipId = (this.ipId + 1) & 0xffff || 1;
      const slot = this.raw.nextSlot();
      const n = encodeFrame(p, this.srcIp, dst, this.ipId, slot);
      this.pcap?.write(slot, n);
      this.raw.queue(n, ((dst[0]! << 24) | (dst[1]! << 16) | (dst[2]! << 8) | dst[3]!) >>> 0);
      return;
    }
    // dgram: the kernel writes IP and UDP headers (source port 4791; for IPv4 an ID of its choosing)
    const saved = p.srcPort;
    p.srcPort = ROCE_PORT;
    const len = frameBytes(p, !this.v4);
    const buf = Buffer.allocUnsafe(len); // dgram sends later: the bytes must outlive this call
    const n = encodeFrame(p, this.srcIp, dst, 0, buf);
    p.srcPort = saved;
    this.pcap?.write(buf, n);
    const hdr = this.v4 ? 28 : 48;
    this.sock!.send(buf, hdr, n - hdr, ROCE_PORT, gidToAddr(p.dstGid));
  }

  /** Sends the frames queued since the last flush (one system call for up to a batch of them). */
  flush(): void {
    if (this.raw) this.dev.counters.send_err += this.raw.flush();
  }

  private drop(why: string): void {
    this.dropped.set(why, (this.dropped.get(why) ?? 0) + 1);
  }

  /** A whole IPv4 packet from the raw socket (already filtered to UDP port 4791 at our address). */
  private onFrame(b: Uint8Array, len: number): void {
    const ihl = (b[0]! & 0x0f) * 4;
    if (len < ihl + 8) return this.drop('shorter than its headers');
    const udpLen = (b[ihl + 4]! << 8) | b[ihl + 5]!;
    if (udpLen < 8 || ihl + udpLen > len) return this.drop('UDP length beyond the datagram');
    if (ihl !== 20) return this.drop('IPv4 options');
    if (!icrcOk(b.subarray(0, 20), b.subarray(20, 28), b.subarray(28, 20 + udpLen))) return this.drop('bad ICRC');
    this.pcap?.write(b, ihl + udpLen);
    const src = ((b[12]! << 24) | (b[13]! << 16) | (b[14]! << 8) | b[15]!) >>> 0;
    this.deliver(b, ihl + 8, udpLen - 8, this.peerGid4(src));
  }

  private readonly rxHdr = new Uint8Array(48);

  /** A UDP payload from the dgram socket: the IP and UDP headers are rebuilt for the ICRC and the pcap. */
  private onDatagram(msg: Buffer, from: string, port: number): void {
    const src = this.peerGid(from);
    // the Identification the sender's kernel chose is not visible here (0: for IPv4 this ICRC cannot be checked)
    const hdr = writeIpUdp(this.rxHdr, gidIp(src), this.srcIp, 0, port, msg.length);
    // IPv6: every field the ICRC covers is known, so it is checked
    if (!this.v4 && !icrcOk(this.rxHdr.subarray(0, 40), this.rxHdr.subarray(40, 48), msg)) return this.drop('bad ICRC');
    if (this.pcap) {
      const f = Buffer.allocUnsafe(hdr + msg.length);
      f.set(this.rxHdr.subarray(0, hdr), 0);
      f.set(msg, hdr);
      this.pcap.write(f, f.length);
    }
    this.deliver(msg, 0, msg.length, src);
  }

  private deliver(buf: Uint8Array, off: number, len: number, src: Uint8Array): void {
    const p = this.dev.newPkt();
    const err = decode(buf, off, len, p);
    if (err) {
      this.drop(err);
      this.dev.freePkt(p);
      return;
    }
    p.srcGid = src;
    p.dstGid = this.dev.gids[0]!;
    // the packet's payload is a window on `buf`, which lives until this handler returns: handle it now
    this.dev.receiveFromWire(p);
  }

  private peerGids = new Map<string, Uint8Array>();
  private peerGid(addr: string): Uint8Array {
    let g = this.peerGids.get(addr);
    if (!g) {
      g = gidOf(addr.replace(/%.*$/, ''));
      this.peerGids.set(addr, g);
    }
    return g;
  }
  private peerGids4 = new Map<number, Uint8Array>();
  private peerGid4(a: number): Uint8Array {
    let g = this.peerGids4.get(a);
    if (!g) {
      g = gidOf(`${a >>> 24}.${(a >> 16) & 255}.${(a >> 8) & 255}.${a & 255}`);
      this.peerGids4.set(a, g);
    }
    return g;
  }
}
