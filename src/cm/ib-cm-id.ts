/**
 * ib_cm's interface (what the kernel's include/rdma/ib_cm.h declares): its
 * id, the states of the IBA CM state machine, the events an id's handler is
 * told and the parameters of the messages a consumer sends. The machine
 * itself is `ib-cm.ts`; the messages' contents `cm-msgs.ts`.
 */
import { QpType } from '../abi/enums.js';
import { Limits } from '../abi/queue.js';
import type { SoftDevice } from '../hca/device.js';
import { timeoutMs, type RejReason, type Rep, type Req, type SidrRep, type SidrReq, type SidrStatus } from './mad.js';

/** ib_cm's states (enum ib_cm_state). */
export const IbState = {
  IDLE: 'IDLE', LISTEN: 'LISTEN', REQ_SENT: 'REQ_SENT', REQ_RCVD: 'REQ_RCVD', MRA_REQ_SENT: 'MRA_REQ_SENT', MRA_REQ_RCVD: 'MRA_REQ_RCVD',
  REP_SENT: 'REP_SENT', REP_RCVD: 'REP_RCVD', MRA_REP_RCVD: 'MRA_REP_RCVD', ESTABLISHED: 'ESTABLISHED', DREQ_SENT: 'DREQ_SENT',
  DREQ_RCVD: 'DREQ_RCVD', TIMEWAIT: 'TIMEWAIT', SIDR_REQ_SENT: 'SIDR_REQ_SENT', SIDR_REQ_RCVD: 'SIDR_REQ_RCVD', SIDR_REP_SENT: 'SIDR_REP_SENT',
} as const;
export type IbState = (typeof IbState)[keyof typeof IbState];

/**
 * Our own retransmission interval, whatever the peer allows: a lost REQ or REP costs a second, not the 4.3 s
 * the response timeout would permit (a duplicate is harmless: the peer's CM resends its answer or an MRA).
 */
export const RETRY_MS = 1000;
/** Max CM Retries is a 4-bit field. */
const MAX_CM_RETRIES = 15;

/** The QP types a connection can be for (RD is not served). */
export type CmQpType = typeof QpType.RC | typeof QpType.UC | typeof QpType.UD;

/**
 * What happens to an id, as the kernel's enum ib_cm_event_type names it. REQ_RECEIVED and SIDR_REQ_RECEIVED
 * go to the handler of the listening id, with the new id the request made; the rest to the id's own.
 */
export type IbCmEvent =
  | { type: 'REQ_RECEIVED'; listen: IbCmId; req: Req }
  | { type: 'SIDR_REQ_RECEIVED'; listen: IbCmId; req: SidrReq }
  | { type: 'REP_RECEIVED'; rep: Rep }
  | { type: 'RTU_RECEIVED'; privateData: Uint8Array }
  /** refused (the reason as the peer sent it), or, the id now in TIMEWAIT, a connection the peer no longer knows is over */
  | { type: 'REJ_RECEIVED'; reason: number; privateData: Uint8Array }
  | { type: 'MRA_RECEIVED' }
  /** without private data: a DREQ that crossed ours, which closed the connection both ways */
  | { type: 'DREQ_RECEIVED'; privateData?: Uint8Array }
  | { type: 'DREP_RECEIVED'; privateData: Uint8Array }
  | { type: 'TIMEWAIT_EXIT' }
  | { type: 'SIDR_REP_RECEIVED'; rep: SidrRep }
  /** the message had no answer after every retry */
  | { type: 'REQ_ERROR' | 'REP_ERROR' | 'DREQ_ERROR' | 'SIDR_REQ_ERROR' };
export type IbCmEventType = IbCmEvent['type'];

/** Why a request's consumer would not take it: a REJ reason for a REQ, a SIDR_REP status for a SIDR_REQ. */
export type IbCmRefusal = { reason: RejReason; why: string } | { status: SidrStatus; why: string };

/** An id's consumer. Only REQ_RECEIVED and SIDR_REQ_RECEIVED look at the answer: a refusal is sent to the peer. */
export type IbCmHandler = (id: IbCmId, ev: IbCmEvent) => IbCmRefusal | void;

/** Our side of one connection, request or listen (the kernel's cm_id_private). */
export class IbCmId {
  state: IbState = IbState.IDLE;
  qpType: CmQpType = QpType.RC;
  serviceId = 0n;
  /** the peer's GID, the path's traffic class and MTU */
  dgid: Uint8Array | null = null;
  trafficClass = 0;
  pathMtu = 0;
  localCommId = 0;
  remoteCommId = 0;
  remoteGuid = 0n;
  tid = 0n;
  localQpn = 0;
  remoteQpn = 0;
  /** the PSN our QP sends from (the peer's message named it) and the one it receives from (ours named it) */
  sqPsn = 0;
  rqPsn = 0;
  /** max_dest_rd_atomic and max_rd_atomic of our QP */
  respRes = 0;
  initDepth = 0;
  retryCount = 7;
  rnrRetry = 7;
  srq = 0;
  /** the peer's answer time (ms) and how often we resend to it */
  peerTimeoutMs = RETRY_MS;
  maxRetries = MAX_CM_RETRIES;
  retries = 0;
  timer: NodeJS.Timeout | null = null;
  /** the last MAD we sent that waits for an answer (resent on timeout), or that a duplicate request gets again */
  msg: Uint8Array | null = null;
  /** destroyed by its consumer, but still resending its DREQ until the peer answers */
  lingering = false;
  /** where the peer's retransmissions of the request that made this id find it */
  remoteKey = '';

  constructor(
    /** null: a listen on every device */
    readonly dev: SoftDevice | null,
    public handler: IbCmHandler | null,
  ) {}

  setPath(p: CmPath): void {
    this.dgid = p.dgid;
    this.trafficClass = p.trafficClass;
    this.pathMtu = p.mtu;
  }

  /** What the consumer's REQ parameters make of the requesting side. */
  takeReqParam(p: ReqParam): void {
    this.serviceId = p.serviceId;
    this.qpType = p.qpType;
    this.localQpn = p.qpn;
    // our QP gets at most what the device has; the REQ says what the consumer asked
    this.respRes = Math.min(p.responderResources, Limits.maxQpRdAtom);
    this.initDepth = Math.min(p.initiatorDepth, Limits.maxQpRdAtom);
    this.retryCount = p.retryCount & 7;
    this.rnrRetry = p.rnrRetryCount & 7;
    this.srq = p.srq ? 1 : 0;
    // a CM message's starting PSN is the one its sender will receive first (its QP's rq_psn): the peer sends from it
    this.rqPsn = p.startingPsn;
    this.setPath(p.path);
    this.peerTimeoutMs = timeoutMs(p.remoteCmResponseTimeout);
    this.maxRetries = p.maxCmRetries;
  }

  /** What a REQ makes of the side it asks (`src` its sender's GID, `mtu` our port's). */
  takeReq(m: Req, src: Uint8Array, mtu: number): void {
    this.serviceId = m.service_id;
    this.qpType = m.transport_service_type === 1 ? QpType.UC : QpType.RC;
    this.remoteCommId = m.local_comm_id;
    this.remoteGuid = m.local_ca_guid;
    this.remoteQpn = m.local_qpn;
    this.sqPsn = m.starting_psn;
    // from our side: we serve the reads it issues, and issue as many as it serves
    this.respRes = m.initiator_depth;
    this.initDepth = m.responder_resources;
    this.retryCount = m.retry_count;
    this.rnrRetry = m.rnr_retry_count;
    this.setPath({ dgid: src, trafficClass: 0, mtu: Math.min(m.path_mtu, mtu) });
    this.peerTimeoutMs = timeoutMs(m.remote_cm_response_timeout);
    this.maxRetries = m.max_cm_retries;
  }

  /** What the consumer's REP parameters make of the side that answers. */
  takeRepParam(p: RepParam): void {
    this.localQpn = p.qpn;
    this.rqPsn = p.startingPsn;
    // what we serve and issue, bounded by what the request offered
    this.respRes = Math.min(p.responderResources, this.respRes);
    this.initDepth = Math.min(p.initiatorDepth, this.initDepth);
    this.srq = p.srq ? 1 : 0;
  }

  /** What a REP makes of the requesting side. */
  takeRep(m: Rep): void {
    this.remoteCommId = m.local_comm_id;
    this.remoteGuid = m.local_ca_guid;
    this.remoteQpn = m.local_qpn;
    this.sqPsn = m.starting_psn;
    // the REP's resources are the peer's: it serves as many reads as we may issue, and issues as many as we serve
    this.initDepth = Math.min(this.initDepth, m.responder_resources);
    this.respRes = Math.min(this.respRes, m.initiator_depth);
    this.rnrRetry = m.rnr_retry_count;
  }
}

/** The path a REQ or SIDR_REQ takes (on RoCE, what rdma_cm's route resolution found); mtu is an enum ibv_mtu. */
export interface CmPath {
  dgid: Uint8Array;
  trafficClass: number;
  mtu: number;
}

/**
 * What a REQ says of the connection's QPs besides their numbers and PSNs (a REP all but the retry count):
 * ib_cm_req_param's fields that rdma_cm's conn parameters (rdma_conn_param, rdma_ucm_conn_param) carry too.
 */
export interface CmQpParam {
  responderResources: number;
  initiatorDepth: number;
  flowControl: number;
  retryCount: number;
  rnrRetryCount: number;
  srq: number;
}

/** ib_send_cm_req's parameters; the timeouts are IBA's 4.096 µs × 2^t. */
export interface ReqParam extends CmQpParam {
  serviceId: bigint;
  qpn: number;
  qpType: typeof QpType.RC | typeof QpType.UC;
  startingPsn: number;
  path: CmPath;
  remoteCmResponseTimeout: number;
  localCmResponseTimeout: number;
  maxCmRetries: number;
  privateData: Uint8Array;
}

/** ib_send_cm_rep's parameters. */
export interface RepParam extends Omit<CmQpParam, 'retryCount'> {
  qpn: number;
  startingPsn: number;
  privateData: Uint8Array;
}

/** ib_send_cm_sidr_req's parameters. */
export interface SidrReqParam {
  serviceId: bigint;
  path: CmPath;
  timeoutMs: number;
  maxCmRetries: number;
  privateData: Uint8Array;
}

/** ib_send_cm_sidr_rep's parameters: a refusal carries no QP and no Q_Key. */
export interface SidrRepParam {
  status: SidrStatus;
  qpn: number;
  qkey: number;
  privateData: Uint8Array;
}
