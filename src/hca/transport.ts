/**
 * The wire, first cut: RoCEv2 over a plain UDP socket bound to the device's
 * address, port 4791. Packets for a GID no device of this daemon owns are
 * encoded here and sent; datagrams that arrive are decoded and handed to
 * the device as if they came through the local FIFO, so the requester,
 * responder and completer are the same code either way.
 *
 * Limits of this cut (issue 3 lifts them): a plain socket neither sets nor
 * shows the IPv4 header, so the ICRC is computed over an assumed header
 * (Identification 0) and is not verified on receive; the UDP source port is
 * the socket's own, not 0xC000 + hash(QPN).
 */
import { createSocket, type Socket } from 'node:dgram';
import { isIPv4 } from 'node:net';
import { networkInterfaces } from 'node:os';
import { decode, encode, headerBytes, icrc, ROCE_PORT } from './codec.js';
import { gidOf, type SoftDevice } from './device.js';
import { OPCODES } from './opcodes.js';
import type { Pkt } from './packet.js';

/** The address a GID stands for: a dotted quad for IPv4-mapped GIDs, else IPv6 text. */
export function gidToAddr(g: Uint8Array): string {
  if (g.subarray(0, 10).every((b) => b === 0) && g[10] === 0xff && g[11] === 0xff) return `${g[12]}.${g[13]}.${g[14]}.${g[15]}`;
  const parts: string[] = [];
  for (let i = 0; i < 16; i += 2) parts.push(((g[i]! << 8) | g[i + 1]!).toString(16));
  return parts.join(':');
}

export class UdpTransport {
  private sock: Socket | null = null;
  private readonly ipHdr = new Uint8Array(40);
  private readonly udpHdr = new Uint8Array(8);
  private readonly v4: boolean;
  /** Datagrams that did not decode, by reason. */
  readonly dropped = new Map<string, number>();

  constructor(readonly dev: SoftDevice) {
    this.v4 = isIPv4(dev.addr);
  }

  async start(): Promise<void> {
    const s = createSocket({ type: this.v4 ? 'udp4' : 'udp6', reuseAddr: false });
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.bind(ROCE_PORT, this.dev.addr, () => {
        s.off('error', reject);
        resolve();
      });
    });
    s.on('message', (msg, rinfo) => this.onMessage(msg, rinfo.address));
    s.on('error', (e) => this.dev.onBug?.(e));
    try {
      s.setRecvBufferSize(8 << 20);
      s.setSendBufferSize(8 << 20);
    } catch {
      /* capped by the kernel's rmem_max / wmem_max: fine */
    }
    this.sock = s;
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
  }

  stop(): void {
    this.sock?.close();
    this.sock = null;
  }

  get running(): boolean {
    return this.sock !== null;
  }

  /**
   * Where this device may send: loopback, and the subnet of the interface
   * that carries its address (what a RoCE NIC reaches without a router).
   * Anything else is counted as send_err and not sent: a client cannot make
   * the daemon spray datagrams at arbitrary hosts through a made-up GID.
   */
  private reachable(g: Uint8Array): boolean {
    const v4 = g.subarray(0, 10).every((b) => b === 0) && g[10] === 0xff && g[11] === 0xff;
    if (v4 !== this.v4) return false;
    if (v4) {
      if (g[12] === 127) return true;
      const a = ((g[12]! << 24) | (g[13]! << 16) | (g[14]! << 8) | g[15]!) >>> 0;
      return this.nets.some(([net, mask]) => ((a & mask) >>> 0) === net);
    }
    const loop = g.subarray(0, 15).every((b) => b === 0) && g[15] === 1;
    return loop || this.nets6.some((pfx) => pfx.every((b, i) => g[i] === b));
  }
  private nets: Array<[number, number]> = [];
  private nets6: Uint8Array[] = [];

  /** Encodes and sends one packet to the address its destination GID stands for. */
  send(p: Pkt): void {
    if (!this.sock) return;
    const info = OPCODES[p.opcode];
    if (!info) return;
    if (!this.reachable(p.dstGid)) {
      this.dev.counters.send_err++;
      return;
    }
    const len = headerBytes(info.mask) + p.payLen + 3 + 4;
    const buf = Buffer.allocUnsafe(len);
    const n = encode(p, buf, 0);
    const dst = gidToAddr(p.dstGid);
    this.fillHeaders(dst, n + 4);
    const crc = icrc(this.ipHdr, this.udpHdr, buf.subarray(0, n));
    buf.writeUInt32LE(crc, n);
    this.sock.send(buf, 0, n + 4, ROCE_PORT, dst);
  }

  /** The IP and UDP headers the datagram will most likely have (what the ICRC covers). */
  private fillHeaders(dst: string, udpPayload: number): void {
    const ip = this.ipHdr;
    ip.fill(0);
    if (this.v4) {
      ip[0] = 0x45;
      const total = 20 + 8 + udpPayload;
      ip[2] = total >> 8;
      ip[3] = total & 0xff;
      ip[6] = 0x40; // DF
      ip[9] = 17;
      const s = this.dev.addr.split('.').map(Number);
      const d = dst.split('.').map(Number);
      for (let i = 0; i < 4; i++) {
        ip[12 + i] = s[i]!;
        ip[16 + i] = d[i]!;
      }
    } else {
      ip[0] = 0x60;
      ip[4] = (8 + udpPayload) >> 8;
      ip[5] = (8 + udpPayload) & 0xff;
      ip[6] = 17;
    }
    const u = this.udpHdr;
    u[0] = ROCE_PORT >> 8;
    u[1] = ROCE_PORT & 0xff;
    u[2] = ROCE_PORT >> 8;
    u[3] = ROCE_PORT & 0xff;
    u[4] = (8 + udpPayload) >> 8;
    u[5] = (8 + udpPayload) & 0xff;
  }

  private onMessage(msg: Buffer, from: string): void {
    const fabric = this.dev.fabric;
    const p = fabric.pool.get();
    const err = decode(msg, 0, msg.length, p);
    if (err) {
      this.dropped.set(err, (this.dropped.get(err) ?? 0) + 1);
      fabric.pool.put(p);
      return;
    }
    p.srcGid = this.peerGid(from);
    p.dstGid = this.dev.gids[0]!;
    // the packet's payload is a window on `msg`, which lives until this handler returns: handle it now
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
}
