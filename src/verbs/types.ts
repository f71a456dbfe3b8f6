/**
 * The plain data of the verbs API (the structs of `<infiniband/verbs.h>`
 * that are filled in by the caller or returned as values), camelCase.
 */
import type { Access, EventType, MigState, Mtu, QpAttrMask, QpState, QpType, SendFlags, WcFlags, WcOpcode, WcStatus, WrOpcode } from '../abi/enums.js';
import { WcFlags as WcFlagBits } from '../abi/enums.js';
import type { QpCaps } from '../abi/queue.js';
import type { MemoryWindow, MwBindInfo } from './mw.js';
import type { AddressHandle } from './ah.js';
import type { CompletionQueue } from './cq.js';
import type { QueuePair } from './qp.js';
import type { SharedReceiveQueue } from './srq.js';

export type { QpCaps };

/** A device found in the discovery tree (struct ibv_device). */
export interface Device {
  /** ibdev name, e.g. "rxe0" */
  readonly name: string;
  /** kernel name of its device file, e.g. "uverbs0" */
  readonly devName: string;
  /** path of the device file */
  readonly devPath: string;
  /** node GUID as the sysfs string "xxxx:xxxx:xxxx:xxxx" */
  readonly nodeGuid: string;
  readonly root: string;
  /** the pid of the softverbsd serving it */
  readonly daemonPid: number;
}

/** ibv_device_attr (the fields rdma-core prints, camelCase) */
export interface DeviceAttr {
  fwVer: string; nodeGuid: bigint; sysImageGuid: bigint; maxMrSize: bigint; pageSizeCap: bigint; vendorId: number; vendorPartId: number;
  hwVer: number; maxQp: number; maxQpWr: number; deviceCapFlags: number; maxSge: number; maxSgeRd: number; maxCq: number; maxCqe: number;
  maxMr: number; maxPd: number; maxQpRdAtom: number; maxEeRdAtom: number; maxResRdAtom: number; maxQpInitRdAtom: number;
  maxEeInitRdAtom: number; atomicCap: number; maxEe: number; maxRdd: number; maxMw: number; maxRawIpv6Qp: number; maxRawEthyQp: number;
  maxMcastGrp: number; maxMcastQpAttach: number; maxTotalMcastQpAttach: number; maxAh: number; maxFmr: number; maxMapPerFmr: number;
  maxSrq: number; maxSrqWr: number; maxSrqSge: number; maxPkeys: number; localCaAckDelay: number; physPortCnt: number;
}

/** ibv_device_attr_ex: the legacy attributes and what EX_QUERY_DEVICE adds (softverbs has no ODP, RSS, WQs, TSO, tag matching or clock: those are 0, as on Linux rxe) */
export interface DeviceAttrEx extends DeviceAttr {
  /** the full capability word: device_cap_flags, and bits past 32 (IB_UVERBS_DEVICE_ATOMIC_WRITE, bit 40) */
  deviceCapFlagsEx: bigint;
  completionTimestampMask: bigint;
  hcaCoreClock: bigint;
  maxWqTypeRq: number;
  rawPacketCaps: number;
  maxDmSize: bigint;
}

/** ibv_port_attr */
export interface PortAttr {
  state: number; maxMtu: Mtu; activeMtu: Mtu; gidTblLen: number; portCapFlags: number; maxMsgSz: number; badPkeyCntr: number;
  qkeyViolCntr: number; pkeyTblLen: number; lid: number; smLid: number; lmc: number; maxVlNum: number; smSl: number; subnetTimeout: number;
  initTypeReply: number; activeWidth: number; activeSpeed: number; physState: number; linkLayer: number;
}

/** An SGE (struct ibv_sge): addr is in the MR's IOVA space (mr.addr + offset). */
export interface Sge { addr: bigint | number; length: number; lkey: number }

/** A send work request (struct ibv_send_wr). `imm` is the 32-bit value (what ntohl(imm_data) gives in C). */
export interface SendWr {
  wrId?: bigint | number;
  opcode: WrOpcode;
  sendFlags?: SendFlags;
  sgList?: Sge[];
  imm?: number;
  rdma?: { remoteAddr: bigint | number; rkey: number };
  atomic?: { remoteAddr: bigint | number; compareAdd: bigint | number; swap?: bigint | number; rkey: number };
  /** ATOMIC_WRITE (RC): 8 bytes, or a u64 stored little-endian, written at remoteAddr (8-aligned, REMOTE_WRITE) as one */
  atomicWrite?: { remoteAddr: bigint | number; rkey: number; value: bigint | Uint8Array };
  ud?: { ah: AddressHandle; remoteQpn: number; remoteQkey: number };
  /** LOCAL_INV, SEND_WITH_INV: the rkey to invalidate (a type 2 window's; the peer's for SEND_WITH_INV) */
  invalidateRkey?: number;
  /** BIND_MW (a type 2 window): the rkey it is to have (`incRkey(mw.rkey)`, or any other key byte) and what it covers */
  bindMw?: { mw: MemoryWindow; rkey: number; bindInfo: MwBindInfo };
}

/** A receive work request (struct ibv_recv_wr). */
export interface RecvWr { wrId?: bigint | number; sgList?: Sge[] }

/** A work completion (struct ibv_wc). */
export class WorkCompletion {
  wrId = 0n;
  status: WcStatus = 0;
  opcode: WcOpcode = 0;
  vendorErr = 0;
  byteLen = 0;
  imm = 0;
  qpNum = 0;
  srcQp = 0;
  wcFlags: WcFlags = 0;
  pkeyIndex = 0;
  /** With WcFlags.WITH_INV: the rkey the received SEND_WITH_INV invalidated (ibv_wc's invalidated_rkey, imm_data's union mate). */
  get invalidatedRkey(): number {
    return this.wcFlags & WcFlagBits.WITH_INV ? this.imm : 0;
  }
  slid = 0;
  sl = 0;
  dlidPathBits = 0;
}

/** ibv_global_route */
export interface GlobalRoute { dgid: Uint8Array; flowLabel?: number; sgidIndex?: number; hopLimit?: number; trafficClass?: number }
/** ibv_ah_attr. RoCE always needs the GRH (`grh.dgid` is the peer's GID; `isGlobal` defaults to true). */
export interface AhAttr { grh: GlobalRoute; isGlobal?: boolean; dlid?: number; sl?: number; srcPathBits?: number; staticRate?: number; portNum?: number }

/** ibv_qp_attr (the fields modify/query use) */
export interface QpAttr {
  qpState?: QpState; curQpState?: QpState;
  /** an ibv_mtu value (Mtu.MTU_1024 …), not a byte count */
  pathMtu?: Mtu;
  pathMigState?: MigState; qkey?: number; rqPsn?: number; sqPsn?: number;
  destQpNum?: number; qpAccessFlags?: Access; cap?: QpCaps; ahAttr?: AhAttr; pkeyIndex?: number; enSqdAsyncNotify?: number;
  sqDraining?: number; maxRdAtomic?: number; maxDestRdAtomic?: number; minRnrTimer?: number; portNum?: number;
  /** local ACK timeout: 4.096 µs × 2^timeout (0: wait for ever) */
  timeout?: number;
  /** transport retries, 0..7 */
  retryCnt?: number;
  /** RNR retries, 0..7; 7 means retry for ever (IBA 9.7.5.2.8) */
  rnrRetry?: number;
}
export type { QpAttrMask };

/** ibv_qp_init_attr */
export interface QpInitAttr {
  sendCq: CompletionQueue;
  recvCq: CompletionQueue;
  srq?: SharedReceiveQueue | null;
  cap: Partial<QpCaps>;
  qpType: QpType;
  sqSigAll?: boolean;
  /**
   * ibv_qp_init_attr_ex.send_ops_flags (QpExSendOps): the QP gets `qp.wr`, the ibv_wr_* builders for these
   * operations. As librxe: each QP type takes the ones rxe does (others: EOPNOTSUPP).
   */
  sendOpsFlags?: number;
  /** ibv_qp_init_attr_ex.create_flags (QpCreateFlags): given, the QP is made with EX_CREATE_QP; rxe takes none (EOPNOTSUPP) */
  createFlags?: number;
  /** with QpCreateFlags.SOURCE_QPN */
  sourceQpn?: number;
}

/** ibv_srq_init_attr's attr */
export interface SrqAttr { maxWr: number; maxSge: number; srqLimit?: number }

/** An async event (struct ibv_async_event). */
export interface AsyncEvent {
  eventType: EventType;
  /** the QP, CQ or SRQ it is about, or the port number */
  element: QueuePair | CompletionQueue | SharedReceiveQueue | number | null;
}
