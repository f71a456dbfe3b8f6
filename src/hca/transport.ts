/**
 * The wire: RoCEv2 frames between this device and other hosts' (or other
 * daemons') devices, UDP destination port 4791.
 *
 * Sending (both modes): every frame leaves through one UDP socket of our
 * own (`UdpWire`, an ephemeral source port, as rxe gives each QP its own):
 * unconnected with IP_PMTUDISC_DO, so an IPv4 datagram carries IP
 * Identification 0, or its index in a UDP GSO message, and the ICRC, which
 * covers the ID, is exact without root. Frames built during one drain of
 * the fabric leave together in one sendmmsg; runs of equal-sized frames to
 * one peer (the MTU-sized middle of a long message, a train of ACKs) go as
 * one GSO message each.
 *
 * Receiving (mode "udp"): a dgram socket on port 4791, one JS call per
 * datagram. The IPv4 identification of an arriving datagram is not visible
 * there, so an arriving IPv4 ICRC cannot be checked; IPv6 ICRCs are (every
 * field they cover is known).
 *
 * Receiving (mode "raw", IPv4 with CAP_NET_RAW): a raw socket reads whole
 * IP packets, batched, so every arriving ICRC is checked against the IP
 * header as it came; the dgram socket on the port holds it and its copy of
 * each datagram is the doorbell (Node cannot wait on a raw descriptor). A
 * local sender's GSO message reaches a raw socket unsegmented: it is cut
 * where the ICRCs say.
 *
 * What a turn of the event loop received is answered at its end: ACKs and
 * responses leave together (wireBatchDone drains the fabric, which flushes).
 *
 * Decoded packets go to the device as if they came through the daemon's
 * own FIFO, so the requester, responder and completer are the same code.
 */
import { createSocket, type Socket } from 'node:dgram';
import { isIPv4, type BlockList } from 'node:net';
import { Drain, enableGro, type Datagram } from '../native/drain.js';
import { RawUdp4 } from '../native/raw-udp4.js';
import { attachFilter, type Bpf } from '../native/socket.js';
import { uvPollSet } from '../native/uv-poll.js';
import { UdpWire } from '../native/udp-wire.js';
import { dgramFd, dgramReading, schedYield, SysError } from '../native/libc.js';
import { spinGate } from '../native/spin-gate.js';
import { decode, encodeBody, frameBytes, icrcOkAt, ROCE_PORT, writeIpUdp } from './codec.js';
import { gidIp, gidOf, gidToAddr, isV4Gid } from './gid.js';
import { HdrSize, OPCODES } from './opcodes.js';
import type { Pkt } from './packet.js';
import type { PcapWriter } from './pcap.js';
import { asError } from '../common/errors.js';

/** The device a wire belongs to, as the wire sees it (SoftDevice is one). */
export interface WireDevice {
  readonly addr: string;
  readonly gids: readonly Uint8Array[];
  readonly counters: { send_err: number };
  newPkt(): Pkt;
  freePkt(p: Pkt): void;
  /** a packet off the wire; its payload lives only until this returns */
  receiveFromWire(p: Pkt): void;
  /** a batch of packets off the wire has been handed over: what they caused goes out now */
  wireBatchDone(): void;
  onBug: ((e: Error) => void) | null;
  /** whether a GID is one of this daemon's devices' (its multicast frames reached them inside the daemon) */
  ownGid(g: Uint8Array): boolean;
  /** the IPv4 addresses of this daemon's devices, as 32-bit numbers */
  ownAddrs4(): number[];
}

/** How the device's wire was asked for: raw if allowed (auto), raw or nothing, or plain UDP. */
export type WireRequest = 'auto' | 'raw' | 'udp';

const ignore = (): void => {};

/** The largest RoCEv2 UDP payload one packet can be: headers, a 4096-byte MTU's payload, pad, ICRC. */
const MAX_PACKET = 4096 + 64;
/** SKF_NET_OFF: a socket filter's loads from the IP header (a UDP socket's filter starts at the UDP header). */
const SKF_NET_OFF = -0x100000;
/** A socket filter that drops IPv4 datagrams from any of `addrs` and passes the rest whole. */
function notFrom(addrs: number[]): Bpf {
  const n = Math.min(addrs.length, 200);
  const prog: [number, number, number, number][] = [[0x20, 0, 0, (SKF_NET_OFF + 12) >>> 0]]; // ld [net + 12]: the source address
  for (let i = 0; i < n; i++) prog.push([0x15, n - i, 0, addrs[i]! >>> 0]); // jeq #addr: to the drop
  prog.push([0x06, 0, 0, 0x40000], [0x06, 0, 0, 0]); // ret whole; ret 0
  return prog;
}

/** Multicast groups a device joins on its wire (each one a socket), at most. */
export const WIRE_GROUPS_MAX = 256;
/** Mode udp: datagrams found waiting behind the one Node read that make the port socket ours (see `ownPort`). */
const STREAM_BACKLOG = 32;
/** Mode raw: packets (a GSO message counts one) found on the raw socket at one ring that do the same. */
const RAW_BACKLOG = 8;
/** ...then how long (ms) it is read on every turn with nothing there before a thread waits for it instead */
const STREAM_IDLE_MS = 1;

export class RoceTransport {
  private raw: RawUdp4 | null = null;
  private udp: UdpWire | null = null;
  private port: Socket | null = null;
  private portDrain: Drain | null = null;
  private backstop: NodeJS.Timeout | null = null;
  /**
   * null while Node reads the port socket (its frames, or in raw mode the copies that ring); once a stream
   * made it ours (see `ownPort`), read on every turn ('stream') or waited on by a thread ('wait')
   */
  private own: 'stream' | 'wait' | null = null;
  /** what is waited on once the stream is quiet: the port socket (udp) or the raw socket (raw) */
  private waitFd = -1;
  /** when a read of the port socket last found something (performance.now() ms) */
  private streamSeen = 0;
  /** frames the last read that found any found: one means frames come one at a time (a round trip's), not a stream */
  private streamLast = 0;
  /** Datagrams that arrived holding several frames (a GSO message seen whole, or what UDP GRO merged), split. */
  merged = 0;
  /** Who reads the port socket: Node, or (since a stream) the daemon itself. */
  get portReader(): 'node' | 'daemon' {
    return this.own ? 'daemon' : 'node';
  }
  private readonly v4: boolean;
  private readonly srcIp: Uint8Array;
  /** "raw" or "udp" once started. */
  mode: 'raw' | 'udp' = 'udp';
  /** Why IPv4 is on plain UDP (empty when it is not). */
  fallback = '';
  /** Frames that arrived and were dropped before reaching a QP, by reason. */
  readonly dropped = new Map<string, number>();
  /** the IP and UDP headers of the frame being sent or checked (ICRC, capture) */
  private readonly hdr = new Uint8Array(48);

  constructor(readonly dev: WireDevice, private readonly request: WireRequest = 'auto', private readonly pcap: PcapWriter | null = null) {
    this.v4 = isIPv4(dev.addr);
    this.srcIp = gidIp(gidOf(dev.addr)).slice();
  }

  async start(): Promise<void> {
    if (this.v4 && this.request !== 'udp') {
      try {
        this.raw = new RawUdp4(this.srcIp);
        this.mode = 'raw';
      } catch (e) {
        const eperm = e instanceof SysError && e.code === 'EPERM';
        if (!eperm || this.request === 'raw') throw e;
        this.fallback = 'no CAP_NET_RAW: arriving IPv4 ICRCs are not checked (a plain UDP socket cannot see the IP ID they cover); sent ones are exact';
      }
    }
    try {
      // the dgram socket on port 4791 holds the port (no ICMP unreachable, one daemon per address) and either
      // carries arriving frames (udp) or rings for the raw socket with its copy of each (raw)
      await this.startPortSocket();
      this.udp = new UdpWire(this.srcIp, ROCE_PORT);
    } catch (e) {
      this.raw?.close();
      this.raw = null;
      this.port?.close();
      this.port = null;
      throw e;
    }
    if (this.raw) {
      // a frame whose copy on the port socket was dropped (a full buffer) still gets read; rarely needed (the port
      // socket is emptied in batches), so rarely run: an idle daemon stays idle
      this.backstop = setInterval(() => this.drainRaw(), 250).unref();
    }
  }


  private startPortSocket(): Promise<void> {
    const s = createSocket({ type: this.v4 ? 'udp4' : 'udp6', reuseAddr: false });
    return new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.bind(ROCE_PORT, this.dev.addr, () => {
        s.off('error', reject);
        s.on('error', (e) => this.dev.onBug?.(e));
        s.on('message', this.raw ? this.onTwin : this.onMessage);
        try {
          s.setRecvBufferSize(8 << 20);
        } catch {
          /* capped by the kernel's rmem_max: fine */
        }
        // Node keeps the descriptor private: a Node that hides it costs the batching below, not the wire
        let fd = -1;
        try {
          fd = dgramFd(s);
        } catch {
          /* one JS call per datagram, as Node delivers them */
        }
        if (fd >= 0 && this.raw) {
          // only a doorbell: a GSO train may stay one datagram here (the raw socket sees it whole anyway)
          try {
            enableGro(fd);
          } catch {
            /* a kernel without UDP GRO: a copy per frame */
          }
        }
        // what waits behind the datagram Node read is taken in batches, not one JS call each; in raw mode the
        // copies are only counted and dropped, so a byte of each is all the kernel copies out (the rest truncated)
        if (fd >= 0) this.portDrain = this.raw ? new Drain(fd, 1) : new Drain(fd, 65536, true, true);
        this.port = s;
        resolve();
      });
    });
  }

  /**
   * Raw mode: a copy on the port socket rang, the raw socket is read. When it held more than the one frame,
   * their copies are queued behind: they are dropped in one call (not read one JS call each), and the raw
   * socket is read once more, for frames whose copies that dropped (a frame reaches the raw socket before its
   * copy reaches the port socket). A lone frame, the latency case, costs no extra call.
   */
  private readonly onTwin = (): void => {
    const n = this.drainRaw();
    if (n > 1 && this.portDrain && this.portDrain.drain(ignore) > 0) this.drainRaw();
    if (n >= RAW_BACKLOG && !this.own) this.ownPort();
  };

  /** Mode udp: the frame Node read, then every one queued behind it, then their answers leave together. */
  private readonly dgIn: Datagram = { bytes: new Uint8Array(0), off: 0, len: 0, from: new Uint8Array(0), port: 0, seg: 0 };
  private readonly onMessage = (msg: Buffer, rinfo: { address: string; port: number }): void => {
    const d = this.dgIn;
    d.bytes = msg;
    d.off = 0;
    d.len = msg.length;
    d.port = rinfo.port;
    let queued = 0;
    try {
      // longer than any frame: merged by GRO, whose segment size Node does not read (GRO is only ever on once
      // the socket is ours, so this is a guard)
      if (msg.length > MAX_PACKET) this.drop('merged datagram read without its segment size');
      else this.onDatagram(d, this.peerGid(rinfo.address));
      queued = this.portDrain?.drain(this.onQueued, this.batchDone) ?? 0;
    } catch (e) {
      this.dev.onBug?.(asError(e));
    }
    this.dev.wireBatchDone();
    if (queued >= STREAM_BACKLOG && !this.own) this.ownPort();
  };
  /** A datagram the drain read: one frame, or (UDP GRO) several of one size, the last maybe shorter. */
  private readonly onQueued = (d: Datagram): void => {
    const src = this.v4 ? this.peerGid4(d.from, 0) : this.peerGid6(d.from);
    if (d.seg === 0 || d.len <= d.seg) return this.onDatagram(d, src);
    this.merged++;
    const { off, len } = d;
    for (let at = 0; at < len; at += d.seg) {
      d.off = off + at;
      d.len = Math.min(d.seg, len - at);
      this.onDatagram(d, src);
    }
  };

  /**
   * A stream arriving (mode udp: the port socket held a backlog behind the datagram Node read; raw: the raw
   * socket held one at a ring): Node stops reading the port socket, and the daemon reads on every turn of
   * the event loop while frames keep coming, then waits in Node's own event loop (a libuv poll handle,
   * src/native/uv-poll.ts: one wake-up per frame, as Node's own read) once it has been quiet for
   * STREAM_IDLE_MS, at once when frames come one at a time or the daemon may not spin (src/native/spin-gate.ts).
   * That is one wake-up fewer per batch and no Node read of a whole datagram: raw mode
   * wants only the ring of the port socket's copy, yet Node read each one whole, a GSO message's 60 KiB
   * included.
   *
   * Mode udp also turns UDP GRO on: a local sender's GSO message then arrives whole instead of being cut
   * into its frames inside the sender's system call (a third of the sending daemon's CPU for 64 KiB WRITEs),
   * and one read takes up to 16 frames. Node must not read meanwhile: it reads the first datagram of every
   * wake-up itself, without the control message that says where GRO's merged frames part. Nor can GRO be
   * turned off again: on this kernel (6.18) a GSO message still arrives whole after UDP_GRO is set back to 0,
   * without that message. So the socket stays the daemon's. A daemon that never sees a stream keeps Node's
   * reads: a lone frame costs no more than it did.
   */
  private ownPort(): void {
    const port = this.port;
    if (!port || !this.portDrain) return;
    const fd = dgramFd(port);
    if (!dgramReading(port, false)) return;
    if (!this.raw) {
      try {
        enableGro(fd);
      } catch {
        dgramReading(port, true);
        return;
      }
    }
    this.waitFd = this.raw ? this.raw.descriptor : fd;
    this.own = 'stream';
    spinGate.enter();
    this.streamSeen = performance.now();
    setImmediate(this.readPort);
  }

  private readonly readPort = (): void => {
    if (!this.portDrain || !this.own) return;
    let n = 0;
    if (this.raw) {
      n = this.drainRaw();
      // the copies only rang; they go unread (a byte each), or the port socket's buffer fills
      if (n > 0) this.portDrain.drain(ignore);
    } else {
      try {
        n = this.portDrain.drain(this.onQueued, this.batchDone);
      } catch (e) {
        this.dev.onBug?.(asError(e));
      }
      if (n > 0) this.dev.wireBatchDone();
    }
    const now = performance.now();
    if (n > 0) {
      this.streamSeen = now;
      this.streamLast = n;
    } else if (this.streamLast < 2 || now - this.streamSeen >= STREAM_IDLE_MS || !spinGate.mayPoll(now)) {
      // frames one at a time (a round trip's): wait at once. The socket is in the event loop's epoll, so while
      // a send queue is polled (the loop turning) a frame is still read without a wake-up; reading it on every
      // turn for the whole STREAM_IDLE_MS kept the daemons spinning beside C programs that poll without ever
      // yielding (C ib_send_lat across the wire: 2 ms round trips)
      this.own = 'wait';
      spinGate.leave();
      uvPollSet().wait(this.waitFd, this.onReadable);
      return;
    }
    // as the send-queue poller does: a runnable client or peer gets the core between reads
    schedYield();
    setImmediate(this.readPort);
  };

  private readonly onReadable = (): void => {
    if (!this.portDrain || this.own !== 'wait') return;
    this.own = 'stream';
    spinGate.enter();
    this.streamSeen = performance.now();
    this.streamLast = 0;
    this.readPort();
  };

  private readonly onRawDatagram = (d: Datagram): void => this.onRawFrame(d);
  /**
   * A full receive batch with more behind it: its ACKs and responses leave now. Waiting for the socket to be
   * empty held every ACK of a sender's burst until the whole burst was read, and the sender sat idle with a
   * full window meanwhile.
   */
  private readonly batchDone = (): void => this.dev.wireBatchDone();
  /** Reads what the raw socket holds and hands it to the device; returns how many frames there were. */
  private drainRaw(): number {
    let n = 0;
    try {
      if (this.raw && (n = this.raw.drain(this.onRawDatagram, this.batchDone)) > 0) this.dev.wireBatchDone();
    } catch (e) {
      this.dev.onBug?.(asError(e));
    }
    return n;
  }

  /**
   * Multicast groups the device's QPs are attached to (IPv4 only), each on a socket of its own: bound to the
   * group's address and port 4791 (the port socket, bound to the device's address, never sees a group's
   * datagrams) and joined on the device's interface, which sends the IGMP report a Linux host's join does.
   * On loopback (127/8, whose `lo` has no MULTICAST flag) Linux still delivers a group's datagrams to sockets
   * joined with a 127.x interface address, so daemons on one host reach each other's groups the same way.
   */
  private readonly groups = new Map<string, Socket>();
  /** Why the last group could not be joined (empty: none failed). */
  groupError = '';

  join(gid: Uint8Array): void {
    if (!this.v4 || !isV4Gid(gid) || !this.udp) return;
    const addr = gidToAddr(gid);
    if (this.groups.has(addr)) return;
    // a descriptor each: max_mcast_grp (8192) of them would let one user's joins take the daemon's descriptors
    // from everyone's connections; past the cap a group is served inside the daemon only (and said so)
    if (this.groups.size >= WIRE_GROUPS_MAX) {
      this.groupError = `${addr}: ${WIRE_GROUPS_MAX} groups are joined on the wire already; this one reaches this daemon's QPs only`;
      this.drop('multicast group past the wire\'s cap (joined inside the daemon only)');
      return;
    }
    const group = gid.slice();
    const s = createSocket({ type: 'udp4', reuseAddr: true });
    this.groups.set(addr, s);
    s.on('error', (e) => {
      this.groupError = `${addr}: ${e.message}`;
      this.drop('multicast group socket failed');
      if (this.groups.get(addr) === s) this.groups.delete(addr);
      s.close();
    });
    s.on('message', (msg: Buffer, rinfo: { address: string; port: number }) => this.onGroupFrame(msg, rinfo, group));
    s.bind(ROCE_PORT, addr, () => {
      try {
        // what this daemon sent comes back through the kernel's multicast loop: dropped before Node reads it (a
        // JS call per datagram slowed the daemon enough for a fast sender to outrun its receivers)
        try {
          attachFilter(dgramFd(s), notFrom(this.dev.ownAddrs4()));
        } catch {
          /* Node hides the descriptor: onGroupFrame drops them, one call each */
        }
        s.addMembership(addr, this.dev.addr);
      } catch (e) {
        s.emit('error', asError(e));
      }
    });
  }

  leave(gid: Uint8Array): void {
    const addr = gidToAddr(gid);
    const s = this.groups.get(addr);
    if (!s) return;
    this.groups.delete(addr);
    s.close();
  }

  /** Groups joined on the wire (their addresses). */
  get joined(): string[] {
    return [...this.groups.keys()];
  }

  /**
   * A datagram sent to a group: for this device's QPs in it. One this daemon sent (the kernel loops a host's
   * own multicast back to its joined sockets) is dropped: every device of the daemon had it from the fabric.
   */
  private onGroupFrame(msg: Buffer, rinfo: { address: string; port: number }, group: Uint8Array): void {
    const src = this.peerGid(rinfo.address);
    if (this.dev.ownGid(src)) return;
    if (msg.length > MAX_PACKET) return this.drop('merged datagram read without its segment size');
    if (this.pcap) {
      const hl = writeIpUdp(this.hdr, gidIp(src), gidIp(group), 0, rinfo.port, msg.length);
      this.capture(this.hdr.subarray(0, hl), msg);
    }
    const p = this.dev.newPkt();
    const err = decode(msg, 0, msg.length, p);
    if (err) {
      this.drop(err);
      this.dev.freePkt(p);
      return;
    }
    p.srcGid = src;
    p.dstGid = group;
    this.dev.receiveFromWire(p);
    this.dev.wireBatchDone();
  }

  stop(): void {
    for (const s of this.groups.values()) s.close();
    this.groups.clear();
    if (this.backstop) clearInterval(this.backstop);
    if (this.own) uvPollSet().cancel(this.waitFd);
    if (this.own === 'stream') spinGate.leave();
    this.own = null;
    this.raw?.close();
    this.portDrain?.close();
    this.port?.close();
    this.udp?.close();
    this.raw = null;
    this.port = null;
    this.portDrain = null;
    this.udp = null;
  }

  get running(): boolean {
    return this.udp !== null;
  }

  /**
   * Where this device may send: wherever the host routes its address family (RoCEv2 crosses routers, as a
   * RoCE NIC's does), or with `--allow-dst` only the listed prefixes. What is refused counts as send_err.
   * (A local user reaches any host with UDP anyway; the daemon's packets carry no privilege but the source
   * address, which is this host's.)
   */
  private reachable(g: Uint8Array): boolean {
    const v4 = isV4Gid(g);
    if (v4 !== this.v4) return false;
    const allow = this.allowDst;
    if (!allow) return true;
    if (v4) {
      const a = ((g[12]! << 24) | (g[13]! << 16) | (g[14]! << 8) | g[15]!) >>> 0;
      let ok = this.allowed4.get(a);
      if (ok === undefined) {
        if (this.allowed4.size > 4096) this.allowed4.clear();
        this.allowed4.set(a, (ok = allow.check(gidToAddr(g), 'ipv4')));
      }
      return ok;
    }
    return allow.check(gidToAddr(g), 'ipv6');
  }
  /** softverbsd --allow-dst: the only destinations this device sends to (null: wherever the host routes). */
  allowDst: BlockList | null = null;
  private readonly allowed4 = new Map<number, boolean>();

  private lastDstGid: Uint8Array | null = null;
  private lastDstIp: Uint8Array = new Uint8Array(4);

  /** Builds one packet's frame in the send batch; it leaves at the next flush(). */
  send(p: Pkt): void {
    const udp = this.udp;
    if (!udp || !OPCODES[p.opcode]) return;
    if (!this.reachable(p.dstGid)) {
      this.dev.counters.send_err++;
      return;
    }
    // a QP's packets share its path's GID object: its address bytes are looked up once per run of them
    if (p.dstGid !== this.lastDstGid) {
      this.lastDstGid = p.dstGid;
      this.lastDstIp = gidIp(p.dstGid);
    }
    const dst = this.lastDstIp;
    const len = frameBytes(p, !this.v4) - (this.v4 ? 28 : 48);
    const off = udp.frame(len, dst);
    // the kernel numbers a GSO message's IPv4 segments from 0: the ICRC covers the number this one will get
    encodeBody(p, this.srcIp, dst, this.v4 ? udp.seg : 0, udp.port, this.hdr, udp.txBytes, off, udp.txDv);
    if (this.pcap) this.capture(this.hdr, udp.txBytes.subarray(off, off + len));
  }

  private capture(hdr: Uint8Array, body: Uint8Array): void {
    const h = this.v4 ? 28 : 48;
    const f = new Uint8Array(h + body.length);
    f.set(hdr.subarray(0, h));
    f.set(body, h);
    this.pcap!.write(f, f.length);
  }

  /** Sends the frames built since the last flush (one system call for the batch). */
  flush(): void {
    if (this.udp) this.dev.counters.send_err += this.udp.flush();
  }

  private drop(why: string): void {
    this.dropped.set(why, (this.dropped.get(why) ?? 0) + 1);
  }

  /** A whole IPv4 packet from the raw socket (already filtered to UDP port 4791 at our address). */
  private onRawFrame(d: Datagram): void {
    const b = d.bytes;
    const o = d.off;
    const len = d.len;
    const ihl = (b[o]! & 0x0f) * 4;
    if (len < ihl + 8) return this.drop('shorter than its headers');
    const udpLen = (b[o + ihl + 4]! << 8) | b[o + ihl + 5]!;
    if (udpLen < 8 || ihl + udpLen > len) return this.drop('UDP length beyond the datagram');
    if (ihl !== 20) return this.drop('IPv4 options');
    const src = this.peerGid4(b, o + 12);
    const body = udpLen - 8;
    // longer than any packet, or (small frames sent together) an ICRC that fails for the whole: a GSO message
    if (body > MAX_PACKET || !icrcOkAt(b, o, b, o + 28, body)) return this.onSuperFrame(d, src, body);
    this.pcap?.write(b.subarray(o), ihl + udpLen);
    this.deliver(b, o + 28, body, src);
  }

  /**
   * A local sender's UDP GSO message as a raw socket sees it: one IP packet
   * holding n equal frames that the UDP socket would have seen as n
   * datagrams with IDs id, id+1, ... The frame size is the n whose first
   * frame's ICRC checks out (none: a frame with a bad ICRC, dropped); then
   * every frame's ICRC is checked as its own. A bad frame costs at most a
   * CRC over each divisor's share of it, a few times its length.
   */
  private onSuperFrame(d: Datagram, src: Uint8Array, body: number): void {
    const b = d.bytes;
    const o = d.off;
    const h = this.hdr;
    const id = (b[o + 4]! << 8) | b[o + 5]!;
    let size = 0;
    for (let n = 2; n <= 128 && body / n >= HdrSize.BTH + HdrSize.ICRC; n++) {
      if (body % n !== 0 || body / n > MAX_PACKET) continue;
      if (this.segmentIcrcOk(b, o, body / n, 0, id)) {
        size = body / n;
        break;
      }
    }
    if (size === 0) return this.drop('bad ICRC');
    this.merged++;
    for (let at = 0, i = 0; at < body; at += size, i++) {
      if (i > 0 && !this.segmentIcrcOk(b, o, size, at, (id + i) & 0xffff)) {
        this.drop('bad ICRC');
        continue;
      }
      if (this.pcap) this.capture(h, b.subarray(o + 28 + at, o + 28 + at + size));
      this.deliver(b, o + 28 + at, size, src);
    }
  }

  /** Whether the frame of `size` bytes at `at` in a GSO message's payload has the ICRC it would as datagram ID `id`. */
  private segmentIcrcOk(b: Uint8Array, o: number, size: number, at: number, id: number): boolean {
    const h = this.hdr;
    if (this.pcap) {
      // the capture shows the datagram as it would have come, checksum included
      writeIpUdp(h, b.subarray(o + 12, o + 16), b.subarray(o + 16, o + 20), id, (b[o + 20]! << 8) | b[o + 21]!, size);
    } else {
      // the arriving header with this frame's length and ID (its checksum is one of the fields the ICRC masks)
      for (let i = 0; i < 28; i++) h[i] = b[o + i]!;
      h[2] = (28 + size) >> 8;
      h[3] = (28 + size) & 0xff;
      h[4] = id >> 8;
      h[5] = id & 0xff;
      h[24] = (8 + size) >> 8;
      h[25] = (8 + size) & 0xff;
    }
    return icrcOkAt(h, 0, b, o + 28 + at, size);
  }

  /** A UDP payload from `src` on the port socket: the IP and UDP headers are rebuilt for the ICRC and the pcap. */
  private onDatagram(d: Datagram, src: Uint8Array): void {
    if (!this.v4 || this.pcap) {
      // the Identification the sender's kernel chose is not visible here (0: an IPv4 ICRC cannot be checked)
      const hl = writeIpUdp(this.hdr, gidIp(src), this.srcIp, 0, d.port, d.len);
      // IPv6: every field the ICRC covers is known, so it is checked
      if (!this.v4 && !icrcOkAt(this.hdr, 0, d.bytes, d.off, d.len)) return this.drop('bad ICRC');
      if (this.pcap) this.capture(this.hdr.subarray(0, hl), d.bytes.subarray(d.off, d.off + d.len));
    }
    this.deliver(d.bytes, d.off, d.len, src);
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
      if (this.peerGids.size > 4096) this.peerGids.clear();
      this.peerGids.set(addr, g);
    }
    return g;
  }

  /** The GID of an IPv4 source (4 bytes at b[o]); the last one is kept, as a stream of packets comes from one peer. */
  private last4 = -1;
  private last4Gid: Uint8Array = new Uint8Array(16);
  private peerGid4(b: Uint8Array, o: number): Uint8Array {
    const a = ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0;
    if (a === this.last4) return this.last4Gid;
    let g = this.peerGids4.get(a);
    if (!g) {
      g = gidOf(`${a >>> 24}.${(a >> 16) & 255}.${(a >> 8) & 255}.${a & 255}`);
      if (this.peerGids4.size > 4096) this.peerGids4.clear();
      this.peerGids4.set(a, g);
    }
    this.last4 = a;
    this.last4Gid = g;
    return g;
  }
  private peerGids4 = new Map<number, Uint8Array>();

  private last6: Uint8Array = new Uint8Array(16);
  private peerGid6(from: Uint8Array): Uint8Array {
    const l = this.last6;
    for (let i = 15; i >= 0; i--) if (l[i] !== from[i]) return (this.last6 = from.slice());
    return l;
  }
}
