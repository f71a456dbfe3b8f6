/**
 * The CM messages our side sends, filled in from a connection's id and the
 * consumer's parameters (the kernel's cm_format_req, cm_format_rep, …): what
 * each field says is decided here, the bits are mad.ts's.
 */
import { QpType } from '../abi/enums.js';
import type { SoftDevice } from '../hca/device.js';
import type { IbCmId, RepParam, ReqParam, SidrRepParam, SidrReqParam } from './ib-cm-id.js';
import { CmAttr, DREP, DREQ, encodeMad, MRA, MsgRef, REJ, RejReason, REP, REQ, RTU, SIDR_REP, SIDR_REQ, SidrStatus, type FieldsIn } from './mad.js';

/** What a RoCEv2 path has, whoever named it (Linux's rdma_cm sets the same): hop limit 64 and an ACK timeout of 4.096 µs × 2^19 ≈ 2.1 s. */
export const HOP_LIMIT = 64;
export const LOCAL_ACK_TIMEOUT = 19;
/** The service timeout an MRA asks for (2^20 × 4.096 µs ≈ 4.3 s), as the kernel's CMA_CM_MRA_SETTING. */
export const MRA_SERVICE_TIMEOUT = 20;
/** The REP's Target ACK Delay: how long our HCA may take to ACK (4.096 µs × 2^15). */
const TARGET_ACK_DELAY = 15;

/** The REQ of `id` (its communication ID, PSN, resources and retry counts already set from `p`). */
export function formatReq(id: IbCmId, dev: SoftDevice, p: ReqParam): Uint8Array {
  return encodeMad(CmAttr.REQ, id.tid, REQ, {
    local_comm_id: id.localCommId, service_id: p.serviceId, local_ca_guid: dev.nodeGuid, local_qpn: p.qpn,
    responder_resources: p.responderResources, initiator_depth: p.initiatorDepth, remote_cm_response_timeout: p.remoteCmResponseTimeout,
    transport_service_type: p.qpType === QpType.UC ? 1 : 0, end_to_end_flow_control: p.flowControl ? 1 : 0, starting_psn: id.rqPsn,
    local_cm_response_timeout: p.localCmResponseTimeout, retry_count: id.retryCount, pkey: 0xffff, path_mtu: id.pathMtu,
    rnr_retry_count: id.rnrRetry, max_cm_retries: p.maxCmRetries, srq: id.srq,
    primary_local_lid: 0xffff, primary_remote_lid: 0xffff, primary_local_gid: dev.gids[0]!, primary_remote_gid: p.path.dgid,
    primary_traffic_class: p.path.trafficClass, primary_hop_limit: HOP_LIMIT, primary_local_ack_timeout: LOCAL_ACK_TIMEOUT,
    private_data: p.privateData,
  });
}

/** The REP of `id`, its resources already bounded by the REQ's. */
export function formatRep(id: IbCmId, dev: SoftDevice, p: RepParam): Uint8Array {
  return encodeMad(CmAttr.REP, id.tid, REP, {
    local_comm_id: id.localCommId, remote_comm_id: id.remoteCommId, local_qpn: p.qpn, starting_psn: id.rqPsn,
    responder_resources: id.respRes, initiator_depth: id.initDepth, target_ack_delay: TARGET_ACK_DELAY,
    end_to_end_flow_control: p.flowControl ? 1 : 0, rnr_retry_count: p.rnrRetryCount & 7, srq: id.srq, local_ca_guid: dev.nodeGuid,
    private_data: p.privateData,
  });
}

/** An MRA for the REQ of `id`: the consumer is still deciding. */
export function formatMra(id: IbCmId): Uint8Array {
  return encodeMad(CmAttr.MRA, id.tid, MRA, { local_comm_id: id.localCommId, remote_comm_id: id.remoteCommId, message_mraed: MsgRef.REQ, service_timeout: MRA_SERVICE_TIMEOUT });
}

/** A REJ; its ARI (additional rejection information), when given, is counted in reject_info_length. */
export function formatRej(tid: bigint, local: number, remote: number, reason: RejReason, msg: MsgRef, privateData: Uint8Array, ari?: Uint8Array): Uint8Array {
  const f: FieldsIn<typeof REJ> = { local_comm_id: local, remote_comm_id: remote, message_rejected: msg, reason, private_data: privateData };
  if (ari) {
    f.ari = ari;
    f.reject_info_length = ari.length;
  }
  return encodeMad(CmAttr.REJ, tid, REJ, f);
}

/** The REJ of a requester that gave up waiting: reason timeout, our CA GUID as its ARI (as ib_cm sends it). */
export function formatTimeoutRej(id: IbCmId, guid: bigint): Uint8Array {
  const ari = new Uint8Array(8);
  new DataView(ari.buffer).setBigUint64(0, guid);
  return formatRej(id.tid, id.localCommId, id.remoteCommId, RejReason.TIMEOUT, MsgRef.OTHER, new Uint8Array(0), ari);
}

export function formatRtu(id: IbCmId): Uint8Array {
  return encodeMad(CmAttr.RTU, id.tid, RTU, { local_comm_id: id.localCommId, remote_comm_id: id.remoteCommId });
}

export function formatDreq(id: IbCmId): Uint8Array {
  return encodeMad(CmAttr.DREQ, id.tid, DREQ, { local_comm_id: id.localCommId, remote_comm_id: id.remoteCommId, remote_qpn_eecn: id.remoteQpn });
}

/** A DREP: `local` and `remote` as our side names the connection. */
export function formatDrep(tid: bigint, local: number, remote: number): Uint8Array {
  return encodeMad(CmAttr.DREP, tid, DREP, { local_comm_id: local, remote_comm_id: remote });
}

export function formatSidrReq(id: IbCmId, p: SidrReqParam): Uint8Array {
  return encodeMad(CmAttr.SIDR_REQ, id.tid, SIDR_REQ, { request_id: id.localCommId, pkey: 0xffff, service_id: p.serviceId, private_data: p.privateData });
}

/** A SIDR_REP to request `requestId`; a refusal's QPN and Q_Key are 0 whatever `p` says. */
export function formatSidrRep(tid: bigint, requestId: number, serviceId: bigint, p: SidrRepParam): Uint8Array {
  const ok = p.status === SidrStatus.SUCCESS;
  return encodeMad(CmAttr.SIDR_REP, tid, SIDR_REP, {
    request_id: requestId, status: p.status, qpn: ok ? p.qpn : 0, service_id: serviceId, qkey: ok ? p.qkey : 0, private_data: p.privateData,
  });
}
