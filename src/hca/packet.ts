/**
 * A packet in flight inside the HCA, as header fields rather than bytes:
 * the requester, responder and completer read and write these; the RoCEv2
 * codec turns them into wire bytes (and back) when the peer is on another
 * device. Between two QPs of one device the descriptor itself travels, and
 * its payload is a window on the sender's memory, so the bytes are copied
 * once, into the destination.
 *
 * Descriptors come from a per-device pool: nothing is allocated per packet.
 */

import type { Mapping } from '../native/libc.js';
import { giveStage, takeStage } from './staging.js';

const EMPTY = new Uint8Array(0);

export class Pkt {
  /** times this descriptor went back to the pool: a holder of an old reference can tell it now stands for another packet */
  life = 0;
  /**
   * PSNs this descriptor stands for: 1 on the wire; between devices of one daemon a run of n MTU-sized
   * packets of one message travels as one descriptor (psn .. psn+n-1, payLen up to n * MTU)
   */
  span = 1;
  opcode = 0;
  mask = 0;
  // BTH
  destQpn = 0;
  psn = 0;
  ackReq = false;
  se = false;
  padCnt = 0;
  pkey = 0xffff;
  migReq = false;
  /** BTH transport header version (0) */
  tver = 0;
  /** BTH byte 4: FECN, BECN and reserved bits */
  fecnBecn = 0;
  // who sent it (a local QPN; for the wire, filled from DETH or the connection)
  srcQpn = 0;
  /**
   * On the last packet of a UC or UD message: the send WQE it completes,
   * once the packet has left (delivered here or framed onto the wire), never
   * before, so the client cannot reuse the buffer under a packet in flight.
   */
  done: (() => void) | null = null;
  /** Dropped by fault injection: passes through the queue without being delivered. */
  lost = false;
  /** UDP source port on the wire: the sending QP's (rxe's qp->src_port). */
  srcPort = 0xc000;
  // RETH
  va = 0;
  rkey = 0;
  dmaLen = 0;
  // AETH
  syndrome = 0;
  msn = 0;
  // AtomicETH (va/rkey shared with RETH's fields)
  swapAdd = 0n;
  compare = 0n;
  // AtomicAckETH
  orig = 0n;
  // ImmDt, kept as the 32-bit value in network order, as ibv_send_wr / ibv_wc hold it
  imm = 0;
  // DETH
  qkey = 0;
  // payload: a window [payOff, payOff + payLen) of payload
  payload: Uint8Array = EMPTY;
  payOff = 0;
  payLen = 0;
  /**
   * The client mapping the payload is a window on, when it is one (an MR's memory): a packet still queued
   * when that mapping goes (DEREG_MR, a client's exit) is dropped as lost instead of read from unmapped memory.
   */
  payMap: Mapping | null = null;
  /** A span buffer this descriptor holds (spanBuffer): back to the free list when the descriptor goes back to the pool. */
  own: Uint8Array | null = null;
  /** The descriptor's own payload buffer (pktBuffer), kept across the pool. */
  scratch: Uint8Array | null = null;
  /** Source GID (16 bytes) for the GRH a UD receiver sees. */
  srcGid: Uint8Array = EMPTY;
  /** Destination GID of the packet (for the GRH and the wire). */
  dstGid: Uint8Array = EMPTY;

  reset(): void {
    this.opcode = this.mask = this.destQpn = this.psn = this.padCnt = this.srcQpn = 0;
    this.ackReq = this.se = this.migReq = false;
    this.span = 1;
    this.pkey = 0xffff;
    this.tver = this.fecnBecn = 0;
    this.srcPort = 0xc000;
    this.done = null;
    this.lost = false;
    this.va = this.rkey = this.dmaLen = this.syndrome = this.msn = this.imm = this.qkey = 0;
    this.swapAdd = this.compare = this.orig = 0n;
    this.payload = EMPTY;
    this.payMap = null;
    if (this.own !== null) {
      giveStage(this.own);
      this.own = null;
    }
    this.payOff = this.payLen = 0;
    this.srcGid = this.dstGid = EMPTY;
  }
}

/**
 * A descriptor's own payload buffer, made the first time one is needed and kept with it across the pool: what a
 * payload gathered from several SGEs (or inline data), or copied out of a client's memory that the daemon does not
 * map, is placed in. At least n bytes (an MTU, 4096, at most almost always). A field every descriptor has (null
 * until then), not a WeakMap beside them: its lookup was 1-2% of the 8 B SEND rate.
 */
export function pktBuffer(p: Pkt, n: number): Uint8Array {
  let s = p.scratch;
  if (s === null || s.length < n) s = p.scratch = new Uint8Array(Math.max(4096, n));
  return s;
}

/**
 * A buffer for a span's payload read from a client's own memory (STAGE_BYTES, as much as a span carries), held by
 * the descriptor until it goes back to the pool: from the staging buffers' free list, so that the few spans in
 * flight at a time share a few buffers (a descriptor's own buffer, kept with it across the pool, would leave
 * thousands of them at 64 KiB each after one burst).
 */
export function spanBuffer(p: Pkt): Uint8Array {
  return (p.own ??= takeStage());
}

/** A free list of descriptors. */
export class PktPool {
  private free: Pkt[] = [];
  get(): Pkt {
    return this.free.pop() ?? new Pkt();
  }
  put(p: Pkt): void {
    p.reset();
    p.life++;
    if (this.free.length < 4096) this.free.push(p);
  }
}
