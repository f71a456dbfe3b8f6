/**
 * The client's side of rxe queues, for the specs: what rdma-core 44's
 * providers/rxe writes into a send or receive queue and reads out of a
 * completion queue (post_one_send with convert_send_wr and init_send_wqe,
 * rxe_post_one_recv, rxe_poll_cq), written from their behaviour in
 * TypeScript. Like librxe it takes the element size and index mask from the
 * queue's header, and keeps only masked indices.
 */
import { QpType, SendFlags, WrOpcode } from '../../src/abi/enums.js';
import { layout } from '../../src/abi/layout.js';
import { QB, RXE_RECV_WQE_MEMBERS, RXE_SEND_WQE_MEMBERS, RXE_SEND_WR } from '../../src/abi/rxe.js';
import { CQE } from '../../src/abi/cq-ring.js';

const S = RXE_SEND_WQE_MEMBERS;
const RV = RXE_RECV_WQE_MEMBERS;
const P = QB.producer_index / 4;
const C = QB.consumer_index / 4;

/** One mmapped queue as librxe sees it. */
export class ClientQueue {
  readonly hdr: Int32Array;
  readonly dv: DataView;
  readonly bytes: Uint8Array;
  constructor(readonly buffer: ArrayBuffer) {
    this.hdr = new Int32Array(buffer, 0, QB.SIZE / 4);
    this.dv = new DataView(buffer);
    this.bytes = new Uint8Array(buffer);
  }
  get mask(): number {
    return this.dv.getUint32(QB.index_mask, true);
  }
  get log2(): number {
    return this.dv.getUint32(QB.log2_elem_size, true);
  }
  get prod(): number {
    return Atomics.load(this.hdr, P) >>> 0;
  }
  get cons(): number {
    return Atomics.load(this.hdr, C) >>> 0;
  }
  /** queue_full: the slot after the producer's is the consumer's */
  full(): boolean {
    return this.cons === ((this.prod + 1) & this.mask);
  }
  empty(): boolean {
    return this.prod === this.cons;
  }
  producerAddr(): number {
    return QB.SIZE + this.prod * 2 ** this.log2;
  }
  consumerAddr(): number {
    return QB.SIZE + this.cons * 2 ** this.log2;
  }
  advanceProducer(): void {
    Atomics.store(this.hdr, P, (this.prod + 1) & this.mask);
  }
  advanceConsumer(): void {
    Atomics.store(this.hdr, C, (this.cons + 1) & this.mask);
  }
}

export interface Sge {
  addr: bigint;
  length: number;
  lkey: number;
  /** the bytes at addr, for IBV_SEND_INLINE */
  data?: Uint8Array;
}

/** struct ibv_send_wr as a test writes it; imm is the value (the application passes htonl(imm)). */
export interface Wr {
  wrId: bigint;
  opcode: number;
  sendFlags?: number;
  imm?: number;
  sg?: Sge[];
  rdma?: { remoteAddr: bigint; rkey: number };
  atomic?: { remoteAddr: bigint; compareAdd: bigint; swap: bigint; rkey: number };
  ud?: { ahNum: number; remoteQpn: number; remoteQkey: number };
  /** LOCAL_INV, SEND_WITH_INV: ibv_send_wr's invalidate_rkey, imm_data's union mate (a plain u32) */
  invalidateRkey?: number;
  /** BIND_MW: ibv_send_wr.bind_mw (the window's rkey, the new rkey, bind_info) */
  bindMw?: { mwRkey: number; rkey: number; mrLkey: number; addr: bigint; length: bigint; access: number };
}

class Full extends Error {
  readonly code = 'ENOMEM';
}

/** post_one_send: the WQE at the producer index, then the index advanced (ENOMEM if the queue is full). */
export function postSend(q: ClientQueue, qpType: number, wr: Wr, ssn: number): void {
  const sg = wr.sg ?? [];
  const length = sg.reduce((n, s) => n + s.length, 0);
  const dv = q.dv;
  const o = q.producerAddr();
  // convert_send_wr clears the rxe_send_wr only: the rest of the slot keeps what the last WQE there left
  q.bytes.fill(0, o, o + layout(RXE_SEND_WR).size);
  dv.setBigUint64(o + S['wr.wr_id']!, wr.wrId, true);
  dv.setUint32(o + S['wr.opcode']!, wr.opcode, true);
  dv.setUint32(o + S['wr.send_flags']!, wr.sendFlags ?? 0, true);
  // (ex is one union copied whole: imm_data as the application's __be32, invalidate_rkey as its u32)
  if (wr.invalidateRkey !== undefined) dv.setUint32(o + S['wr.ex.invalidate_rkey']!, wr.invalidateRkey, true);
  else dv.setUint32(o + S['wr.ex.imm_data']!, wr.imm ?? 0, false);
  const op = wr.opcode;
  if (op === WrOpcode.BIND_MW) {
    const b = wr.bindMw!;
    dv.setBigUint64(o + S['wr.wr.mw.addr']!, b.addr, true);
    dv.setBigUint64(o + S['wr.wr.mw.length']!, b.length, true);
    dv.setUint32(o + S['wr.wr.mw.mr_lkey']!, b.mrLkey, true);
    dv.setUint32(o + S['wr.wr.mw.mw_rkey']!, b.mwRkey, true);
    dv.setUint32(o + S['wr.wr.mw.rkey']!, b.rkey, true);
    dv.setUint32(o + S['wr.wr.mw.access']!, b.access, true);
  }
  if (op === WrOpcode.RDMA_WRITE || op === WrOpcode.RDMA_WRITE_WITH_IMM || op === WrOpcode.RDMA_READ) {
    dv.setBigUint64(o + S['wr.wr.rdma.remote_addr']!, wr.rdma!.remoteAddr, true);
    dv.setUint32(o + S['wr.wr.rdma.rkey']!, wr.rdma!.rkey, true);
  } else if ((op === WrOpcode.SEND || op === WrOpcode.SEND_WITH_IMM) && qpType === QpType.UD) {
    dv.setUint32(o + S['wr.wr.ud.remote_qpn']!, wr.ud!.remoteQpn, true);
    dv.setUint32(o + S['wr.wr.ud.remote_qkey']!, wr.ud!.remoteQkey, true);
    dv.setUint32(o + S['wr.wr.ud.ah_num']!, wr.ud!.ahNum, true);
  } else if (op === WrOpcode.ATOMIC_CMP_AND_SWP || op === WrOpcode.ATOMIC_FETCH_AND_ADD) {
    dv.setBigUint64(o + S['wr.wr.atomic.remote_addr']!, wr.atomic!.remoteAddr, true);
    dv.setBigUint64(o + S['wr.wr.atomic.compare_add']!, wr.atomic!.compareAdd, true);
    dv.setBigUint64(o + S['wr.wr.atomic.swap']!, wr.atomic!.swap, true);
    dv.setUint32(o + S['wr.wr.atomic.rkey']!, wr.atomic!.rkey, true);
  }
  if ((wr.sendFlags ?? 0) & SendFlags.INLINE) {
    let at = o + S['dma.inline_data']!;
    for (const s of sg) {
      q.bytes.set(s.data!.subarray(0, s.length), at);
      at += s.length;
    }
  } else {
    sg.forEach((s, j) => {
      const e = o + S['dma.sge']! + 16 * j;
      dv.setBigUint64(e, s.addr, true);
      dv.setUint32(e + 8, s.length, true);
      dv.setUint32(e + 12, s.lkey, true);
    });
  }
  dv.setBigUint64(o + S.iova!, wr.atomic?.remoteAddr ?? wr.rdma?.remoteAddr ?? 0n, true);
  dv.setUint32(o + S['dma.length']!, length, true);
  dv.setUint32(o + S['dma.resid']!, length, true);
  dv.setUint32(o + S['dma.num_sge']!, sg.length, true);
  dv.setUint32(o + S['dma.cur_sge']!, 0, true);
  dv.setUint32(o + S['dma.sge_offset']!, 0, true);
  dv.setUint32(o + S.state!, 0, true);
  dv.setUint32(o + S.ssn!, ssn, true);
  if (q.full()) throw new Full('send queue full');
  q.advanceProducer();
}

/**
 * wr_atomic_write (ibv_wr_atomic_write between ibv_wr_start and ibv_wr_complete): the whole slot cleared, the
 * remote address and rkey in the rdma member, the 8 bytes at the head of dma's data (atomic_wr), dma.length 8.
 */
export function postAtomicWrite(q: ClientQueue, wr: { wrId: bigint; sendFlags?: number; rkey: number; remoteAddr: bigint; data: Uint8Array }, ssn: number): void {
  if (q.full()) throw new Full('send queue full');
  const dv = q.dv;
  const o = q.producerAddr();
  q.bytes.fill(0, o, o + 2 ** q.log2);
  dv.setBigUint64(o + S['wr.wr_id']!, wr.wrId, true);
  dv.setUint32(o + S['wr.opcode']!, WrOpcode.ATOMIC_WRITE, true);
  dv.setUint32(o + S['wr.send_flags']!, wr.sendFlags ?? 0, true);
  dv.setBigUint64(o + S['wr.wr.rdma.remote_addr']!, wr.remoteAddr, true);
  dv.setUint32(o + S['wr.wr.rdma.rkey']!, wr.rkey, true);
  q.bytes.set(wr.data.subarray(0, 8), o + S['dma.inline_data']!);
  dv.setUint32(o + S['dma.length']!, 8, true);
  dv.setUint32(o + S['dma.resid']!, 8, true);
  dv.setBigUint64(o + S.iova!, wr.remoteAddr, true);
  dv.setUint32(o + S.ssn!, ssn, true);
  q.advanceProducer();
}

/** rxe_post_one_recv. */
export function postRecv(q: ClientQueue, wrId: bigint, sg: Sge[]): void {
  if (q.full()) throw new Full('receive queue full');
  const dv = q.dv;
  const o = q.producerAddr();
  dv.setBigUint64(o + RV.wr_id!, wrId, true);
  sg.forEach((s, j) => {
    const e = o + RV['dma.sge']! + 16 * j;
    dv.setBigUint64(e, s.addr, true);
    dv.setUint32(e + 8, s.length, true);
    dv.setUint32(e + 12, s.lkey, true);
  });
  const length = sg.reduce((n, s) => n + s.length, 0);
  dv.setUint32(o + RV['dma.length']!, length, true);
  dv.setUint32(o + RV['dma.resid']!, length, true);
  dv.setUint32(o + RV['dma.cur_sge']!, 0, true);
  dv.setUint32(o + RV['dma.num_sge']!, sg.length, true);
  dv.setUint32(o + RV['dma.sge_offset']!, 0, true);
  q.advanceProducer();
}

/** struct ibv_wc as an application reads it (imm as ntohl(wc.imm_data)), and the port byte in its padding. */
export interface IbvWc {
  wrId: bigint;
  status: number;
  opcode: number;
  vendorErr: number;
  byteLen: number;
  imm: number;
  qpNum: number;
  srcQp: number;
  wcFlags: number;
  pkeyIndex: number;
  slid: number;
  sl: number;
  dlidPathBits: number;
  port: number;
}

/** rxe_poll_cq: up to n completions, each memcpy'd out of the consumer's slot, the index advanced after each. */
export function pollCq(q: ClientQueue, n: number): IbvWc[] {
  const out: IbvWc[] = [];
  const dv = q.dv;
  while (out.length < n && !q.empty()) {
    const o = q.consumerAddr();
    out.push({
      wrId: dv.getBigUint64(o + CQE.wr_id, true), status: dv.getUint32(o + CQE.status, true), opcode: dv.getUint32(o + CQE.opcode, true),
      vendorErr: dv.getUint32(o + CQE.vendor_err, true), byteLen: dv.getUint32(o + CQE.byte_len, true), imm: dv.getUint32(o + CQE.imm_data, false),
      qpNum: dv.getUint32(o + CQE.qp_num, true), srcQp: dv.getUint32(o + CQE.src_qp, true), wcFlags: dv.getUint32(o + CQE.wc_flags, true),
      pkeyIndex: dv.getUint16(o + CQE.pkey_index, true), slid: dv.getUint16(o + CQE.slid, true), sl: dv.getUint8(o + CQE.sl),
      dlidPathBits: dv.getUint8(o + CQE.dlid_path_bits), port: dv.getUint8(o + CQE.port_num),
    });
    q.advanceConsumer();
  }
  return out;
}
