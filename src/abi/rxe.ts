/**
 * rdma-core's rxe provider ABI (`<rdma/rdma_user_rxe.h>`): the shared queue
 * page, the send and receive WQEs librxe writes into it, the create
 * responses that tell it where to mmap them, and the kernel's sizing of each
 * queue, so a C program linked against librxe can run on softverbs. The
 * structs are written in header order and laid out by `layout.ts`; their
 * unions, which that cannot express, are their members laid at the union's
 * offset. Every field the rings read is in one flat table per struct,
 * named by its C member path, which the spec hands to `cc` to check against
 * the installed header.
 *
 * Sizing is the Linux 6.1 rxe driver's (rxe_queue.c, rxe_qp.c, rxe_cq.c,
 * rxe_srq.c), bounded by softverbs' own device limits (`queue.ts`).
 * `rxe-rings.ts` reads and writes the queues.
 */
import { layout, offsets, struct, type StructDef } from './layout.js';
import { Limits, PAGE, pow2, type QpCaps } from './queue.js';

/**
 * struct rxe_queue_buf: the header page before a queue's slots. Each index sits on its own cache line; both
 * are masked slot numbers (0..index_mask), not free-running counts.
 */
export const RXE_QUEUE_BUF = struct('rxe_queue_buf', [
  ['log2_elem_size', 'u32'], ['index_mask', 'u32'], ['pad_1', { bytes: 30 * 4 }],
  ['producer_index', 'u32'], ['pad_2', { bytes: 31 * 4 }],
  ['consumer_index', 'u32'], ['pad_3', { bytes: 31 * 4 }],
]);
/** Byte offsets in the header; SIZE is where the slots (`data[]`) start. */
export const QB = offsets(RXE_QUEUE_BUF);

export const RXE_SGE = struct('rxe_sge', [['addr', 'u64'], ['length', 'u32'], ['lkey', 'u32']]);
export const RSG = offsets(RXE_SGE);

/** struct mminfo: where a queue is in the mmap space of the device file, and its page-aligned size. */
export const MMINFO = struct('mminfo', [['offset', 'u64'], ['size', 'u32'], ['pad', 'u32']]);

/** union rxe_gid is 16 bytes (raw, or two __be64); only its size matters here. */
const RXE_GLOBAL_ROUTE = struct('rxe_global_route', [['dgid', { bytes: 16 }], ['flow_label', 'u32'], ['sgid_index', 'u8'], ['hop_limit', 'u8'], ['traffic_class', 'u8']]);
/**
 * struct rxe_av: an address vector librxe copied into a UD WQE for kernels before ah_num (rdma-core calls
 * them old kernels). softverbs hands out ah_num and ignores it; it is here for the WQE's layout.
 * sgid_addr and dgid_addr are unions of sockaddr_in and sockaddr_in6 (28 bytes, 4-aligned).
 */
export const RXE_AV = struct('rxe_av', [
  ['port_num', 'u8'], ['network_type', 'u8'], ['dmac', { bytes: 6 }], ['grh', RXE_GLOBAL_ROUTE],
  ['sgid_addr', { bytes: 28 }], ['dgid_addr', { bytes: 28 }],
]);

/** The members of rxe_send_wr's `wr` union. */
const WR_RDMA = struct('rdma', [['remote_addr', 'u64'], ['rkey', 'u32'], ['reserved', 'u32']]);
const WR_ATOMIC = struct('atomic', [['remote_addr', 'u64'], ['compare_add', 'u64'], ['swap', 'u64'], ['rkey', 'u32'], ['reserved', 'u32']]);
const WR_UD = struct('ud', [
  ['remote_qpn', 'u32'], ['remote_qkey', 'u32'], ['pkey_index', 'u16'], ['reserved', 'u16'], ['ah_num', 'u32'],
  ['pad', { bytes: 16 }], ['av', RXE_AV],
]);
const WR_MW = struct('mw', [['addr', 'u64'], ['length', 'u64'], ['mr_lkey', 'u32'], ['mw_rkey', 'u32'], ['rkey', 'u32'], ['access', 'u32']]);
const WR_UNION: ReadonlyArray<StructDef> = [WR_RDMA, WR_ATOMIC, WR_UD, WR_MW];
/** The union's size: its largest member, rounded to its 8-byte alignment (its members hold __aligned_u64s). */
const WR_BYTES = Math.ceil(Math.max(...WR_UNION.map((d) => layout(d).size)) / 8) * 8;

/** struct rxe_send_wr. `ex` is a union of __be32 imm_data and u32 invalidate_rkey; `wr` the union above. */
export const RXE_SEND_WR = struct('rxe_send_wr', [
  ['wr_id', 'u64'], ['reserved', 'u32'], ['opcode', 'u32'], ['send_flags', 'u32'], ['ex', 'u32'], ['wr', { bytes: WR_BYTES }],
]);

/**
 * struct rxe_dma_info. A flexible union of inline_data[] and sge[] follows its six words (at SIZE); it makes
 * the struct 8-aligned in C, which changes no offset where it is used (the spec's `cc` check says so).
 */
export const RXE_DMA_INFO = struct('rxe_dma_info', [
  ['length', 'u32'], ['resid', 'u32'], ['cur_sge', 'u32'], ['num_sge', 'u32'], ['sge_offset', 'u32'], ['reserved', 'u32'],
]);

/** struct rxe_send_wqe: the work request, the kernel requester's progress fields (librxe sets some), its data. */
export const RXE_SEND_WQE = struct('rxe_send_wqe', [
  ['wr', RXE_SEND_WR], ['status', 'u32'], ['state', 'u32'], ['iova', 'u64'], ['mask', 'u32'], ['first_psn', 'u32'],
  ['last_psn', 'u32'], ['ack_length', 'u32'], ['ssn', 'u32'], ['has_rd_atomic', 'u32'], ['dma', RXE_DMA_INFO],
]);

export const RXE_RECV_WQE = struct('rxe_recv_wqe', [['wr_id', 'u64'], ['reserved', 'u32'], ['padding', 'u32'], ['dma', RXE_DMA_INFO]]);

export const RXE_CREATE_AH_RESP = struct('rxe_create_ah_resp', [['ah_num', 'u32'], ['reserved', 'u32']]);
export const RXE_CREATE_CQ_RESP = struct('rxe_create_cq_resp', [['mi', MMINFO]]);
export const RXE_RESIZE_CQ_RESP = struct('rxe_resize_cq_resp', [['mi', MMINFO]]);
/** The RQ's first: librxe maps rq_mi (unless the QP has an SRQ), then sq_mi. */
export const RXE_CREATE_QP_RESP = struct('rxe_create_qp_resp', [['rq_mi', MMINFO], ['sq_mi', MMINFO]]);
export const RXE_CREATE_SRQ_RESP = struct('rxe_create_srq_resp', [['mi', MMINFO], ['srq_num', 'u32'], ['reserved', 'u32']]);
/** MODIFY_SRQ's driver data: where in the caller's memory the kernel writes the resized queue's mminfo. */
export const RXE_MODIFY_SRQ_CMD = struct('rxe_modify_srq_cmd', [['mmap_info_addr', 'u64']]);

/** Byte offsets of every field of a struct by its C member path ('dma.num_sge'), nested structs included, and SIZE. */
export function memberOffsets(def: StructDef, base = 0, prefix = '', out: Record<string, number> = {}): Record<string, number> {
  const l = layout(def);
  if (!prefix) out.SIZE = l.size;
  for (const f of l.fields) {
    out[prefix + f.name] = base + f.offset;
    if (typeof f.type === 'object' && 'fields' in f.type) memberOffsets(f.type, base + f.offset, `${prefix}${f.name}.`, out);
  }
  return out;
}

/** The send WQE's member paths, its unions' members included (both names of `ex`, every member of `wr.wr`, dma's data). */
export const RXE_SEND_WQE_MEMBERS: Readonly<Record<string, number>> = (() => {
  const m = memberOffsets(RXE_SEND_WQE);
  m['wr.ex.imm_data'] = m['wr.ex.invalidate_rkey'] = m['wr.ex']!;
  for (const d of WR_UNION) memberOffsets(d, m['wr.wr']!, `wr.wr.${d.name}.`, m);
  m['dma.inline_data'] = m['dma.sge'] = m.dma! + layout(RXE_DMA_INFO).size;
  // a fast-mode copy, as offsets() makes its tables (layout.ts)
  return { ...m };
})();
export const RXE_RECV_WQE_MEMBERS: Readonly<Record<string, number>> = (() => {
  const m = memberOffsets(RXE_RECV_WQE);
  m['dma.sge'] = m.dma! + layout(RXE_DMA_INFO).size;
  return m;
})();

const S = RXE_SEND_WQE_MEMBERS;
/** What the HCA reads of a send WQE, at its byte offset in the slot. */
export const SWQE = {
  wr_id: S['wr.wr_id']!, opcode: S['wr.opcode']!, send_flags: S['wr.send_flags']!, imm_data: S['wr.ex.imm_data']!,
  rdma_remote_addr: S['wr.wr.rdma.remote_addr']!, rdma_rkey: S['wr.wr.rdma.rkey']!,
  atomic_remote_addr: S['wr.wr.atomic.remote_addr']!, atomic_compare_add: S['wr.wr.atomic.compare_add']!,
  atomic_swap: S['wr.wr.atomic.swap']!, atomic_rkey: S['wr.wr.atomic.rkey']!,
  ud_remote_qpn: S['wr.wr.ud.remote_qpn']!, ud_remote_qkey: S['wr.wr.ud.remote_qkey']!, ud_ah_num: S['wr.wr.ud.ah_num']!,
  invalidate_rkey: S['wr.ex.invalidate_rkey']!,
  mw_addr: S['wr.wr.mw.addr']!, mw_length: S['wr.wr.mw.length']!, mw_mr_lkey: S['wr.wr.mw.mr_lkey']!, mw_mw_rkey: S['wr.wr.mw.mw_rkey']!,
  mw_rkey: S['wr.wr.mw.rkey']!, mw_access: S['wr.wr.mw.access']!,
  dma_length: S['dma.length']!, dma_num_sge: S['dma.num_sge']!,
  /** inline_data[] or sge[] */
  dma_data: S['dma.sge']!,
  SIZE: S.SIZE!,
} as const;
/** What the HCA reads of a receive WQE. */
export const RWQE = { wr_id: RXE_RECV_WQE_MEMBERS.wr_id!, dma_num_sge: RXE_RECV_WQE_MEMBERS['dma.num_sge']!, dma_sge: RXE_RECV_WQE_MEMBERS['dma.sge']!, SIZE: RXE_RECV_WQE_MEMBERS.SIZE! } as const;

/**
 * The AH number the daemon hands an rxe client for an address handle (CREATE_AH's rxe_create_ah_resp), and
 * back: our handles start at 0, and librxe takes ah_num 0 to mean a kernel without AH numbers (it then copies
 * an rxe_av into the WQE instead), so the number is the handle + 1.
 */
export const rxeAhNum = (ahHandle: number): number => ahHandle + 1;
/** The AH handle a UD WQE without an AH number names: none (no handle is negative), so the HCA refuses the WQE. */
export const RXE_NO_AH = -1;

// ---- sizing (Linux 6.1, drivers/infiniband/sw/rxe) ----

/** cache_line_size() on x86-64: rxe_queue_init pads an element to at least this. */
const CACHE_LINE = 64;
/** sizeof(struct ib_sge), the kernel's SGE that rxe_qp_init_req and rcv_wqe_size count in: as rxe_sge. */
const IB_SGE = layout(RXE_SGE).size;
/**
 * sizeof(struct rxe_cqe): the CQ's element as the kernel sizes it, a union of its own struct ib_wc and
 * ib_uverbs_wc. ib_wc is 72 bytes on 64-bit Linux since 5.14 (its port_num became a u32), so an element is
 * 128 bytes, not the 64 the 48-byte ib_uverbs_wc alone would round to. librxe takes the size from
 * log2_elem_size and reads the first 48.
 */
export const RXE_CQE_SIZE = 72;

/** One queue's geometry, as rxe_queue_init makes it. */
export interface RxeQueueLayout {
  /** num_slots: the requested count + 1, rounded to a power of two; the queue holds one less */
  readonly slots: number;
  /** log2 of elemSize (the header's log2_elem_size) */
  readonly log2ElemSize: number;
  /** the element size asked for, padded to a cache line and rounded to a power of two */
  readonly elemSize: number;
  /** buf_size: the header and the slots */
  readonly bufSize: number;
  /** what the client maps: bufSize page aligned (mminfo.size, as rxe_create_mmap_info gives it) */
  readonly bytes: number;
}

/** rxe_queue_init(num_elem, elem_size) (rxe_queue.c). */
export function rxeQueue(numElem: number, elemSize: number): RxeQueueLayout {
  const e = pow2(Math.max(elemSize, CACHE_LINE));
  const slots = pow2(numElem + 1);
  const bufSize = QB.SIZE + slots * e;
  return { slots, log2ElemSize: 31 - Math.clz32(e), elemSize: e, bufSize, bytes: Math.ceil(bufSize / PAGE) * PAGE };
}

/** A value from a command: a u32 within `max`. */
const within = (v: number, max: number): boolean => v >>> 0 === v && v <= max;
/**
 * The work requests a queue of `slots` reports: what it holds, capped at the device limit. Linux 6.1 reported
 * the count asked for; since 6.5 (rxe_init_sq/rxe_init_rq, "return actual capabilities") it is slots - 1,
 * which can pass max_qp_wr (16384 asked for is 32767). Both are at least what was asked; librxe uses neither.
 */
const reported = (slots: number, limit: number): number => Math.min(slots - 1, limit);

export interface RxeSqLayout extends RxeQueueLayout {
  readonly caps: { readonly maxSendWr: number; readonly maxSendSge: number; readonly maxInlineData: number };
}

/**
 * The send queue for these caps (rxe_qp_init_req): a WQE carries the larger of its SGE list and its inline
 * data, so the QP gets as many of each as that room holds (4 SGEs give 64 inline bytes; 100 inline bytes
 * give 6 SGEs). Null (EINVAL) past the device limits, as rxe_qp_chk_cap.
 */
export function rxeSqLayout(caps: Pick<QpCaps, 'maxSendWr' | 'maxSendSge' | 'maxInlineData'>): RxeSqLayout | null {
  if (!within(caps.maxSendWr, Limits.maxQpWr) || !within(caps.maxSendSge, Limits.maxSge) || !within(caps.maxInlineData, Limits.maxInline)) return null;
  const room = Math.max(caps.maxSendSge * IB_SGE, caps.maxInlineData);
  const q = rxeQueue(caps.maxSendWr, SWQE.SIZE + room);
  return { ...q, caps: { maxSendWr: reported(q.slots, Limits.maxQpWr), maxSendSge: Math.floor(room / IB_SGE), maxInlineData: room } };
}

export interface RxeRqLayout extends RxeQueueLayout {
  readonly caps: { readonly maxRecvWr: number; readonly maxRecvSge: number };
}

/** A QP's receive queue (rxe_qp_init_resp: rcv_wqe_size(max_recv_sge)); the SGE count is kept as asked. */
export function rxeRqLayout(maxRecvWr: number, maxRecvSge: number): RxeRqLayout | null {
  if (!within(maxRecvWr, Limits.maxQpWr) || !within(maxRecvSge, Limits.maxSge)) return null;
  const q = rxeQueue(maxRecvWr, RWQE.SIZE + maxRecvSge * IB_SGE);
  return { ...q, caps: { maxRecvWr: reported(q.slots, Limits.maxQpWr), maxRecvSge } };
}

export interface RxeQpLayout {
  readonly sq: RxeSqLayout;
  /** null when the QP uses an SRQ (librxe maps no RQ then) */
  readonly rq: RxeRqLayout | null;
  /** what CREATE_QP answers */
  readonly caps: QpCaps;
}

/** Both queues of a QP and the caps CREATE_QP reports; null if a cap is past the device limits. */
export function rxeQpLayout(req: QpCaps, srq: boolean): RxeQpLayout | null {
  const sq = rxeSqLayout(req);
  const rq = srq ? null : rxeRqLayout(req.maxRecvWr, req.maxRecvSge);
  if (!sq || (!srq && !rq)) return null;
  return { sq, rq, caps: { ...sq.caps, maxRecvWr: rq ? rq.caps.maxRecvWr : 0, maxRecvSge: rq ? rq.caps.maxRecvSge : 0 } };
}

export interface RxeCqLayout extends RxeQueueLayout {
  /** what CREATE_CQ and RESIZE_CQ report: the slots - 1 the CQ holds (rxe_cq_from_init) */
  readonly cqe: number;
}

/** A CQ of at least `cqe` entries (rxe_cq_chk_attr: 1..max_cqe); also RESIZE_CQ's new ring. */
export function rxeCqLayout(cqe: number): RxeCqLayout | null {
  if (!within(cqe, Limits.maxCqe) || cqe < 1) return null;
  const q = rxeQueue(cqe, RXE_CQE_SIZE);
  return { ...q, cqe: q.slots - 1 };
}

export interface RxeSrqLayout extends RxeQueueLayout {
  readonly maxWr: number;
  readonly maxSge: number;
}

/**
 * An SRQ (rxe_srq_chk_attr, rxe_srq_from_init): max_wr 1..max_srq_wr, max_sge up to max_srq_sge and at least
 * RXE_MIN_SRQ_SGE (1); the WQE as a QP's RQ.
 */
export function rxeSrqLayout(maxWr: number, maxSge: number): RxeSrqLayout | null {
  if (!within(maxWr, Limits.maxSrqWr) || maxWr < 1 || !within(maxSge, Limits.maxSrqSge)) return null;
  const sge = Math.max(1, maxSge);
  const q = rxeQueue(maxWr, RWQE.SIZE + sge * IB_SGE);
  return { ...q, maxWr: reported(q.slots, Limits.maxSrqWr), maxSge: sge };
}
