/**
 * Enum values of rdma-core's `<infiniband/verbs.h>`, numerically identical,
 * shared by the library, the daemon and the tools. Each enum is a value
 * (`WcStatus.SUCCESS`) and a type of the same name (`WcStatus`: the union
 * of its values); each set of flags is a value and a `number` type that
 * names it.
 */

/** enum ibv_qp_state */
export const QpState = { RESET: 0, INIT: 1, RTR: 2, RTS: 3, SQD: 4, SQE: 5, ERR: 6, UNKNOWN: 7 } as const;
export type QpState = (typeof QpState)[keyof typeof QpState];
const QP_STATE_NAMES = new Map<number, string>(Object.entries(QpState).map(([k, v]) => [v, k]));
/** IBV_QPS_* name of a QP state, for messages. */
export function qpStateName(s: number): string {
  return QP_STATE_NAMES.get(s) ?? String(s);
}
/** enum ibv_qp_type */
export const QpType = { RC: 2, UC: 3, UD: 4, RAW_PACKET: 8, XRC_SEND: 9, XRC_RECV: 10, DRIVER: 0xff } as const;
export type QpType = (typeof QpType)[keyof typeof QpType];
/** enum ibv_wr_opcode */
export const WrOpcode = {
  RDMA_WRITE: 0, RDMA_WRITE_WITH_IMM: 1, SEND: 2, SEND_WITH_IMM: 3, RDMA_READ: 4, ATOMIC_CMP_AND_SWP: 5, ATOMIC_FETCH_AND_ADD: 6,
  LOCAL_INV: 7, BIND_MW: 8, SEND_WITH_INV: 9, TSO: 10, DRIVER1: 11, ATOMIC_WRITE: 15,
} as const;
export type WrOpcode = (typeof WrOpcode)[keyof typeof WrOpcode];
/** enum ibv_wc_opcode */
export const WcOpcode = {
  SEND: 0, RDMA_WRITE: 1, RDMA_READ: 2, COMP_SWAP: 3, FETCH_ADD: 4, BIND_MW: 5, LOCAL_INV: 6, TSO: 7, ATOMIC_WRITE: 9, RECV: 128, RECV_RDMA_WITH_IMM: 129,
} as const;
export type WcOpcode = (typeof WcOpcode)[keyof typeof WcOpcode];
/** enum ibv_wc_status */
export const WcStatus = {
  SUCCESS: 0, LOC_LEN_ERR: 1, LOC_QP_OP_ERR: 2, LOC_EEC_OP_ERR: 3, LOC_PROT_ERR: 4, WR_FLUSH_ERR: 5, MW_BIND_ERR: 6, BAD_RESP_ERR: 7,
  LOC_ACCESS_ERR: 8, REM_INV_REQ_ERR: 9, REM_ACCESS_ERR: 10, REM_OP_ERR: 11, RETRY_EXC_ERR: 12, RNR_RETRY_EXC_ERR: 13,
  LOC_RDD_VIOL_ERR: 14, REM_INV_RD_REQ_ERR: 15, REM_ABORT_ERR: 16, INV_EECN_ERR: 17, INV_EEC_STATE_ERR: 18, FATAL_ERR: 19,
  RESP_TIMEOUT_ERR: 20, GENERAL_ERR: 21, TM_ERR: 22, TM_RNDV_INCOMPLETE: 23,
} as const;
export type WcStatus = (typeof WcStatus)[keyof typeof WcStatus];
const WC_STATUS_NAMES = new Map<number, string>(Object.entries(WcStatus).map(([k, v]) => [v, k]));
/** IBV_WC_* name of a completion status, for messages (ibv_wc_status_str's text is WC_STATUS_STR's). */
export function wcStatusName(s: number): string {
  return WC_STATUS_NAMES.get(s) ?? String(s);
}
/** enum ibv_wc_flags */
export const WcFlags = { GRH: 1, WITH_IMM: 2, IP_CSUM_OK: 4, WITH_INV: 8, TM_SYNC_REQ: 16, TM_MATCH: 32, TM_DATA_VALID: 64 } as const;
/** A combination of WcFlags bits. */
export type WcFlags = number;
/** enum ibv_create_cq_wc_flags: what an extended CQ's completions carry besides wr_id, status, opcode, vendor_err and wc_flags */
export const WcExFlags = {
  BYTE_LEN: 1 << 0, IMM: 1 << 1, QP_NUM: 1 << 2, SRC_QP: 1 << 3, SLID: 1 << 4, SL: 1 << 5, DLID_PATH_BITS: 1 << 6,
  COMPLETION_TIMESTAMP: 1 << 7, CVLAN: 1 << 8, FLOW_TAG: 1 << 9, TM_INFO: 1 << 10, COMPLETION_TIMESTAMP_WALLCLOCK: 1 << 11,
} as const;
/** A combination of WcExFlags bits. */
export type WcExFlags = number;
/** IBV_WC_STANDARD_FLAGS: every field an ibv_wc has; what librxe's extended CQ offers (RXE_SUP_WC_FLAGS), timestamps, VLANs and tags not */
export const WC_STANDARD_FLAGS = 0x7f;
/** enum ibv_create_cq_attr_flags */
export const CreateCqAttrFlags = { SINGLE_THREADED: 1 << 0, IGNORE_OVERRUN: 1 << 1 } as const;
/** enum ibv_qp_create_send_ops_flags: which ibv_wr_* builders an extended QP has */
export const QpExSendOps = {
  RDMA_WRITE: 1 << 0, RDMA_WRITE_WITH_IMM: 1 << 1, SEND: 1 << 2, SEND_WITH_IMM: 1 << 3, RDMA_READ: 1 << 4, ATOMIC_CMP_AND_SWP: 1 << 5,
  ATOMIC_FETCH_AND_ADD: 1 << 6, LOCAL_INV: 1 << 7, BIND_MW: 1 << 8, SEND_WITH_INV: 1 << 9, TSO: 1 << 10, ATOMIC_WRITE: 1 << 12,
} as const;
/** A combination of QpExSendOps bits. */
export type QpExSendOps = number;
/** enum ibv_qp_create_flags */
export const QpCreateFlags = { BLOCK_SELF_MCAST_LB: 1 << 1, SCATTER_FCS: 1 << 8, CVLAN_STRIPPING: 1 << 9, SOURCE_QPN: 1 << 10, PCI_WRITE_END_PADDING: 1 << 11 } as const;
/** enum ibv_send_flags */
export const SendFlags = { FENCE: 1, SIGNALED: 2, SOLICITED: 4, INLINE: 8, IP_CSUM: 16 } as const;
/** A combination of SendFlags bits. */
export type SendFlags = number;
/** enum ibv_mw_type */
export const MwType = { TYPE_1: 1, TYPE_2: 2 } as const;
export type MwType = (typeof MwType)[keyof typeof MwType];
/** enum ibv_access_flags */
export const Access = {
  LOCAL_WRITE: 1, REMOTE_WRITE: 2, REMOTE_READ: 4, REMOTE_ATOMIC: 8, MW_BIND: 16, ZERO_BASED: 32, ON_DEMAND: 64, HUGETLB: 128,
  RELAXED_ORDERING: 1 << 20,
} as const;
/** A combination of Access bits. */
export type Access = number;
/** enum ibv_qp_attr_mask */
export const QpAttrMask = {
  STATE: 1 << 0, CUR_STATE: 1 << 1, EN_SQD_ASYNC_NOTIFY: 1 << 2, ACCESS_FLAGS: 1 << 3, PKEY_INDEX: 1 << 4, PORT: 1 << 5, QKEY: 1 << 6,
  AV: 1 << 7, PATH_MTU: 1 << 8, TIMEOUT: 1 << 9, RETRY_CNT: 1 << 10, RNR_RETRY: 1 << 11, RQ_PSN: 1 << 12, MAX_QP_RD_ATOMIC: 1 << 13,
  ALT_PATH: 1 << 14, MIN_RNR_TIMER: 1 << 15, SQ_PSN: 1 << 16, MAX_DEST_RD_ATOMIC: 1 << 17, PATH_MIG_STATE: 1 << 18, CAP: 1 << 19,
  DEST_QPN: 1 << 20, RATE_LIMIT: 1 << 25,
} as const;
/** A combination of QpAttrMask bits. */
export type QpAttrMask = number;
/** The ibv_qp_attr field each QpAttrMask bit names (as the library's QpAttr spells it). */
const MASK_ATTR: ReadonlyArray<readonly [string, number, string]> = Object.entries(QpAttrMask).map(([name, bit]) => [name, bit, ({
  STATE: 'qpState', CUR_STATE: 'curQpState', EN_SQD_ASYNC_NOTIFY: 'enSqdAsyncNotify', ACCESS_FLAGS: 'qpAccessFlags', PKEY_INDEX: 'pkeyIndex',
  PORT: 'portNum', QKEY: 'qkey', AV: 'ahAttr', PATH_MTU: 'pathMtu', TIMEOUT: 'timeout', RETRY_CNT: 'retryCnt', RNR_RETRY: 'rnrRetry',
  RQ_PSN: 'rqPsn', MAX_QP_RD_ATOMIC: 'maxRdAtomic', ALT_PATH: 'altPath', MIN_RNR_TIMER: 'minRnrTimer', SQ_PSN: 'sqPsn',
  MAX_DEST_RD_ATOMIC: 'maxDestRdAtomic', PATH_MIG_STATE: 'pathMigState', CAP: 'cap', DEST_QPN: 'destQpNum', RATE_LIMIT: 'rateLimit',
} as Record<string, string>)[name] ?? name] as const);

/** "AV (ahAttr), PATH_MTU (pathMtu)": the QpAttrMask bits set in `bits`, with the attribute each names. */
export function qpAttrMaskNames(bits: number): string {
  const out: string[] = [];
  for (const [name, bit, attr] of MASK_ATTR) if (bits & bit) out.push(`${name} (${attr})`);
  return out.join(', ');
}

/** enum ibv_mtu */
export const Mtu = { MTU_256: 1, MTU_512: 2, MTU_1024: 3, MTU_2048: 4, MTU_4096: 5 } as const;
export type Mtu = (typeof Mtu)[keyof typeof Mtu];
/** enum ibv_event_type */
export const EventType = {
  CQ_ERR: 0, QP_FATAL: 1, QP_REQ_ERR: 2, QP_ACCESS_ERR: 3, COMM_EST: 4, SQ_DRAINED: 5, PATH_MIG: 6, PATH_MIG_ERR: 7, DEVICE_FATAL: 8,
  PORT_ACTIVE: 9, PORT_ERR: 10, LID_CHANGE: 11, PKEY_CHANGE: 12, SM_CHANGE: 13, SRQ_ERR: 14, SRQ_LIMIT_REACHED: 15,
  QP_LAST_WQE_REACHED: 16, CLIENT_REREGISTER: 17, GID_CHANGE: 18, WQ_FATAL: 19,
} as const;
export type EventType = (typeof EventType)[keyof typeof EventType];
/** enum ibv_srq_attr_mask */
export const SrqAttrMask = { MAX_WR: 1, LIMIT: 2 } as const;
/** A combination of SrqAttrMask bits. */
export type SrqAttrMask = number;
/** enum ibv_port_state */
export const PortState = { NOP: 0, DOWN: 1, INIT: 2, ARMED: 3, ACTIVE: 4, ACTIVE_DEFER: 5 } as const;
export type PortState = (typeof PortState)[keyof typeof PortState];
/** enum ibv_atomic_cap */
export const AtomicCap = { NONE: 0, HCA: 1, GLOB: 2 } as const;
export type AtomicCap = (typeof AtomicCap)[keyof typeof AtomicCap];
/** IBV_LINK_LAYER_* */
export const LinkLayer = { UNSPECIFIED: 0, INFINIBAND: 1, ETHERNET: 2 } as const;
export type LinkLayer = (typeof LinkLayer)[keyof typeof LinkLayer];
/** enum ibv_node_type */
export const NodeType = { UNKNOWN: -1, CA: 1, SWITCH: 2, ROUTER: 3, RNIC: 4, USNIC: 5, USNIC_UDP: 6, UNSPECIFIED: 7 } as const;
export type NodeType = (typeof NodeType)[keyof typeof NodeType];
/** enum ibv_rereg_mr_flags */
export const ReregMrFlags = { CHANGE_TRANSLATION: 1, CHANGE_PD: 2, CHANGE_ACCESS: 4 } as const;
/** A combination of ReregMrFlags bits. */
export type ReregMrFlags = number;
/** enum ibv_mig_state */
export const MigState = { MIGRATED: 0, REARM: 1, ARMED: 2 } as const;
export type MigState = (typeof MigState)[keyof typeof MigState];

/** The ibv_mtu value of a byte count (256 … 4096), or undefined for any other number. */
export function mtuOfBytes(bytes: number): Mtu | undefined {
  const i = [256, 512, 1024, 2048, 4096].indexOf(bytes);
  return i < 0 ? undefined : ((i + 1) as Mtu);
}

/** Is n a state a QP can be in or be moved to (RESET to ERR)? */
export function isQpState(n: number): n is QpState {
  return Number.isInteger(n) && n >= QpState.RESET && n <= QpState.ERR;
}

/** Is n an ibv_mtu value? */
export function isMtu(n: number): n is Mtu {
  return Number.isInteger(n) && n >= 1 && n <= 5;
}

/** Bytes of an ibv_mtu value (0 for an invalid one). */
export function mtuBytes(mtu: number): number {
  return mtu >= 1 && mtu <= 5 ? 128 << mtu : 0;
}

/** ibv_wc_status_str() strings, as rdma-core prints them. */
export const WC_STATUS_STR: readonly string[] = [
  'success', 'local length error', 'local QP operation error', 'local EE context operation error', 'local protection error',
  'Work Request Flushed Error', 'memory management operation error', 'bad response error', 'local access error',
  'remote invalid request error', 'remote access error', 'remote operation error', 'transport retry counter exceeded',
  'RNR retry counter exceeded', 'local RDD violation error', 'remote invalid RD request', 'aborted error',
  'invalid EE context number', 'invalid EE context state', 'fatal error', 'response timeout error', 'general error',
  'TM error', 'TM software rendezvous',
];
