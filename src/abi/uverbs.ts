/**
 * The uverbs command ABI: command numbers and struct layouts of Linux
 * `include/uapi/rdma/ib_user_verbs.h` (ABI version 6), in header field order,
 * plus the softverbs provider's udata (what rdma-core's rxe provider keeps in
 * `rxe-abi.h`). How the frames travel on a device socket is `framing.ts`.
 */
import type { Infer, Input, StructDef } from './layout.js';
import { encode, layout, struct } from './layout.js';

export const ABI_VERSION = 6;
/** The driver ABI of every softverbsd device (the per-device `abi_version`): rxe's, which rdma-core's rxe provider accepts (1–2). */
export const RXE_UVERBS_ABI_VERSION = 2;

/** An extended command's `command` carries this flag; its low byte is the IB_USER_VERBS_EX_CMD_* number. */
export const CMD_FLAG_EXTENDED = 0x80000000;
export const CMD_COMMAND_MASK = 0xff;
/** IB_USER_VERBS_EX_CMD_* (the extended commands share the legacy numbers). */
export const ExCmd = {
  QUERY_DEVICE: 1,
  CREATE_CQ: 18,
  CREATE_QP: 24,
  MODIFY_QP: 26,
} as const;
export type ExCmd = (typeof ExCmd)[keyof typeof ExCmd];

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
export type Cmd = (typeof Cmd)[keyof typeof Cmd];

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
  /** GET_CONTEXT from a client speaking rdma-core's rxe provider ABI (a C program through the preload library) */
  GET_CONTEXT_RXE: 0xf3,
  /**
   * An extended command (CMD_FLAG_EXTENDED) exactly as the program wrote it, after this header. Its own
   * in_words counts 8-byte words after the ex header, so it cannot be cut from the stream by ours.
   */
  WRITE_EX: 0xf4,
} as const;
export type SvCmd = (typeof SvCmd)[keyof typeof SvCmd];

export const CMD_HDR = struct('ib_uverbs_cmd_hdr', [['command', 'u32'], ['in_words', 'u16'], ['out_words', 'u16']]);

/** The reply frame header: status is 0 or -errno; out_bytes of body follow (the response, or an error's text). */
export const REPLY_HDR = struct('sv_reply_hdr', [['status', 's32'], ['out_bytes', 'u32']]);

export const ASYNC_EVENT_DESC = struct('ib_uverbs_async_event_desc', [['element', 'u64'], ['event_type', 'u32'], ['reserved', 'u32']]);
export const COMP_EVENT_DESC = struct('ib_uverbs_comp_event_desc', [['cq_handle', 'u64']]);

const resp = ['response', 'u64'] as const;

/** struct ib_uverbs_ex_cmd_hdr: after ib_uverbs_cmd_hdr in an extended command */
export const EX_CMD_HDR = struct('ib_uverbs_ex_cmd_hdr', [['response', 'u64'], ['provider_in_words', 'u16'], ['provider_out_words', 'u16'], ['cmd_hdr_reserved', 'u32']]);

export const GET_CONTEXT = struct('ib_uverbs_get_context', [resp]);
export const GET_CONTEXT_RESP = struct('ib_uverbs_get_context_resp', [['async_fd', 'u32'], ['num_comp_vectors', 'u32']]);

export const QUERY_DEVICE = struct('ib_uverbs_query_device', [resp]);
export const QUERY_DEVICE_RESP = struct('ib_uverbs_query_device_resp', [
    ['fw_ver', 'u64'], ['node_guid', 'u64'], ['sys_image_guid', 'u64'], ['max_mr_size', 'u64'], ['page_size_cap', 'u64'],
    ['vendor_id', 'u32'], ['vendor_part_id', 'u32'], ['hw_ver', 'u32'], ['max_qp', 'u32'], ['max_qp_wr', 'u32'],
    ['device_cap_flags', 'u32'], ['max_sge', 'u32'], ['max_sge_rd', 'u32'], ['max_cq', 'u32'], ['max_cqe', 'u32'],
    ['max_mr', 'u32'], ['max_pd', 'u32'], ['max_qp_rd_atom', 'u32'], ['max_ee_rd_atom', 'u32'], ['max_res_rd_atom', 'u32'],
    ['max_qp_init_rd_atom', 'u32'], ['max_ee_init_rd_atom', 'u32'], ['atomic_cap', 'u32'], ['max_ee', 'u32'], ['max_rdd', 'u32'],
    ['max_mw', 'u32'], ['max_raw_ipv6_qp', 'u32'], ['max_raw_ethy_qp', 'u32'], ['max_mcast_grp', 'u32'], ['max_mcast_qp_attach', 'u32'],
    ['max_total_mcast_qp_attach', 'u32'], ['max_ah', 'u32'], ['max_fmr', 'u32'], ['max_map_per_fmr', 'u32'], ['max_srq', 'u32'],
    ['max_srq_wr', 'u32'], ['max_srq_sge', 'u32'], ['max_pkeys', 'u16'], ['local_ca_ack_delay', 'u8'], ['phys_port_cnt', 'u8'],
    ['reserved', { bytes: 4 }],
  ]);

/** IB_UVERBS_DEVICE_ATOMIC_WRITE (Linux ≥ 6.2): device_cap_flags_ex bit 40, past the legacy 32-bit word. */
export const DEVICE_ATOMIC_WRITE = 1n << 40n;
export const EX_QUERY_DEVICE = struct('ib_uverbs_ex_query_device', [['comp_mask', 'u32'], ['reserved', 'u32']]);
const ODP_CAPS = struct('ib_uverbs_odp_caps', [
    ['general_caps', 'u64'], ['rc_odp_caps', 'u32'], ['uc_odp_caps', 'u32'], ['ud_odp_caps', 'u32'], ['reserved', 'u32'],
  ]);
const RSS_CAPS = struct('ib_uverbs_rss_caps', [['supported_qpts', 'u32'], ['max_rwq_indirection_tables', 'u32'], ['max_rwq_indirection_table_size', 'u32'], ['reserved', 'u32']]);
const TM_CAPS = struct('ib_uverbs_tm_caps', [['max_rndv_hdr_size', 'u32'], ['max_num_tags', 'u32'], ['flags', 'u32'], ['max_ops', 'u32'], ['max_sge', 'u32'], ['reserved', 'u32']]);
const CQ_MODERATION_CAPS = struct('ib_uverbs_cq_moderation_caps', [['max_cq_moderation_count', 'u16'], ['max_cq_moderation_period', 'u16'], ['reserved', 'u32']]);
export const EX_QUERY_DEVICE_RESP = struct('ib_uverbs_ex_query_device_resp', [
    ['base', QUERY_DEVICE_RESP], ['comp_mask', 'u32'], ['response_length', 'u32'], ['odp_caps', ODP_CAPS], ['timestamp_mask', 'u64'],
    ['hca_core_clock', 'u64'], ['device_cap_flags_ex', 'u64'], ['rss_caps', RSS_CAPS], ['max_wq_type_rq', 'u32'], ['raw_packet_caps', 'u32'],
    ['tm_caps', TM_CAPS], ['cq_moderation_caps', CQ_MODERATION_CAPS], ['max_dm_size', 'u64'], ['xrc_odp_caps', 'u32'], ['reserved', 'u32'],
  ]);

export const QUERY_PORT = struct('ib_uverbs_query_port', [resp, ['port_num', 'u8'], ['reserved', { bytes: 7 }]]);
export const QUERY_PORT_RESP = struct('ib_uverbs_query_port_resp', [
    ['port_cap_flags', 'u32'], ['max_msg_sz', 'u32'], ['bad_pkey_cntr', 'u32'], ['qkey_viol_cntr', 'u32'], ['gid_tbl_len', 'u32'],
    ['pkey_tbl_len', 'u16'], ['lid', 'u16'], ['sm_lid', 'u16'], ['state', 'u8'], ['max_mtu', 'u8'], ['active_mtu', 'u8'], ['lmc', 'u8'],
    ['max_vl_num', 'u8'], ['sm_sl', 'u8'], ['subnet_timeout', 'u8'], ['init_type_reply', 'u8'], ['active_width', 'u8'],
    ['active_speed', 'u8'], ['phys_state', 'u8'], ['link_layer', 'u8'], ['reserved', { bytes: 2 }],
  ]);

export const ALLOC_PD = struct('ib_uverbs_alloc_pd', [resp]);
export const ALLOC_PD_RESP = struct('ib_uverbs_alloc_pd_resp', [['pd_handle', 'u32']]);
export const DEALLOC_PD = struct('ib_uverbs_dealloc_pd', [['pd_handle', 'u32']]);

export const REG_MR = struct('ib_uverbs_reg_mr', [resp, ['start', 'u64'], ['length', 'u64'], ['hca_va', 'u64'], ['pd_handle', 'u32'], ['access_flags', 'u32']]);
export const REG_MR_RESP = struct('ib_uverbs_reg_mr_resp', [['mr_handle', 'u32'], ['lkey', 'u32'], ['rkey', 'u32']]);
export const REREG_MR = struct('ib_uverbs_rereg_mr', [resp, ['mr_handle', 'u32'], ['flags', 'u32'], ['start', 'u64'], ['length', 'u64'], ['hca_va', 'u64'], ['pd_handle', 'u32'], ['access_flags', 'u32']]);
export const REREG_MR_RESP = struct('ib_uverbs_rereg_mr_resp', [['lkey', 'u32'], ['rkey', 'u32']]);
export const DEREG_MR = struct('ib_uverbs_dereg_mr', [['mr_handle', 'u32']]);
export const ALLOC_MW = struct('ib_uverbs_alloc_mw', [resp, ['pd_handle', 'u32'], ['mw_type', 'u8'], ['reserved', { bytes: 3 }]]);
export const ALLOC_MW_RESP = struct('ib_uverbs_alloc_mw_resp', [['mw_handle', 'u32'], ['rkey', 'u32']]);
export const DEALLOC_MW = struct('ib_uverbs_dealloc_mw', [['mw_handle', 'u32']]);

export const CREATE_COMP_CHANNEL = struct('ib_uverbs_create_comp_channel', [resp]);
export const CREATE_COMP_CHANNEL_RESP = struct('ib_uverbs_create_comp_channel_resp', [['fd', 'u32']]);

export const CREATE_CQ = struct('ib_uverbs_create_cq', [resp, ['user_handle', 'u64'], ['cqe', 'u32'], ['comp_vector', 'u32'], ['comp_channel', 's32'], ['reserved', 'u32']]);
export const CREATE_CQ_RESP = struct('ib_uverbs_create_cq_resp', [['cq_handle', 'u32'], ['cqe', 'u32']]);
export const RESIZE_CQ = struct('ib_uverbs_resize_cq', [resp, ['cq_handle', 'u32'], ['cqe', 'u32']]);
export const RESIZE_CQ_RESP = struct('ib_uverbs_resize_cq_resp', [['cqe', 'u32'], ['reserved', 'u32']]);
export const REQ_NOTIFY_CQ = struct('ib_uverbs_req_notify_cq', [['cq_handle', 'u32'], ['solicited_only', 'u32']]);
export const DESTROY_CQ = struct('ib_uverbs_destroy_cq', [resp, ['cq_handle', 'u32'], ['reserved', 'u32']]);
export const DESTROY_CQ_RESP = struct('ib_uverbs_destroy_cq_resp', [['comp_events_reported', 'u32'], ['async_events_reported', 'u32']]);

/** struct ib_uverbs_wc: also the softverbs CQ ring entry (rxe does the same). */
export const WC = struct('ib_uverbs_wc', [
    ['wr_id', 'u64'], ['status', 'u32'], ['opcode', 'u32'], ['vendor_err', 'u32'], ['byte_len', 'u32'], ['imm_data', 'u32'],
    ['qp_num', 'u32'], ['src_qp', 'u32'], ['wc_flags', 'u32'], ['pkey_index', 'u16'], ['slid', 'u16'], ['sl', 'u8'],
    ['dlid_path_bits', 'u8'], ['port_num', 'u8'], ['reserved', 'u8'],
  ]);

export const GLOBAL_ROUTE = struct('ib_uverbs_global_route', [['dgid', { bytes: 16 }], ['flow_label', 'u32'], ['sgid_index', 'u8'], ['hop_limit', 'u8'], ['traffic_class', 'u8'], ['reserved', 'u8']]);
export const AH_ATTR = struct('ib_uverbs_ah_attr', [['grh', GLOBAL_ROUTE], ['dlid', 'u16'], ['sl', 'u8'], ['src_path_bits', 'u8'], ['static_rate', 'u8'], ['is_global', 'u8'], ['port_num', 'u8'], ['reserved', 'u8']]);
export const CREATE_AH = struct('ib_uverbs_create_ah', [resp, ['user_handle', 'u64'], ['pd_handle', 'u32'], ['reserved', 'u32'], ['attr', AH_ATTR]]);
export const CREATE_AH_RESP = struct('ib_uverbs_create_ah_resp', [['ah_handle', 'u32']]);
export const DESTROY_AH = struct('ib_uverbs_destroy_ah', [['ah_handle', 'u32']]);

export const QP_DEST = struct('ib_uverbs_qp_dest', [
    ['dgid', { bytes: 16 }], ['flow_label', 'u32'], ['dlid', 'u16'], ['reserved', 'u16'], ['sgid_index', 'u8'], ['hop_limit', 'u8'],
    ['traffic_class', 'u8'], ['sl', 'u8'], ['src_path_bits', 'u8'], ['static_rate', 'u8'], ['is_global', 'u8'], ['port_num', 'u8'],
  ]);

export const CREATE_QP = struct('ib_uverbs_create_qp', [
    resp, ['user_handle', 'u64'], ['pd_handle', 'u32'], ['send_cq_handle', 'u32'], ['recv_cq_handle', 'u32'], ['srq_handle', 'u32'],
    ['max_send_wr', 'u32'], ['max_recv_wr', 'u32'], ['max_send_sge', 'u32'], ['max_recv_sge', 'u32'], ['max_inline_data', 'u32'],
    ['sq_sig_all', 'u8'], ['qp_type', 'u8'], ['is_srq', 'u8'], ['reserved', 'u8'],
  ]);
export const CREATE_QP_RESP = struct('ib_uverbs_create_qp_resp', [['qp_handle', 'u32'], ['qpn', 'u32'], ['max_send_wr', 'u32'], ['max_recv_wr', 'u32'], ['max_send_sge', 'u32'], ['max_recv_sge', 'u32'], ['max_inline_data', 'u32'], ['reserved', 'u32']]);
export const QUERY_QP = struct('ib_uverbs_query_qp', [resp, ['qp_handle', 'u32'], ['attr_mask', 'u32']]);
export const QUERY_QP_RESP = struct('ib_uverbs_query_qp_resp', [
    ['dest', QP_DEST], ['alt_dest', QP_DEST], ['max_send_wr', 'u32'], ['max_recv_wr', 'u32'], ['max_send_sge', 'u32'], ['max_recv_sge', 'u32'],
    ['max_inline_data', 'u32'], ['qkey', 'u32'], ['rq_psn', 'u32'], ['sq_psn', 'u32'], ['dest_qp_num', 'u32'], ['qp_access_flags', 'u32'],
    ['pkey_index', 'u16'], ['alt_pkey_index', 'u16'], ['qp_state', 'u8'], ['cur_qp_state', 'u8'], ['path_mtu', 'u8'], ['path_mig_state', 'u8'],
    ['sq_draining', 'u8'], ['max_rd_atomic', 'u8'], ['max_dest_rd_atomic', 'u8'], ['min_rnr_timer', 'u8'], ['port_num', 'u8'], ['timeout', 'u8'],
    ['retry_cnt', 'u8'], ['rnr_retry', 'u8'], ['alt_port_num', 'u8'], ['alt_timeout', 'u8'], ['sq_sig_all', 'u8'], ['reserved', { bytes: 5 }],
  ]);
export const MODIFY_QP = struct('ib_uverbs_modify_qp', [
    ['dest', QP_DEST], ['alt_dest', QP_DEST], ['qp_handle', 'u32'], ['attr_mask', 'u32'], ['qkey', 'u32'], ['rq_psn', 'u32'], ['sq_psn', 'u32'],
    ['dest_qp_num', 'u32'], ['qp_access_flags', 'u32'], ['pkey_index', 'u16'], ['alt_pkey_index', 'u16'], ['qp_state', 'u8'], ['cur_qp_state', 'u8'],
    ['path_mtu', 'u8'], ['path_mig_state', 'u8'], ['en_sqd_async_notify', 'u8'], ['max_rd_atomic', 'u8'], ['max_dest_rd_atomic', 'u8'],
    ['min_rnr_timer', 'u8'], ['port_num', 'u8'], ['timeout', 'u8'], ['retry_cnt', 'u8'], ['rnr_retry', 'u8'], ['alt_port_num', 'u8'],
    ['alt_timeout', 'u8'], ['reserved', { bytes: 2 }],
  ]);
export const DESTROY_QP = struct('ib_uverbs_destroy_qp', [resp, ['qp_handle', 'u32'], ['reserved', 'u32']]);
export const DESTROY_QP_RESP = struct('ib_uverbs_destroy_qp_resp', [['events_reported', 'u32']]);

export const POST_SEND = struct('ib_uverbs_post_send', [resp, ['qp_handle', 'u32'], ['wr_count', 'u32'], ['sge_count', 'u32'], ['wqe_size', 'u32']]);
/** ib_uverbs_post_recv: same layout as post_send. softverbs uses it with wr_count 0 as the receive doorbell of a QP in ERR. */
export const POST_RECV = { ...POST_SEND, name: 'ib_uverbs_post_recv' };
export const POST_SEND_RESP = struct('ib_uverbs_post_send_resp', [['bad_wr', 'u32']]);

export const ATTACH_MCAST = struct('ib_uverbs_attach_mcast', [['gid', { bytes: 16 }], ['qp_handle', 'u32'], ['mlid', 'u16'], ['reserved', 'u16']]);
export const DETACH_MCAST = { ...ATTACH_MCAST, name: 'ib_uverbs_detach_mcast' };

export const CREATE_SRQ = struct('ib_uverbs_create_srq', [resp, ['user_handle', 'u64'], ['pd_handle', 'u32'], ['max_wr', 'u32'], ['max_sge', 'u32'], ['srq_limit', 'u32']]);
export const CREATE_SRQ_RESP = struct('ib_uverbs_create_srq_resp', [['srq_handle', 'u32'], ['max_wr', 'u32'], ['max_sge', 'u32'], ['srqn', 'u32']]);
export const MODIFY_SRQ = struct('ib_uverbs_modify_srq', [['srq_handle', 'u32'], ['attr_mask', 'u32'], ['max_wr', 'u32'], ['srq_limit', 'u32']]);
export const QUERY_SRQ = struct('ib_uverbs_query_srq', [resp, ['srq_handle', 'u32'], ['reserved', 'u32']]);
export const QUERY_SRQ_RESP = struct('ib_uverbs_query_srq_resp', [['max_wr', 'u32'], ['max_sge', 'u32'], ['srq_limit', 'u32'], ['reserved', 'u32']]);
// ---- the extended commands' structs (their requests have no response field: the ex header carries it) ----

/** enum ib_uverbs_ex_create_cq_flags */
export const ExCqFlags = { TIMESTAMP_COMPLETION: 1 << 0, IGNORE_OVERRUN: 1 << 1 } as const;
export const EX_CREATE_CQ = struct('ib_uverbs_ex_create_cq', [
    ['user_handle', 'u64'], ['cqe', 'u32'], ['comp_vector', 'u32'], ['comp_channel', 's32'], ['comp_mask', 'u32'], ['flags', 'u32'], ['reserved', 'u32'],
  ]);
export const EX_CREATE_CQ_RESP = struct('ib_uverbs_ex_create_cq_resp', [['base', CREATE_CQ_RESP], ['comp_mask', 'u32'], ['response_length', 'u32']]);

/** IB_UVERBS_CREATE_QP_MASK_IND_TABLE, the one comp_mask bit the kernel knows (IB_UVERBS_CREATE_QP_SUP_COMP_MASK) */
export const CREATE_QP_MASK_IND_TABLE = 1 << 0;
/** enum ib_qp_create_flags: the ones the kernel lets a user ask for (create_qp); any other bit is EINVAL */
export const QpCreateFlags = {
  BLOCK_MULTICAST_LOOPBACK: 1 << 1, CROSS_CHANNEL: 1 << 2, MANAGED_SEND: 1 << 3, MANAGED_RECV: 1 << 4, SCATTER_FCS: 1 << 8,
  CVLAN_STRIPPING: 1 << 9, SOURCE_QPN: 1 << 10, PCI_WRITE_END_PADDING: 1 << 11,
} as const;
export const EX_CREATE_QP = struct('ib_uverbs_ex_create_qp', [
    ['user_handle', 'u64'], ['pd_handle', 'u32'], ['send_cq_handle', 'u32'], ['recv_cq_handle', 'u32'], ['srq_handle', 'u32'],
    ['max_send_wr', 'u32'], ['max_recv_wr', 'u32'], ['max_send_sge', 'u32'], ['max_recv_sge', 'u32'], ['max_inline_data', 'u32'],
    ['sq_sig_all', 'u8'], ['qp_type', 'u8'], ['is_srq', 'u8'], ['reserved', 'u8'], ['comp_mask', 'u32'], ['create_flags', 'u32'],
    ['rwq_ind_tbl_handle', 'u32'], ['source_qpn', 'u32'],
  ]);
export const EX_CREATE_QP_RESP = struct('ib_uverbs_ex_create_qp_resp', [['base', CREATE_QP_RESP], ['comp_mask', 'u32'], ['response_length', 'u32']]);

export const EX_MODIFY_QP = struct('ib_uverbs_ex_modify_qp', [['base', MODIFY_QP], ['rate_limit', 'u32'], ['reserved', 'u32']]);
export const EX_MODIFY_QP_RESP = struct('ib_uverbs_ex_modify_qp_resp', [['comp_mask', 'u32'], ['response_length', 'u32']]);

export const DESTROY_SRQ = struct('ib_uverbs_destroy_srq', [resp, ['srq_handle', 'u32'], ['reserved', 'u32']]);
export const DESTROY_SRQ_RESP = struct('ib_uverbs_destroy_srq_resp', [['events_reported', 'u32']]);

// ---- softverbs provider udata (after the core struct, as rdma-core's udata) ----

/**
 * GET_CONTEXT's response udata (after ib_uverbs_get_context_resp, when out_words leave room for it): the key
 * that names this context on the descriptor exchange (FdOp.PUT_MEMFD) for as long as it lives. A client's
 * memfds reach the daemon only that way, so a library that finds no key here speaks to a daemon too old for it.
 */
export const SV_GET_CONTEXT_RESP = struct('sv_get_context_resp', [['fd_key', 'u32'], ['reserved', 'u32']]);
/**
 * REG_MR / REREG_MR udata: the memfd holding the pages, by the id PUT_MEMFD gave it (0: none, as a REREG_MR
 * that keeps its translation), and where in it. The command consumes the id, whatever its outcome.
 */
export const SV_REG_MR = struct('sv_reg_mr', [['memfd_id', 'u32'], ['reserved', 'u32'], ['memfd_offset', 'u64']]);
/** CREATE_CQ / RESIZE_CQ / CREATE_QP / CREATE_SRQ udata: the memfd holding the ring(s), laid out by `queue.ts`, by its PUT_MEMFD id (consumed). */
export const SV_QUEUE = struct('sv_queue', [['memfd_id', 'u32'], ['reserved', 'u32']]);
/** The first frame of an event-stream connection. */
export const SV_ATTACH = struct('sv_attach', [['token', 'u32'], ['reserved', 'u32']]);

/**
 * The descriptor exchange (`<root>/fds.sock`, see daemon/fd-exchange.ts): what a command's write() cannot
 * carry. One request per connection, descriptors riding with it or with the reply (SCM_RIGHTS); who sends
 * it is the kernel's word (SO_PEERCRED), and must be the context's own process (pid and uid).
 */
export const FdOp = {
  /**
   * rdma-core's rxe ABI (the preload library): the client's /proc/self/mem and /proc/self/maps ride with it, in
   * that order, for the context whose GET_CONTEXT answer carried `token` (before its async stream attaches)
   */
  SET_MEM: 1,
  /** mmap() of the device file at offset `arg`: the reply carries the queue's memfd, `size` and `offset` where it lies */
  GET_QUEUE: 2,
  /**
   * The softverbs ABI: one memfd rides with it (open read-write, sealable) for the context whose fd key
   * (SV_GET_CONTEXT_RESP) is `token`; `arg` is 0. The daemon seals it against shrinking and growing and holds
   * it: the reply's `id` names it in the udata of the one command that maps it, `size` is its size.
   */
  PUT_MEMFD: 3,
} as const;
export type FdOp = (typeof FdOp)[keyof typeof FdOp];
export const SV_FD_REQ = struct('sv_fd_req', [['op', 'u32'], ['token', 'u32'], ['arg', 'u64']]);
/**
 * status 0 or -errno; text_len bytes of the reason follow an error. GET_QUEUE: the queue's size and where it
 * starts in the memfd. PUT_MEMFD: the memfd's size and the id it is held under.
 */
export const SV_FD_RESP = struct('sv_fd_resp', [['status', 's32'], ['text_len', 'u32'], ['size', 'u64'], ['offset', 'u64'], ['id', 'u32'], ['reserved', 'u32']]);

/** What one command reads and answers: its number, core request (after the header), response, provider udata. */
export interface CmdSpec<Q extends StructDef = StructDef, R extends StructDef | undefined = StructDef | undefined, D extends StructDef | undefined = StructDef | undefined> {
  readonly cmd: number;
  readonly name: string;
  readonly req: Q;
  readonly resp: R;
  readonly udata: D;
}

function spec<Q extends StructDef, R extends StructDef | undefined = undefined, D extends StructDef | undefined = undefined>(
  cmd: number, req: Q, resp?: R, udata?: D,
): CmdSpec<Q, R, D> {
  const name = Object.keys(Cmd).find((k) => Cmd[k as keyof typeof Cmd] === cmd) ?? String(cmd);
  return { cmd, name, req, resp: resp as R, udata: udata as D };
}

/** The commands softverbsd serves, by name. */
export const Spec = {
  GET_CONTEXT: spec(Cmd.GET_CONTEXT, GET_CONTEXT, GET_CONTEXT_RESP),
  QUERY_DEVICE: spec(Cmd.QUERY_DEVICE, QUERY_DEVICE, QUERY_DEVICE_RESP),
  QUERY_PORT: spec(Cmd.QUERY_PORT, QUERY_PORT, QUERY_PORT_RESP),
  ALLOC_PD: spec(Cmd.ALLOC_PD, ALLOC_PD, ALLOC_PD_RESP),
  DEALLOC_PD: spec(Cmd.DEALLOC_PD, DEALLOC_PD),
  CREATE_AH: spec(Cmd.CREATE_AH, CREATE_AH, CREATE_AH_RESP),
  DESTROY_AH: spec(Cmd.DESTROY_AH, DESTROY_AH),
  REG_MR: spec(Cmd.REG_MR, REG_MR, REG_MR_RESP, SV_REG_MR),
  REREG_MR: spec(Cmd.REREG_MR, REREG_MR, REREG_MR_RESP, SV_REG_MR),
  DEREG_MR: spec(Cmd.DEREG_MR, DEREG_MR),
  ALLOC_MW: spec(Cmd.ALLOC_MW, ALLOC_MW, ALLOC_MW_RESP),
  DEALLOC_MW: spec(Cmd.DEALLOC_MW, DEALLOC_MW),
  CREATE_COMP_CHANNEL: spec(Cmd.CREATE_COMP_CHANNEL, CREATE_COMP_CHANNEL, CREATE_COMP_CHANNEL_RESP),
  CREATE_CQ: spec(Cmd.CREATE_CQ, CREATE_CQ, CREATE_CQ_RESP, SV_QUEUE),
  RESIZE_CQ: spec(Cmd.RESIZE_CQ, RESIZE_CQ, RESIZE_CQ_RESP, SV_QUEUE),
  DESTROY_CQ: spec(Cmd.DESTROY_CQ, DESTROY_CQ, DESTROY_CQ_RESP),
  REQ_NOTIFY_CQ: spec(Cmd.REQ_NOTIFY_CQ, REQ_NOTIFY_CQ),
  CREATE_QP: spec(Cmd.CREATE_QP, CREATE_QP, CREATE_QP_RESP, SV_QUEUE),
  QUERY_QP: spec(Cmd.QUERY_QP, QUERY_QP, QUERY_QP_RESP),
  MODIFY_QP: spec(Cmd.MODIFY_QP, MODIFY_QP),
  DESTROY_QP: spec(Cmd.DESTROY_QP, DESTROY_QP, DESTROY_QP_RESP),
  POST_SEND: spec(Cmd.POST_SEND, POST_SEND, POST_SEND_RESP),
  POST_RECV: spec(Cmd.POST_RECV, POST_RECV, POST_SEND_RESP),
  ATTACH_MCAST: spec(Cmd.ATTACH_MCAST, ATTACH_MCAST),
  DETACH_MCAST: spec(Cmd.DETACH_MCAST, DETACH_MCAST),
  CREATE_SRQ: spec(Cmd.CREATE_SRQ, CREATE_SRQ, CREATE_SRQ_RESP, SV_QUEUE),
  MODIFY_SRQ: spec(Cmd.MODIFY_SRQ, MODIFY_SRQ),
  QUERY_SRQ: spec(Cmd.QUERY_SRQ, QUERY_SRQ, QUERY_SRQ_RESP),
  DESTROY_SRQ: spec(Cmd.DESTROY_SRQ, DESTROY_SRQ, DESTROY_SRQ_RESP),
} as const;

export type CmdName = keyof typeof Spec;
/** The decoded request of command K. */
export type Req<K extends CmdName> = Infer<(typeof Spec)[K]['req']>;
/** The decoded udata of command K. */
export type Udata<K extends CmdName> = (typeof Spec)[K]['udata'] extends infer D extends StructDef ? Infer<D> : never;
/** The decoded response of a command spec ({} for a command without one). */
export type RespOf<S extends CmdSpec> = S['resp'] extends infer R extends StructDef ? Infer<R> : Record<string, never>;

/** The commands by number, as the daemon looks them up. */
export const COMMANDS: ReadonlyMap<number, CmdSpec> = new Map<number, CmdSpec>(Object.values(Spec).map((s) => [s.cmd, s]));

export const HDR_SIZE = layout(CMD_HDR).size;

/** Builds one request frame: header + core struct + udata, in_words covering all of it, out_words for resp + `outExtra` bytes. */
export function frame<S extends CmdSpec>(
  spec: S, req: Input<S['req']>, udata?: S['udata'] extends infer D extends StructDef ? Input<D> : never, outExtra = 0,
): Buffer {
  const reqSize = layout(spec.req).size;
  const uSize = spec.udata && udata ? layout(spec.udata).size : 0;
  const total = HDR_SIZE + reqSize + uSize;
  const b = Buffer.alloc(total);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const outBytes = (spec.resp ? layout(spec.resp).size : 0) + outExtra;
  encode(CMD_HDR, { command: spec.cmd, in_words: total / 4, out_words: Math.ceil(outBytes / 4) }, dv, 0);
  encode(spec.req, req, dv, HDR_SIZE);
  if (spec.udata && udata) encode(spec.udata, udata, dv, HDR_SIZE + reqSize);
  return b;
}

/**
 * Builds an extended command as a WRITE_EX frame: our header, then what a program's write() gives the kernel
 * (ib_uverbs_cmd_hdr with in/out words of 8 bytes, ib_uverbs_ex_cmd_hdr, the core request, the provider's
 * udata). `outBytes` of core response and `udataOut` of provider response are asked for; the daemon answers
 * them as the bytes behind the response pointer, which it needs only to be there (any nonzero value).
 */
export function exFrame<Q extends StructDef, D extends StructDef>(
  command: ExCmd, req: Q, reqIn: Input<Q>, outBytes: number, udata?: { def: D; value: Input<D> }, udataOut = 0,
): Buffer {
  const core = layout(req).size;
  const uSize = udata ? layout(udata.def).size : 0;
  if (core % 8 || uSize % 8 || outBytes % 8 || udataOut % 8) throw new RangeError('softverbs: an extended command counts 8-byte words');
  const exHdr = layout(EX_CMD_HDR).size;
  const total = HDR_SIZE + HDR_SIZE + exHdr + core + uSize;
  const b = Buffer.alloc(total);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  encode(CMD_HDR, { command: SvCmd.WRITE_EX, in_words: total / 4, out_words: 0 }, dv, 0);
  encode(CMD_HDR, { command: (CMD_FLAG_EXTENDED | command) >>> 0, in_words: core / 8, out_words: outBytes / 8 }, dv, HDR_SIZE);
  encode(EX_CMD_HDR, { response: outBytes || udataOut ? 1n : 0n, provider_in_words: uSize / 8, provider_out_words: udataOut / 8 }, dv, HDR_SIZE * 2);
  encode(req, reqIn, dv, HDR_SIZE * 2 + exHdr);
  if (udata) encode(udata.def, udata.value, dv, HDR_SIZE * 2 + exHdr + core);
  return b;
}
