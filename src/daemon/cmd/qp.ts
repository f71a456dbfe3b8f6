/** The queue pair's commands: CREATE_QP, QUERY_QP, MODIFY_QP, DESTROY_QP, and POST_SEND / POST_RECV as its doorbells. */
import { Access, EventType, isQpState, mtuBytes, QpAttrMask as A, QpState, QpType } from '../../abi/enums.js';
import { pack } from '../../abi/layout.js';
import { Limits } from '../../abi/queue.js';
import * as U from '../../abi/uverbs.js';
import { E, fail } from '../../common/errno.js';
import { udpSport } from '../../hca/codec.js';
import { flushRecv, toError } from '../../hca/completion.js';
import { modifyMaskError, Qp, wqeBytes } from '../../hca/qp.js';
import type { Context } from '../context.js';
import type { Commands } from './command.js';

/** What a QP costs the daemon besides its send WQEs (its state, receive WQE, responder resources), for the memory quota. */
const QP_BASE_BYTES = 16 * 1024;

function createQp(ctx: Context, r: U.Req<'CREATE_QP'>, u: U.Udata<'CREATE_QP'> | null): Buffer {
  const made = newQp(ctx, r, u);
  return Buffer.concat([made.resp, made.udata]);
}

/** What CREATE_QP and EX_CREATE_QP have in common (the kernel's create_qp): the legacy request, the response address aside. */
export type QpRequest = Omit<U.Req<'CREATE_QP'>, 'response'>;

/** Makes the QP a create command asks for: ib_uverbs_create_qp_resp and the provider's response udata. */
export function newQp(ctx: Context, r: QpRequest, u: U.Udata<'CREATE_QP'> | null): { resp: Buffer; udata: Buffer } {
  const type = r.qp_type;
  if (type !== QpType.RC && type !== QpType.UC && type !== QpType.UD) fail(E.EOPNOTSUPP, `CREATE_QP: QP type ${type} is not supported`);
  const pd = ctx.get('pd', r.pd_handle);
  const scq = ctx.get('cq', r.send_cq_handle, 'send_cq');
  const rcq = ctx.get('cq', r.recv_cq_handle, 'recv_cq');
  const srq = r.is_srq ? ctx.get('srq', r.srq_handle) : null;
  if (srq && srq.pd !== pd) fail(E.EINVAL, 'CREATE_QP: SRQ is in another PD');
  const want = {
    maxSendWr: r.max_send_wr, maxRecvWr: r.max_recv_wr, maxSendSge: r.max_send_sge,
    maxRecvSge: r.max_recv_sge, maxInlineData: r.max_inline_data,
  };
  if (want.maxSendWr > Limits.maxQpWr || want.maxRecvWr > Limits.maxQpWr || want.maxSendSge > Limits.maxSge || want.maxRecvSge > Limits.maxSge || want.maxInlineData > Limits.maxInline)
    fail(E.EINVAL, 'CREATE_QP: a capability is over the device limit');
  ctx.admit('qp');
  const q = ctx.provider.qp(ctx, want, !!srq, u);
  // the daemon's memory for its send WQEs, at most one per SQ slot: charged at the caps, allocated as they fill
  const bytes = QP_BASE_BYTES + q.sq.slots * wqeBytes(q.caps.maxSendSge, q.caps.maxInlineData);
  let qpn = -1;
  try {
    ctx.host.quotas.check(ctx.uid, 'memory', bytes);
    qpn = ctx.dev.allocQpn();
    if (qpn < 0) fail(E.ENOMEM, 'CREATE_QP: no QP numbers left');
  } catch (e) {
    ctx.unmapClient(q.mapping);
    throw e;
  }
  ctx.host.quotas.take(ctx.uid, 'memory', bytes);
  const qp = new Qp(ctx.dev, ctx, qpn, type, pd, scq, rcq, srq, q.rq, !!r.sq_sig_all, q.caps, q.mapping, q.sq, r.user_handle);
  qp.chargedBytes = bytes;
  qp.setMtu(5, ctx.dev.mtuBytes);
  ctx.dev.qps.set(qpn, qp);
  pd.users++;
  scq.users++;
  rcq.users++;
  if (srq) srq.users++;
  const h = ctx.add({ type: 'qp', obj: qp });
  const c = q.caps;
  const resp = pack(U.CREATE_QP_RESP, {
    qp_handle: h, qpn, max_send_wr: c.maxSendWr, max_recv_wr: c.maxRecvWr, max_send_sge: c.maxSendSge, max_recv_sge: c.maxRecvSge,
    max_inline_data: c.maxInlineData,
  });
  return { resp, udata: q.udata };
}

function queryQp(ctx: Context, r: U.Req<'QUERY_QP'>): Buffer {
  const qp = ctx.get('qp', r.qp_handle);
  const a = qp.attr;
  const dest = {
    dgid: a.path.dgid, flow_label: a.path.flowLabel, sgid_index: a.path.sgidIndex, hop_limit: a.path.hopLimit,
    traffic_class: a.path.trafficClass, is_global: 1, port_num: a.port,
  };
  return pack(U.QUERY_QP_RESP, {
    dest, max_send_wr: qp.caps.maxSendWr, max_recv_wr: qp.caps.maxRecvWr, max_send_sge: qp.caps.maxSendSge,
    max_recv_sge: qp.caps.maxRecvSge, max_inline_data: qp.caps.maxInlineData, qkey: a.qkey, rq_psn: qp.resp.psn, sq_psn: qp.req.psn,
    dest_qp_num: a.destQpn, qp_access_flags: a.accessFlags, pkey_index: a.pkeyIndex, qp_state: qp.state, cur_qp_state: qp.state,
    path_mtu: a.pathMtu, path_mig_state: a.pathMigState, sq_draining: qp.state === QpState.SQD && qp.comp.idx !== qp.req.idx ? 1 : 0,
    max_rd_atomic: a.maxRdAtomic, max_dest_rd_atomic: a.maxDestRdAtomic, min_rnr_timer: a.minRnrTimer, port_num: a.port,
    timeout: a.timeout, retry_cnt: a.retryCnt, rnr_retry: a.rnrRetry, sq_sig_all: qp.sqSigAll ? 1 : 0,
  });
}

/** IB_QP_ATTR_STANDARD_BITS: STATE (bit 0) to DEST_QPN (bit 20), what the legacy MODIFY_QP (and rxe's modify_qp) take. */
export const QP_ATTR_STANDARD_BITS = (A.DEST_QPN << 1) - 1;

/** ib_uverbs_modify_qp: any attribute past the standard ones is EOPNOTSUPP before the QP is looked at. */
function legacyModifyQp(ctx: Context, r: U.Req<'MODIFY_QP'>): void {
  if (r.attr_mask & ~QP_ATTR_STANDARD_BITS) fail(E.EOPNOTSUPP, `MODIFY_QP: attr_mask 0x${(r.attr_mask >>> 0).toString(16)} has bits past the standard attributes`);
  modifyQp(ctx, r);
}

/** MODIFY_QP, and EX_MODIFY_QP's base. */
export function modifyQp(ctx: Context, r: U.Req<'MODIFY_QP'>): void {
  const qp = ctx.get('qp', r.qp_handle);
  const mask = r.attr_mask;
  const cur = qp.state;
  if (mask & A.CUR_STATE && r.cur_qp_state !== cur) fail(E.EINVAL, `MODIFY_QP: cur_qp_state ${r.cur_qp_state} is not the QP's state ${cur}`);
  const next = mask & A.STATE ? r.qp_state : cur;
  const maskError = modifyMaskError(cur, next, qp.type, mask);
  if (maskError || !isQpState(next)) fail(E.EINVAL, `MODIFY_QP: attr_mask 0x${mask.toString(16)}: ${maskError ?? `qp_state ${next} does not exist`}`);
  // check every value before changing anything
  const dest = r.dest;
  if (mask & A.PORT && r.port_num !== 1) fail(E.EINVAL, `MODIFY_QP: port ${r.port_num} does not exist`);
  if (mask & A.PATH_MTU && !mtuBytes(r.path_mtu)) fail(E.EINVAL, `MODIFY_QP: path_mtu ${r.path_mtu}`);
  if (mask & A.PKEY_INDEX && r.pkey_index >= 1) fail(E.EINVAL, `MODIFY_QP: pkey_index ${r.pkey_index} (the table has 1 entry)`);
  if (mask & A.MAX_QP_RD_ATOMIC && r.max_rd_atomic > Limits.maxQpRdAtom) fail(E.EINVAL, `MODIFY_QP: max_rd_atomic ${r.max_rd_atomic}`);
  if (mask & A.MAX_DEST_RD_ATOMIC && r.max_dest_rd_atomic > Limits.maxQpRdAtom) fail(E.EINVAL, `MODIFY_QP: max_dest_rd_atomic ${r.max_dest_rd_atomic}`);
  if (mask & A.TIMEOUT && r.timeout > 31) fail(E.EINVAL, `MODIFY_QP: timeout ${r.timeout}`);
  if (mask & A.RETRY_CNT && r.retry_cnt > 7) fail(E.EINVAL, `MODIFY_QP: retry_cnt ${r.retry_cnt}`);
  if (mask & A.RNR_RETRY && r.rnr_retry > 7) fail(E.EINVAL, `MODIFY_QP: rnr_retry ${r.rnr_retry}`);
  if (mask & A.MIN_RNR_TIMER && r.min_rnr_timer > 31) fail(E.EINVAL, `MODIFY_QP: min_rnr_timer ${r.min_rnr_timer}`);
  if (mask & A.ACCESS_FLAGS && r.qp_access_flags & ~(Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ | Access.REMOTE_ATOMIC))
    fail(E.EINVAL, `MODIFY_QP: qp_access_flags 0x${r.qp_access_flags.toString(16)}`);
  if (mask & A.AV) {
    if (!dest.is_global) fail(E.EINVAL, 'MODIFY_QP: RoCE address vectors need a GRH (is_global)');
    if (dest.sgid_index >= ctx.dev.gids.length) fail(E.EINVAL, `MODIFY_QP: sgid_index ${dest.sgid_index} is not in the GID table`);
    if (dest.port_num !== 1 && dest.port_num !== 0) fail(E.EINVAL, `MODIFY_QP: ah_attr.port_num ${dest.port_num}`);
  }
  if (mask & A.DEST_QPN && r.dest_qp_num > 0xffffff) fail(E.EINVAL, `MODIFY_QP: dest_qp_num ${r.dest_qp_num}`);
  if (mask & A.ALT_PATH) fail(E.EOPNOTSUPP, 'MODIFY_QP: alternate paths are not supported');

  const a = qp.attr;
  if (mask & A.QKEY) a.qkey = r.qkey;
  if (mask & A.ACCESS_FLAGS) a.accessFlags = r.qp_access_flags;
  if (mask & A.PKEY_INDEX) a.pkeyIndex = r.pkey_index;
  if (mask & A.PORT) a.port = r.port_num;
  if (mask & A.PATH_MTU) {
    a.pathMtu = r.path_mtu;
    qp.setMtu(a.pathMtu, ctx.dev.mtuBytes);
  }
  if (mask & A.TIMEOUT) a.timeout = r.timeout;
  if (mask & A.RETRY_CNT) a.retryCnt = qp.comp.retryCnt = r.retry_cnt;
  if (mask & A.RNR_RETRY) a.rnrRetry = qp.comp.rnrRetry = r.rnr_retry;
  if (mask & A.MIN_RNR_TIMER) a.minRnrTimer = r.min_rnr_timer;
  if (mask & A.MAX_QP_RD_ATOMIC) a.maxRdAtomic = r.max_rd_atomic;
  if (mask & A.MAX_DEST_RD_ATOMIC) a.maxDestRdAtomic = r.max_dest_rd_atomic;
  if (mask & A.EN_SQD_ASYNC_NOTIFY) a.enSqdAsyncNotify = r.en_sqd_async_notify;
  if (mask & A.PATH_MIG_STATE) a.pathMigState = r.path_mig_state;
  if (mask & A.DEST_QPN) a.destQpn = r.dest_qp_num;
  if (mask & A.RQ_PSN) qp.resp.psn = r.rq_psn & 0xffffff;
  if (mask & A.SQ_PSN) qp.req.psn = qp.comp.psn = r.sq_psn & 0xffffff;
  if (mask & A.AV) {
    a.path = {
      dgid: dest.dgid.slice(), sgidIndex: dest.sgid_index, hopLimit: dest.hop_limit,
      trafficClass: dest.traffic_class, flowLabel: dest.flow_label, isGlobal: true,
    };
    if (qp.type !== QpType.UD) qp.srcPort = udpSport(a.path.flowLabel, qp.qpn, a.destQpn);
  }
  if (!(mask & A.STATE)) return;
  transition(ctx, qp, cur, next);
}

function transition(ctx: Context, qp: Qp, cur: QpState, next: QpState): void {
  if (next === QpState.RESET) {
    qp.reset();
    return;
  }
  if (next === QpState.ERR) {
    toError(qp, 'modify_qp to ERR');
    return;
  }
  qp.state = next;
  if (next === QpState.SQD && cur === QpState.RTS && qp.comp.idx === qp.req.idx && qp.attr.enSqdAsyncNotify) {
    qp.attr.enSqdAsyncNotify = 0;
    qp.raise(EventType.SQ_DRAINED);
  }
  if (next === QpState.RTS && cur !== QpState.RTS) ctx.dev.doorbell(qp);
}

function destroyQp(ctx: Context, r: U.Req<'DESTROY_QP'>): Buffer {
  const qp = ctx.get('qp', r.qp_handle);
  ctx.destroy(r.qp_handle);
  return pack(U.DESTROY_QP_RESP, { events_reported: qp.asyncEvents });
}

function postSend(ctx: Context, r: U.Req<'POST_SEND'>): Buffer {
  ctx.get('qp', r.qp_handle);
  if (r.wr_count !== 0) fail(E.EINVAL, 'POST_SEND: WRs go in the shared send queue; the command is only the doorbell (wr_count 0)');
  ctx.doorbell(r.qp_handle);
  return pack(U.POST_SEND_RESP, { bad_wr: 0 });
}

/** POST_RECV as a doorbell: a receive posted to a QP in ERR must be flushed, and only a doorbell tells us. */
function postRecvDoorbell(ctx: Context, r: U.Req<'POST_RECV'>): Buffer {
  const qp = ctx.get('qp', r.qp_handle);
  if (r.wr_count !== 0) fail(E.EINVAL, 'POST_RECV: WRs go in the shared receive queue; the command is only the doorbell (wr_count 0)');
  flushRecv(qp);
  ctx.dev.fabric.drain();
  return pack(U.POST_SEND_RESP, { bad_wr: 0 });
}

export const qpCommands: Commands = {
  CREATE_QP: (ctx, r, u) => createQp(ctx, r, u),
  QUERY_QP: (ctx, r) => queryQp(ctx, r),
  MODIFY_QP: (ctx, r) => legacyModifyQp(ctx, r),
  DESTROY_QP: (ctx, r) => destroyQp(ctx, r),
  POST_SEND: (ctx, r) => postSend(ctx, r),
  POST_RECV: (ctx, r) => postRecvDoorbell(ctx, r),
};
