/**
 * The uverbs command ABI: command numbers and struct layouts of Linux
 * `include/uapi/rdma/ib_user_verbs.h` (ABI version 6), in header field order,
 * plus the softverbs provider's udata (what rdma-core's rxe provider keeps in
 * `rxe-abi.h`) and the framing rules of DESIGN §3.
 */
import type { StructDef, Values } from './layout.js';
import { encode, layout } from './layout.js';

export const ABI_VERSION = 6;

/** IB_USER_VERBS_CMD_* — the enum in header order. */
export const Cmd = {
  GET_CONTEXT: 0,
  QUERY_DEVICE: 1,
  QUERY_PORT: 2,
  ALLOC_PD: 3,
  DEALLOC_PD: 4,
  CREATE_AH: 5,
  MODIFY_AH: 6,
  QUERY_AH: 7,
  DESTROY_AH: 8,
  REG_MR: 9,
  REG_SMR: 10,
  REREG_MR: 11,
  QUERY_MR: 12,
  DEREG_MR: 13,
  ALLOC_MW: 14,
  BIND_MW: 15,
  DEALLOC_MW: 16,
  CREATE_COMP_CHANNEL: 17,
  CREATE_CQ: 18,
  RESIZE_CQ: 19,
  DESTROY_CQ: 20,
  POLL_CQ: 21,
  PEEK_CQ: 22,
  REQ_NOTIFY_CQ: 23,
  CREATE_QP: 24,
  QUERY_QP: 25,
  MODIFY_QP: 26,
  DESTROY_QP: 27,
  POST_SEND: 28,
  POST_RECV: 29,
  ATTACH_MCAST: 30,
  DETACH_MCAST: 31,
  CREATE_SRQ: 32,
  MODIFY_SRQ: 33,
  QUERY_SRQ: 34,
  DESTROY_SRQ: 35,
  POST_SRQ_RECV: 36,
} as const;

/**
 * softverbs' own frames. They are only valid as the first frame of a new
 * connection to a device file and turn it into an event stream (the async fd
 * or a completion channel fd of Linux) or a management connection (what
 * netlink is to `rdma`). Chosen above the kernel's range so no uverbs
 * command can be mistaken for one.
 */
export const SvCmd = {
  ATTACH_ASYNC: 0xf0,
  ATTACH_COMP_CHANNEL: 0xf1,
  MGMT: 0xf2,
} as const;

export const CMD_HDR: StructDef = { name: 'ib_uverbs_cmd_hdr', fields: [['command', 'u32'], ['in_words', 'u16'], ['out_words', 'u16']] };

/** The reply frame header (DESIGN §3): status is 0 or -errno. */
export const REPLY_HDR: StructDef = { name: 'sv_reply_hdr', fields: [['status', 's32'], ['out_bytes', 'u32']] };

export const ASYNC_EVENT_DESC: StructDef = { name: 'ib_uverbs_async_event_desc', fields: [['element', 'u64'], ['event_type', 'u32'], ['reserved', 'u32']] };
export const COMP_EVENT_DESC: StructDef = { name: 'ib_uverbs_comp_event_desc', fields: [['cq_handle', 'u64']] };

const resp: [string, 'u64'] = ['response', 'u64'];

export const GET_CONTEXT: StructDef = { name: 'ib_uverbs_get_context', fields: [resp] };
export const GET_CONTEXT_RESP: StructDef = { name: 'ib_uverbs_get_context_resp', fields: [['async_fd', 'u32'], ['num_comp_vectors', 'u32']] };

export const QUERY_DEVICE: StructDef = { name: 'ib_uverbs_query_device', fields: [resp] };
export const QUERY_DEVICE_RESP: StructDef = {
  name: 'ib_uverbs_query_device_resp',
  fields: [
    ['fw_ver', 'u64'], ['node_guid', 'u64'], ['sys_image_guid', 'u64'], ['max_mr_size', 'u64'], ['page_size_cap', 'u64'],
    ['vendor_id', 'u32'], ['vendor_part_id', 'u32'], ['hw_ver', 'u32'], ['max_qp', 'u32'], ['max_qp_wr', 'u32'],
    ['device_cap_flags', 'u32'], ['max_sge', 'u32'], ['max_sge_rd', 'u32'], ['max_cq', 'u32'], ['max_cqe', 'u32'],
    ['max_mr', 'u32'], ['max_pd', 'u32'], ['max_qp_rd_atom', 'u32'], ['max_ee_rd_atom', 'u32'], ['max_res_rd_atom', 'u32'],
    ['max_qp_init_rd_atom', 'u32'], ['max_ee_init_rd_atom', 'u32'], ['atomic_cap', 'u32'], ['max_ee', 'u32'], ['max_rdd', 'u32'],
    ['max_mw', 'u32'], ['max_raw_ipv6_qp', 'u32'], ['max_raw_ethy_qp', 'u32'], ['max_mcast_grp', 'u32'], ['max_mcast_qp_attach', 'u32'],
    ['max_total_mcast_qp_attach', 'u32'], ['max_ah', 'u32'], ['max_fmr', 'u32'], ['max_map_per_fmr', 'u32'], ['max_srq', 'u32'],
    ['max_srq_wr', 'u32'], ['max_srq_sge', 'u32'], ['max_pkeys', 'u16'], ['local_ca_ack_delay', 'u8'], ['phys_port_cnt', 'u8'],
    ['reserved', { bytes: 4 }],
  ],
};

export const QUERY_PORT: StructDef = { name: 'ib_uverbs_query_port', fields: [resp, ['port_num', 'u8'], ['reserved', { bytes: 7 }]] };
export const QUERY_PORT_RESP: StructDef = {
  name: 'ib_uverbs_query_port_resp',
  fields: [
    ['port_cap_flags', 'u32'], ['max_msg_sz', 'u32'], ['bad_pkey_cntr', 'u32'], ['qkey_viol_cntr', 'u32'], ['gid_tbl_len', 'u32'],
    ['pkey_tbl_len', 'u16'], ['lid', 'u16'], ['sm_lid', 'u16'], ['state', 'u8'], ['max_mtu', 'u8'], ['active_mtu', 'u8'], ['lmc', 'u8'],
    ['max_vl_num', 'u8'], ['sm_sl', 'u8'], ['subnet_timeout', 'u8'], ['init_type_reply', 'u8'], ['active_width', 'u8'],
    ['active_speed', 'u8'], ['phys_state', 'u8'], ['link_layer', 'u8'], ['reserved', { bytes: 2 }],
  ],
};

export const ALLOC_PD: StructDef = { name: 'ib_uverbs_alloc_pd', fields: [resp] };
export const ALLOC_PD_RESP: StructDef = { name: 'ib_uverbs_alloc_pd_resp', fields: [['pd_handle', 'u32']] };
export const DEALLOC_PD: StructDef = { name: 'ib_uverbs_dealloc_pd', fields: [['pd_handle', 'u32']] };

export const REG_MR: StructDef = {
  name: 'ib_uverbs_reg_mr',
  fields: [resp, ['start', 'u64'], ['length', 'u64'], ['hca_va', 'u64'], ['pd_handle', 'u32'], ['access_flags', 'u32']],
};
export const REG_MR_RESP: StructDef = { name: 'ib_uverbs_reg_mr_resp', fields: [['mr_handle', 'u32'], ['lkey', 'u32'], ['rkey', 'u32']] };
export const REREG_MR: StructDef = {
  name: 'ib_uverbs_rereg_mr',
  fields: [resp, ['mr_handle', 'u32'], ['flags', 'u32'], ['start', 'u64'], ['length', 'u64'], ['hca_va', 'u64'], ['pd_handle', 'u32'], ['access_flags', 'u32']],
};
export const REREG_MR_RESP: StructDef = { name: 'ib_uverbs_rereg_mr_resp', fields: [['lkey', 'u32'], ['rkey', 'u32']] };
export const DEREG_MR: StructDef = { name: 'ib_uverbs_dereg_mr', fields: [['mr_handle', 'u32']] };

export const CREATE_COMP_CHANNEL: StructDef = { name: 'ib_uverbs_create_comp_channel', fields: [resp] };
export const CREATE_COMP_CHANNEL_RESP: StructDef = { name: 'ib_uverbs_create_comp_channel_resp', fields: [['fd', 'u32']] };

export const CREATE_CQ: StructDef = {
  name: 'ib_uverbs_create_cq',
  fields: [resp, ['user_handle', 'u64'], ['cqe', 'u32'], ['comp_vector', 'u32'], ['comp_channel', 's32'], ['reserved', 'u32']],
};
export const CREATE_CQ_RESP: StructDef = { name: 'ib_uverbs_create_cq_resp', fields: [['cq_handle', 'u32'], ['cqe', 'u32']] };
export const RESIZE_CQ: StructDef = { name: 'ib_uverbs_resize_cq', fields: [resp, ['cq_handle', 'u32'], ['cqe', 'u32']] };
export const RESIZE_CQ_RESP: StructDef = { name: 'ib_uverbs_resize_cq_resp', fields: [['cqe', 'u32'], ['reserved', 'u32']] };
export const REQ_NOTIFY_CQ: StructDef = { name: 'ib_uverbs_req_notify_cq', fields: [['cq_handle', 'u32'], ['solicited_only', 'u32']] };
export const DESTROY_CQ: StructDef = { name: 'ib_uverbs_destroy_cq', fields: [resp, ['cq_handle', 'u32'], ['reserved', 'u32']] };
export const DESTROY_CQ_RESP: StructDef = { name: 'ib_uverbs_destroy_cq_resp', fields: [['comp_events_reported', 'u32'], ['async_events_reported', 'u32']] };

/** struct ib_uverbs_wc: also the softverbs CQ ring entry (rxe does the same). */
export const WC: StructDef = {
  name: 'ib_uverbs_wc',
  fields: [
    ['wr_id', 'u64'], ['status', 'u32'], ['opcode', 'u32'], ['vendor_err', 'u32'], ['byte_len', 'u32'], ['imm_data', 'u32'],
    ['qp_num', 'u32'], ['src_qp', 'u32'], ['wc_flags', 'u32'], ['pkey_index', 'u16'], ['slid', 'u16'], ['sl', 'u8'],
    ['dlid_path_bits', 'u8'], ['port_num', 'u8'], ['reserved', 'u8'],
  ],
};

export const GLOBAL_ROUTE: StructDef = {
  name: 'ib_uverbs_global_route',
  fields: [['dgid', { bytes: 16 }], ['flow_label', 'u32'], ['sgid_index', 'u8'], ['hop_limit', 'u8'], ['traffic_class', 'u8'], ['reserved', 'u8']],
};
export const AH_ATTR: StructDef = {
  name: 'ib_uverbs_ah_attr',
  fields: [['grh', GLOBAL_ROUTE], ['dlid', 'u16'], ['sl', 'u8'], ['src_path_bits', 'u8'], ['static_rate', 'u8'], ['is_global', 'u8'], ['port_num', 'u8'], ['reserved', 'u8']],
};
export const CREATE_AH: StructDef = {
  name: 'ib_uverbs_create_ah',
  fields: [resp, ['user_handle', 'u64'], ['pd_handle', 'u32'], ['reserved', 'u32'], ['attr', AH_ATTR]],
};
export const CREATE_AH_RESP: StructDef = { name: 'ib_uverbs_create_ah_resp', fields: [['ah_handle', 'u32']] };
export const DESTROY_AH: StructDef = { name: 'ib_uverbs_destroy_ah', fields: [['ah_handle', 'u32']] };

export const QP_DEST: StructDef = {
  name: 'ib_uverbs_qp_dest',
  fields: [
    ['dgid', { bytes: 16 }], ['flow_label', 'u32'], ['dlid', 'u16'], ['reserved', 'u16'], ['sgid_index', 'u8'], ['hop_limit', 'u8'],
    ['traffic_class', 'u8'], ['sl', 'u8'], ['src_path_bits', 'u8'], ['static_rate', 'u8'], ['is_global', 'u8'], ['port_num', 'u8'],
  ],
};

export const CREATE_QP: StructDef = {
  name: 'ib_uverbs_create_qp',
  fields: [
    resp, ['user_handle', 'u64'], ['pd_handle', 'u32'], ['send_cq_handle', 'u32'], ['recv_cq_handle', 'u32'], ['srq_handle', 'u32'],
    ['max_send_wr', 'u32'], ['max_recv_wr', 'u32'], ['max_send_sge', 'u32'], ['max_recv_sge', 'u32'], ['max_inline_data', 'u32'],
    ['sq_sig_all', 'u8'], ['qp_type', 'u8'], ['is_srq', 'u8'], ['reserved', 'u8'],
  ],
};
export const CREATE_QP_RESP: StructDef = {
  name: 'ib_uverbs_create_qp_resp',
  fields: [['qp_handle', 'u32'], ['qpn', 'u32'], ['max_send_wr', 'u32'], ['max_recv_wr', 'u32'], ['max_send_sge', 'u32'], ['max_recv_sge', 'u32'], ['max_inline_data', 'u32'], ['reserved', 'u32']],
};
export const QUERY_QP: StructDef = { name: 'ib_uverbs_query_qp', fields: [resp, ['qp_handle', 'u32'], ['attr_mask', 'u32']] };
export const QUERY_QP_RESP: StructDef = {
  name: 'ib_uverbs_query_qp_resp',
  fields: [
    ['dest', QP_DEST], ['alt_dest', QP_DEST], ['max_send_wr', 'u32'], ['max_recv_wr', 'u32'], ['max_send_sge', 'u32'], ['max_recv_sge', 'u32'],
    ['max_inline_data', 'u32'], ['qkey', 'u32'], ['rq_psn', 'u32'], ['sq_psn', 'u32'], ['dest_qp_num', 'u32'], ['qp_access_flags', 'u32'],
    ['pkey_index', 'u16'], ['alt_pkey_index', 'u16'], ['qp_state', 'u8'], ['cur_qp_state', 'u8'], ['path_mtu', 'u8'], ['path_mig_state', 'u8'],
    ['sq_draining', 'u8'], ['max_rd_atomic', 'u8'], ['max_dest_rd_atomic', 'u8'], ['min_rnr_timer', 'u8'], ['port_num', 'u8'], ['timeout', 'u8'],
    ['retry_cnt', 'u8'], ['rnr_retry', 'u8'], ['alt_port_num', 'u8'], ['alt_timeout', 'u8'], ['sq_sig_all', 'u8'], ['reserved', { bytes: 5 }],
  ],
};
export const MODIFY_QP: StructDef = {
  name: 'ib_uverbs_modify_qp',
  fields: [
    ['dest', QP_DEST], ['alt_dest', QP_DEST], ['qp_handle', 'u32'], ['attr_mask', 'u32'], ['qkey', 'u32'], ['rq_psn', 'u32'], ['sq_psn', 'u32'],
    ['dest_qp_num', 'u32'], ['qp_access_flags', 'u32'], ['pkey_index', 'u16'], ['alt_pkey_index', 'u16'], ['qp_state', 'u8'], ['cur_qp_state', 'u8'],
    ['path_mtu', 'u8'], ['path_mig_state', 'u8'], ['en_sqd_async_notify', 'u8'], ['max_rd_atomic', 'u8'], ['max_dest_rd_atomic', 'u8'],
    ['min_rnr_timer', 'u8'], ['port_num', 'u8'], ['timeout', 'u8'], ['retry_cnt', 'u8'], ['rnr_retry', 'u8'], ['alt_port_num', 'u8'],
    ['alt_timeout', 'u8'], ['reserved', { bytes: 2 }],
  ],
};
export const DESTROY_QP: StructDef = { name: 'ib_uverbs_destroy_qp', fields: [resp, ['qp_handle', 'u32'], ['reserved', 'u32']] };
export const DESTROY_QP_RESP: StructDef = { name: 'ib_uverbs_destroy_qp_resp', fields: [['events_reported', 'u32']] };

export const POST_SEND: StructDef = {
  name: 'ib_uverbs_post_send',
  fields: [resp, ['qp_handle', 'u32'], ['wr_count', 'u32'], ['sge_count', 'u32'], ['wqe_size', 'u32']],
};
/** ib_uverbs_post_recv: same layout as post_send. softverbs uses it with wr_count 0 as the receive doorbell of a QP in ERR. */
export const POST_RECV: StructDef = { ...POST_SEND, name: 'ib_uverbs_post_recv' };
export const POST_SEND_RESP: StructDef = { name: 'ib_uverbs_post_send_resp', fields: [['bad_wr', 'u32']] };

export const CREATE_SRQ: StructDef = {
  name: 'ib_uverbs_create_srq',
  fields: [resp, ['user_handle', 'u64'], ['pd_handle', 'u32'], ['max_wr', 'u32'], ['max_sge', 'u32'], ['srq_limit', 'u32']],
};
export const CREATE_SRQ_RESP: StructDef = { name: 'ib_uverbs_create_srq_resp', fields: [['srq_handle', 'u32'], ['max_wr', 'u32'], ['max_sge', 'u32'], ['srqn', 'u32']] };
export const MODIFY_SRQ: StructDef = { name: 'ib_uverbs_modify_srq', fields: [['srq_handle', 'u32'], ['attr_mask', 'u32'], ['max_wr', 'u32'], ['srq_limit', 'u32']] };
export const QUERY_SRQ: StructDef = { name: 'ib_uverbs_query_srq', fields: [resp, ['srq_handle', 'u32'], ['reserved', 'u32']] };
export const QUERY_SRQ_RESP: StructDef = { name: 'ib_uverbs_query_srq_resp', fields: [['max_wr', 'u32'], ['max_sge', 'u32'], ['srq_limit', 'u32'], ['reserved', 'u32']] };
export const DESTROY_SRQ: StructDef = { name: 'ib_uverbs_destroy_srq', fields: [resp, ['srq_handle', 'u32'], ['reserved', 'u32']] };
export const DESTROY_SRQ_RESP: StructDef = { name: 'ib_uverbs_destroy_srq_resp', fields: [['events_reported', 'u32']] };

// ---- softverbs provider udata (after the core struct, as rdma-core's udata) ----

/** REG_MR / REREG_MR udata: which of the caller's memfds holds the pages, and where. */
export const SV_REG_MR: StructDef = { name: 'sv_reg_mr', fields: [['memfd', 'u32'], ['reserved', 'u32'], ['memfd_offset', 'u64']] };
/** CREATE_CQ / CREATE_QP / CREATE_SRQ udata: the memfd holding the ring(s), laid out by `queue.ts`. */
export const SV_QUEUE: StructDef = { name: 'sv_queue', fields: [['memfd', 'u32'], ['reserved', 'u32']] };
/** The first frame of an event-stream connection. */
export const SV_ATTACH: StructDef = { name: 'sv_attach', fields: [['token', 'u32'], ['reserved', 'u32']] };

/** What each command reads and answers: core request (after the header), response, provider udata. */
export interface CmdSpec {
  readonly name: string;
  readonly req: StructDef;
  readonly resp?: StructDef;
  readonly udata?: StructDef;
}

export const COMMANDS: ReadonlyMap<number, CmdSpec> = new Map<number, CmdSpec>([
  [Cmd.GET_CONTEXT, { name: 'GET_CONTEXT', req: GET_CONTEXT, resp: GET_CONTEXT_RESP }],
  [Cmd.QUERY_DEVICE, { name: 'QUERY_DEVICE', req: QUERY_DEVICE, resp: QUERY_DEVICE_RESP }],
  [Cmd.QUERY_PORT, { name: 'QUERY_PORT', req: QUERY_PORT, resp: QUERY_PORT_RESP }],
  [Cmd.ALLOC_PD, { name: 'ALLOC_PD', req: ALLOC_PD, resp: ALLOC_PD_RESP }],
  [Cmd.DEALLOC_PD, { name: 'DEALLOC_PD', req: DEALLOC_PD }],
  [Cmd.CREATE_AH, { name: 'CREATE_AH', req: CREATE_AH, resp: CREATE_AH_RESP }],
  [Cmd.DESTROY_AH, { name: 'DESTROY_AH', req: DESTROY_AH }],
  [Cmd.REG_MR, { name: 'REG_MR', req: REG_MR, resp: REG_MR_RESP, udata: SV_REG_MR }],
  [Cmd.REREG_MR, { name: 'REREG_MR', req: REREG_MR, resp: REREG_MR_RESP, udata: SV_REG_MR }],
  [Cmd.DEREG_MR, { name: 'DEREG_MR', req: DEREG_MR }],
  [Cmd.CREATE_COMP_CHANNEL, { name: 'CREATE_COMP_CHANNEL', req: CREATE_COMP_CHANNEL, resp: CREATE_COMP_CHANNEL_RESP }],
  [Cmd.CREATE_CQ, { name: 'CREATE_CQ', req: CREATE_CQ, resp: CREATE_CQ_RESP, udata: SV_QUEUE }],
  [Cmd.RESIZE_CQ, { name: 'RESIZE_CQ', req: RESIZE_CQ, resp: RESIZE_CQ_RESP, udata: SV_QUEUE }],
  [Cmd.DESTROY_CQ, { name: 'DESTROY_CQ', req: DESTROY_CQ, resp: DESTROY_CQ_RESP }],
  [Cmd.REQ_NOTIFY_CQ, { name: 'REQ_NOTIFY_CQ', req: REQ_NOTIFY_CQ }],
  [Cmd.CREATE_QP, { name: 'CREATE_QP', req: CREATE_QP, resp: CREATE_QP_RESP, udata: SV_QUEUE }],
  [Cmd.QUERY_QP, { name: 'QUERY_QP', req: QUERY_QP, resp: QUERY_QP_RESP }],
  [Cmd.MODIFY_QP, { name: 'MODIFY_QP', req: MODIFY_QP }],
  [Cmd.DESTROY_QP, { name: 'DESTROY_QP', req: DESTROY_QP, resp: DESTROY_QP_RESP }],
  [Cmd.POST_SEND, { name: 'POST_SEND', req: POST_SEND, resp: POST_SEND_RESP }],
  [Cmd.POST_RECV, { name: 'POST_RECV', req: POST_RECV, resp: POST_SEND_RESP }],
  [Cmd.CREATE_SRQ, { name: 'CREATE_SRQ', req: CREATE_SRQ, resp: CREATE_SRQ_RESP, udata: SV_QUEUE }],
  [Cmd.MODIFY_SRQ, { name: 'MODIFY_SRQ', req: MODIFY_SRQ }],
  [Cmd.QUERY_SRQ, { name: 'QUERY_SRQ', req: QUERY_SRQ, resp: QUERY_SRQ_RESP }],
  [Cmd.DESTROY_SRQ, { name: 'DESTROY_SRQ', req: DESTROY_SRQ, resp: DESTROY_SRQ_RESP }],
]);

export const HDR_SIZE = layout(CMD_HDR).size;

/** Builds one request frame: header + core struct + udata, in_words covering all of it, out_words for resp + `outExtra` bytes. */
export function frame(command: number, spec: CmdSpec, req: Partial<Values>, udata?: Partial<Values>, outExtra = 0): Buffer {
  const reqSize = layout(spec.req).size;
  const uSize = spec.udata && udata ? layout(spec.udata).size : 0;
  const total = HDR_SIZE + reqSize + uSize;
  const b = Buffer.alloc(total);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const outBytes = (spec.resp ? layout(spec.resp).size : 0) + outExtra;
  dv.setUint32(0, command, true);
  dv.setUint16(4, total / 4, true);
  dv.setUint16(6, Math.ceil(outBytes / 4), true);
  encode(spec.req, req, dv, HDR_SIZE);
  if (spec.udata && udata) encode(spec.udata, udata, dv, HDR_SIZE + reqSize);
  return b;
}
