/**
 * rdma_conn_param: what rdma_connect and rdma_accept take, and the
 * rdma_ucm_conn_param it becomes, with the checks made before a REQ or REP
 * is built from it.
 */
import { QpType } from '../abi/enums.js';
import type { Input } from '../abi/layout.js';
import * as C from '../abi/ucma.js';
import { PortSpace } from '../abi/ucma.js';
import { VerbsError } from './errors.js';

/** rdma_conn_param */
export interface ConnParam {
  privateData?: Uint8Array;
  responderResources?: number;
  initiatorDepth?: number;
  flowControl?: number;
  /**
   * How often the connection's QPs send a packet again when no ACK comes (one ACK timeout, about 2.1 s, each)
   * before the work request fails with `RETRY_EXC_ERR`: 0 to 7, 7 when not given (as librdmacm without a
   * conn_param). Connect sends it in the REQ and it sets both sides' QPs; accept ignores it (a REP has no such
   * field). 7 means for ever (rxe's reading, and softverbs'): a peer that dies is never detected by the retry
   * timer, and what was posted to it never completes. Below 7, a dead peer fails the work request after about
   * (retryCount + 1) × 2.1 s.
   */
  retryCount?: number;
  /**
   * How often the peer's QP sends again when ours answers RNR (no receive posted) before its work request fails
   * with `RNR_RETRY_EXC_ERR`: 0 to 7, 7 when not given. Connect gives it to the passive side (in the REQ),
   * accept to the active side (in the REP). 7 means for ever (the IBA's reading): a receiver that never posts
   * a receive stalls the peer's SENDs for ever.
   */
  rnrRetryCount?: number;
  srq?: boolean;
  /** the QP number, for an id whose QP is not the id's own (rdma_create_qp not used) */
  qpNum?: number;
}

/** The retry counts are 3-bit fields of the REQ and the REP. */
const MAX_RETRY = 7;

/** The rdma_ucm_conn_param of a connect or accept on an id of `qpType` in `ps`; EINVAL for what the message cannot carry. */
export function ucmaConnParam(p: ConnParam, verb: 'rdma_connect' | 'rdma_accept', qpType: number, ps: number, qpNum: number): Input<typeof C.CONN_PARAM> {
  const pd = p.privateData ?? new Uint8Array(0);
  // what fits the message after rdma_cm's own header (librdmacm checks this before it touches the QP)
  const ud = qpType === QpType.UD;
  const max = verb === 'rdma_connect' ? (ud ? 180 : ps === PortSpace.IB ? 92 : 56) : ud ? 136 : 196;
  if (pd.length > max) throw new VerbsError(verb, 'EINVAL', `${pd.length} bytes of private data (at most ${max} fit)`);
  // a larger count would be cut to its low 3 bits on the wire: 8 would become 0, no retry at all
  for (const [name, v] of [['retryCount', p.retryCount], ['rnrRetryCount', p.rnrRetryCount]] as const) {
    if (v !== undefined && !(Number.isInteger(v) && v >= 0 && v <= MAX_RETRY)) throw new VerbsError(verb, 'EINVAL', `${name} ${v} is not 0 to ${MAX_RETRY} (7: retry for ever)`);
  }
  return {
    qp_num: qpNum, private_data: pd, private_data_len: pd.length, srq: p.srq ? 1 : 0,
    responder_resources: p.responderResources ?? 1, initiator_depth: p.initiatorDepth ?? 1, flow_control: p.flowControl ?? 0,
    retry_count: p.retryCount ?? MAX_RETRY, rnr_retry_count: p.rnrRetryCount ?? MAX_RETRY, valid: 1,
  };
}
