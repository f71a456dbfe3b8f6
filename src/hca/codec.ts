/**
 * The RoCEv2 packet codec: BTH and its extension headers (RETH, AETH,
 * AtomicETH, AtomicAckETH, DETH, ImmDt, IETH), payload, pad and the
 * invariant CRC, between wire bytes and a `Pkt`. Pure functions on
 * DataView; which headers an opcode carries comes from the opcode table.
 * Header order on the wire (IBA 9.2): BTH, DETH, RETH, AtomicETH, AETH,
 * AtomicAckETH, ImmDt, IETH, payload, pad, ICRC.
 */
import { crc32 } from './crc.js';
import { gidIp, isV4Gid } from './gid.js';
import { HdrSize, M, OPCODES } from './opcodes.js';
import type { Pkt } from './packet.js';

export const ROCE_PORT = 4791;

/** Bytes of the transport headers (BTH included) for an opcode mask. */
export function headerBytes(mask: number): number {
  let n = HdrSize.BTH;
  if (mask & M.DETH) n += HdrSize.DETH;
  if (mask & M.RETH) n += HdrSize.RETH;
  if (mask & M.ATMETH) n += HdrSize.ATMETH;
  if (mask & M.AETH) n += HdrSize.AETH;
  if (mask & M.ATMACK) n += HdrSize.ATMACK;
  if (mask & M.IMM) n += HdrSize.IMM;
  if (mask & M.IETH) n += HdrSize.IETH;
  return n;
}

/** Why a packet could not be decoded (stable strings: counters and logs use them). */
export const DecodeError = {
  SHORT: 'shorter than its headers',
  OPCODE: 'unknown opcode',
  TVER: 'unsupported transport version',
  PAD: 'pad count larger than the payload',
  PAYLOAD: 'payload on an opcode that carries none',
} as const;

/**
 * Decodes BTH..payload of one RoCEv2 UDP payload (`len` bytes at `off`,
 * ICRC included) into `p`; the payload becomes a window on `buf`.
 * Returns null, or a DecodeError string.
 */
export function decode(buf: Uint8Array, off: number, len: number, p: Pkt): string | null {
  if (len < HdrSize.BTH + HdrSize.ICRC) return DecodeError.SHORT;
  const dv = new DataView(buf.buffer, buf.byteOffset + off, len);
  const opcode = dv.getUint8(0);
  const info = OPCODES[opcode];
  if (!info) return DecodeError.OPCODE;
  const b1 = dv.getUint8(1);
  p.opcode = opcode;
  p.mask = info.mask;
  p.se = (b1 & 0x80) !== 0;
  p.migReq = (b1 & 0x40) !== 0;
  p.padCnt = (b1 >> 4) & 3;
  p.tver = b1 & 0xf;
  if (p.tver !== 0) return DecodeError.TVER;
  p.pkey = dv.getUint16(2);
  p.fecnBecn = dv.getUint8(4);
  p.destQpn = dv.getUint32(4) & 0xffffff;
  p.ackReq = (dv.getUint8(8) & 0x80) !== 0;
  p.psn = dv.getUint32(8) & 0xffffff;
  const m = info.mask;
  const hdr = headerBytes(m);
  if (len < hdr + HdrSize.ICRC) return DecodeError.SHORT;
  let o = HdrSize.BTH;
  if (m & M.DETH) {
    p.qkey = dv.getUint32(o);
    p.srcQpn = dv.getUint32(o + 4) & 0xffffff;
    o += HdrSize.DETH;
  }
  if (m & M.RETH) {
    p.va = u64(dv, o);
    p.rkey = dv.getUint32(o + 8);
    p.dmaLen = dv.getUint32(o + 12);
    o += HdrSize.RETH;
  }
  if (m & M.ATMETH) {
    p.va = u64(dv, o);
    p.rkey = dv.getUint32(o + 8);
    p.swapAdd = dv.getBigUint64(o + 12);
    p.compare = dv.getBigUint64(o + 20);
    o += HdrSize.ATMETH;
  }
  if (m & M.AETH) {
    p.syndrome = dv.getUint8(o);
    p.msn = dv.getUint32(o) & 0xffffff;
    o += HdrSize.AETH;
  }
  if (m & M.ATMACK) {
    p.orig = dv.getBigUint64(o);
    o += HdrSize.ATMACK;
  }
  if (m & M.IMM) {
    p.imm = dv.getUint32(o);
    o += HdrSize.IMM;
  }
  if (m & M.IETH) {
    p.rkey = dv.getUint32(o);
    o += HdrSize.IETH;
  }
  const rest = len - o - HdrSize.ICRC;
  if (p.padCnt > rest) return DecodeError.PAD;
  const payLen = rest - p.padCnt;
  if (payLen > 0 && !(m & M.PAYLOAD)) return DecodeError.PAYLOAD;
  p.payload = buf;
  p.payOff = off + o;
  p.payLen = payLen;
  return null;
}

/** An IOVA past 2^53 cannot be inside any MR: it decodes to +Infinity. */
function u64(dv: DataView, o: number): number {
  const v = dv.getBigUint64(o);
  return v > 0x1fffffffffffffn ? Number.POSITIVE_INFINITY : Number(v);
}

/**
 * Encodes p (BTH..payload and pad, no ICRC) at `off`; returns the bytes
 * written. The caller has room for headerBytes + payLen + 3. `whole`, if
 * given, is a DataView over exactly `buf`.
 */
export function encode(p: Pkt, buf: Uint8Array, off: number, whole?: DataView): number {
  const info = OPCODES[p.opcode]!;
  const m = info.mask;
  const pad = (4 - (p.payLen & 3)) & 3;
  // a DataView is costly to make (about 100 ns): the wire passes one over its whole send arena
  const dv = whole ?? new DataView(buf.buffer, buf.byteOffset + off, headerBytes(m) + p.payLen + pad);
  const d = whole ? off : 0;
  dv.setUint8(d, p.opcode);
  dv.setUint8(d + 1, (p.se ? 0x80 : 0) | (p.migReq ? 0x40 : 0) | (pad << 4) | (p.tver & 0xf));
  dv.setUint16(d + 2, p.pkey);
  dv.setUint32(d + 4, ((p.fecnBecn & 0xff) << 24 | (p.destQpn & 0xffffff)) >>> 0);
  dv.setUint32(d + 8, ((p.ackReq ? 0x80000000 : 0) | (p.psn & 0xffffff)) >>> 0);
  let o = d + HdrSize.BTH;
  if (m & M.DETH) {
    dv.setUint32(o, p.qkey >>> 0);
    dv.setUint32(o + 4, p.srcQpn & 0xffffff);
    o += HdrSize.DETH;
  }
  if (m & M.RETH) {
    dv.setBigUint64(o, BigInt(p.va));
    dv.setUint32(o + 8, p.rkey >>> 0);
    dv.setUint32(o + 12, p.dmaLen >>> 0);
    o += HdrSize.RETH;
  }
  if (m & M.ATMETH) {
    dv.setBigUint64(o, BigInt(p.va));
    dv.setUint32(o + 8, p.rkey >>> 0);
    dv.setBigUint64(o + 12, BigInt.asUintN(64, p.swapAdd));
    dv.setBigUint64(o + 20, BigInt.asUintN(64, p.compare));
    o += HdrSize.ATMETH;
  }
  if (m & M.AETH) {
    dv.setUint32(o, (((p.syndrome & 0xff) << 24) | (p.msn & 0xffffff)) >>> 0);
    o += HdrSize.AETH;
  }
  if (m & M.ATMACK) {
    dv.setBigUint64(o, BigInt.asUintN(64, p.orig));
    o += HdrSize.ATMACK;
  }
  if (m & M.IMM) {
    dv.setUint32(o, p.imm >>> 0);
    o += HdrSize.IMM;
  }
  if (m & M.IETH) {
    dv.setUint32(o, p.rkey >>> 0);
    o += HdrSize.IETH;
  }
  o -= d;
  if (p.payLen > 0) buf.set(p.payload.subarray(p.payOff, p.payOff + p.payLen), off + o);
  for (let i = 0; i < pad; i++) buf[off + o + p.payLen + i] = 0;
  return o + p.payLen + pad;
}

/** The CRC of the eight 0xFF bytes that stand for the LRH: where every ICRC starts. */
const CRC_LRH = crc32(new Uint8Array(8).fill(0xff));
/** The masked IP, UDP and BTH headers of the frame being summed (IPv4: 40 bytes, IPv6: 60). */
const pseudo = new Uint8Array(40 + 8 + HdrSize.BTH);
const pseudo4 = pseudo.subarray(0, 20 + 8 + HdrSize.BTH);

/**
 * The invariant CRC (IBA Annex A17, as rxe's rxe_icrc.c computes it):
 * CRC-32 over eight 0xFF bytes standing for the LRH, then the IP header
 * with its variant fields (IPv4 TOS, TTL, checksum; IPv6 traffic class, flow
 * label, hop limit) set to all ones, the UDP header with its checksum set to
 * all ones, the BTH with byte 4 (FECN/BECN/reserved) set to 0xFF, then the
 * rest of the headers, payload and pad. Sent little-endian after the pad.
 *
 * `ip` is the IPv4 (20-byte) or IPv6 (40-byte) header, `udp` the 8-byte UDP
 * header, `bth` the transport bytes from the BTH to the end of the pad.
 */
export function icrc(ip: Uint8Array, udp: Uint8Array, bth: Uint8Array): number {
  const ipLen = (ip[0]! >> 4) === 6 ? 40 : 20;
  const h = new Uint8Array(ipLen + 8);
  h.set(ip.subarray(0, ipLen));
  h.set(udp.subarray(0, 8), ipLen);
  return icrcAt(h, 0, bth, 0, bth.length);
}

/**
 * icrc() without a view per call, for the wire's every frame: the IP and UDP
 * headers lie together at h[ho], the transport bytes (BTH to pad) at
 * buf[off, off + n).
 */
export function icrcAt(h: Uint8Array, ho: number, buf: Uint8Array, off: number, n: number): number {
  const v6 = (h[ho]! >> 4) === 6;
  const ipLen = v6 ? 40 : 20;
  const s = pseudo;
  for (let i = 0; i < ipLen + 8; i++) s[i] = h[ho + i]!;
  if (v6) {
    s[0] = s[0]! | 0x0f; // traffic class (low nibble of byte 0 + high of byte 1) and flow label
    s[1] = s[2] = s[3] = 0xff;
    s[7] = 0xff; // hop limit
  } else {
    s[1] = 0xff; // TOS
    s[8] = 0xff; // TTL
    s[10] = s[11] = 0xff; // header checksum
  }
  s[ipLen + 6] = s[ipLen + 7] = 0xff; // UDP checksum
  const b = ipLen + 8;
  for (let i = 0; i < HdrSize.BTH; i++) s[b + i] = buf[off + i]!;
  s[b + 4] = 0xff; // FECN, BECN, reserved
  let crc = crc32(v6 ? s : pseudo4, CRC_LRH);
  if (n > HdrSize.BTH) crc = crc32(buf.subarray(off + HdrSize.BTH, off + n), crc);
  return crc >>> 0;
}

/** Linux's hash_32(qpn, 14): the UDP source port rxe gives a QP at creation (UD and GSI keep it). */
export function udpSportOfQpn(qpn: number): number {
  return 0xc000 + ((Math.imul(qpn, 0x61c88647) >>> 18) & 0x3fff);
}

/**
 * The UDP source port of a connected QP once it has an address vector, as
 * rxe takes it from rdma_get_udp_sport(): the flow label, or one computed
 * from the two QPNs, folded into 0xC000..0xFFFF. It spreads flows over ECMP
 * paths and RSS queues while keeping one QP's packets in order.
 */
export function udpSport(flowLabel: number, lqpn: number, rqpn: number): number {
  let fl = flowLabel & 0xfffff;
  if (fl === 0) {
    let v = BigInt(lqpn) * BigInt(rqpn);
    v ^= v >> 20n;
    v ^= v >> 40n;
    fl = Number(v & 0xfffffn);
  }
  return ((fl & 0x3fff) ^ (fl >> 14)) | 0xc000;
}

/** Bytes of a whole frame: IP header, UDP header, transport headers, payload, pad, ICRC. */
export function frameBytes(p: Pkt, v6: boolean): number {
  return (v6 ? 40 : 20) + 8 + headerBytes(OPCODES[p.opcode]!.mask) + p.payLen + ((4 - (p.payLen & 3)) & 3) + HdrSize.ICRC;
}

/**
 * The IP and UDP headers of a RoCEv2 frame into buf[0..ipLen+8): IPv4 (`src`/
 * `dst` 4 bytes) with identification `ipId`, DF, TTL 64 and its checksum, or
 * IPv6 (16 bytes) with hop limit 64; UDP from `sport` to 4791, checksum 0,
 * around `payload` bytes. Returns ipLen + 8.
 */
export function writeIpUdp(buf: Uint8Array, src: Uint8Array, dst: Uint8Array, ipId: number, sport: number, payload: number): number {
  const v6 = src.length === 16;
  const ipLen = v6 ? 40 : 20;
  const udpLen = 8 + payload;
  const ip = buf;
  if (v6) {
    ip.fill(0, 0, 8);
    ip[0] = 0x60;
    ip[4] = udpLen >> 8;
    ip[5] = udpLen & 0xff;
    ip[6] = 17;
    ip[7] = 64;
    for (let i = 0; i < 16; i++) {
      ip[8 + i] = src[i]!;
      ip[24 + i] = dst[i]!;
    }
  } else {
    const total = 20 + udpLen;
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2] = total >> 8;
    ip[3] = total & 0xff;
    ip[4] = (ipId >> 8) & 0xff;
    ip[5] = ipId & 0xff;
    ip[6] = 0x40; // DF: RoCE is never fragmented
    ip[7] = 0;
    ip[8] = 64;
    ip[9] = 17;
    ip[10] = ip[11] = 0;
    for (let i = 0; i < 4; i++) {
      ip[12 + i] = src[i]!;
      ip[16 + i] = dst[i]!;
    }
    let sum = 0;
    for (let i = 0; i < 20; i += 2) sum += (ip[i]! << 8) | ip[i + 1]!;
    while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
    sum = ~sum & 0xffff;
    ip[10] = sum >> 8;
    ip[11] = sum & 0xff;
  }
  const u = ipLen;
  buf[u] = sport >> 8;
  buf[u + 1] = sport & 0xff;
  buf[u + 2] = ROCE_PORT >> 8;
  buf[u + 3] = ROCE_PORT & 0xff;
  buf[u + 4] = udpLen >> 8;
  buf[u + 5] = udpLen & 0xff;
  buf[u + 6] = buf[u + 7] = 0;
  return ipLen + 8;
}

/**
 * Writes a whole RoCEv2 frame as it goes on the wire: the IP and UDP
 * headers (writeIpUdp, source port p.srcPort), then the packet and its ICRC.
 * Returns the frame's length.
 */
export function encodeFrame(p: Pkt, src: Uint8Array, dst: Uint8Array, ipId: number, buf: Uint8Array): number {
  const hl = (src.length === 16 ? 40 : 20) + 8;
  const n = encode(p, buf, hl);
  writeIpUdp(buf, src, dst, ipId, p.srcPort, n + HdrSize.ICRC);
  putIcrc(buf, hl + n, icrcAt(buf, 0, buf, hl, n));
  return hl + n + HdrSize.ICRC;
}

function putIcrc(buf: Uint8Array, c: number, crc: number): void {
  buf[c] = crc & 0xff;
  buf[c + 1] = (crc >>> 8) & 0xff;
  buf[c + 2] = (crc >>> 16) & 0xff;
  buf[c + 3] = crc >>> 24;
}

/**
 * Checks a received frame's ICRC: `ip` the IP header as it arrived, `udp`
 * the UDP header, `body` the UDP payload (packet and ICRC).
 */
export function icrcOk(ip: Uint8Array, udp: Uint8Array, body: Uint8Array): boolean {
  const n = body.length - HdrSize.ICRC;
  if (n < HdrSize.BTH) return false;
  const want = (body[n]! | (body[n + 1]! << 8) | (body[n + 2]! << 16) | (body[n + 3]! << 24)) >>> 0;
  return icrc(ip, udp, body.subarray(0, n)) === want;
}

/** icrcOk() on a frame whose IP and UDP headers lie together at h[ho] and UDP payload at buf[off, off + len). */
export function icrcOkAt(h: Uint8Array, ho: number, buf: Uint8Array, off: number, len: number): boolean {
  const n = len - HdrSize.ICRC;
  if (n < HdrSize.BTH) return false;
  const c = off + n;
  const want = (buf[c]! | (buf[c + 1]! << 8) | (buf[c + 2]! << 16) | (buf[c + 3]! << 24)) >>> 0;
  return icrcAt(h, ho, buf, off, n) === want;
}

/**
 * Writes the UDP payload of a RoCEv2 frame (transport headers, payload,
 * pad, ICRC) at buf[off], for a kernel that writes the IP and UDP headers
 * itself: `hdr` receives those headers as they will be (source port
 * `sport`, IPv4 identification `ipId`), for the ICRC and a capture.
 * Returns the UDP payload's length.
 */
export function encodeBody(p: Pkt, src: Uint8Array, dst: Uint8Array, ipId: number, sport: number, hdr: Uint8Array, buf: Uint8Array, off: number, dv?: DataView): number {
  const n = encode(p, buf, off, dv);
  writeIpUdp(hdr, src, dst, ipId, sport, n + HdrSize.ICRC);
  putIcrc(buf, off + n, icrcAt(hdr, 0, buf, off, n));
  return n + HdrSize.ICRC;
}

/** The GRH a UD receive gets, written where IP and UDP headers are written for the wire (one buffer, reused). */
const grhBuf = new Uint8Array(48);
const grh = grhBuf.subarray(0, 40);

/**
 * The 40 bytes a UD receiver finds before the payload: the packet's IP header as the wire carried it. For an
 * IPv4 GID (::ffff:a.b.c.d) rxe puts the IPv4 header in the last 20 bytes; for IPv6 the IPv6 header fills all 40.
 */
export function makeGrh(p: Pkt): Uint8Array {
  grhBuf.fill(0);
  // what follows the IP header: UDP's payload is the BTH, DETH, immediate, payload, pad and ICRC
  const roce = HdrSize.BTH + HdrSize.DETH + (p.mask & M.IMM ? HdrSize.IMM : 0) + p.payLen + p.padCnt + HdrSize.ICRC;
  if (isV4Gid(p.srcGid)) writeIpUdp(grhBuf.subarray(20), gidIp(p.srcGid), gidIp(p.dstGid), 0, 0, roce);
  else writeIpUdp(grhBuf, p.srcGid, p.dstGid, 0, 0, roce);
  return grh;
}
