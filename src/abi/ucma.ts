/**
 * The rdma_cm command ABI: command numbers and struct layouts of Linux
 * `include/uapi/rdma/rdma_user_cm.h` (ABI version 4), in header field order.
 * The frames travel on `<root>/dev/infiniband/rdma_cm` as the kernel reads
 * them from write(): `rdma_ucm_cmd_hdr` (cmd, in and out as byte counts of
 * the struct after the header), then the struct. The reply frame is the
 * uverbs one (status, out_bytes, the response). Our library does not fetch
 * events with a blocking GET_EVENT (a blocked command would hold up the ones
 * behind it): the daemon pushes `rdma_ucm_event_resp` records on an event
 * stream, a second connection attached to the same file, as completion
 * channels are.
 *
 * A C program (librdmacm through the preload library) has the kernel's file
 * instead: its events wait in the daemon until GET_EVENT takes them, and the
 * descriptor it polls is a notification stream holding one byte per waiting
 * event. Its command connection starts with NOTIFY_TOKEN, its notification
 * stream with ATTACH_NOTIFY, and every reply on the command connection is an
 * `sv_ucma_reply`: status and body as before, then how many notification
 * bytes the preload takes off the stream (and off the stream of the file
 * MIGRATE_ID named) so that it keeps one byte per waiting event. GET_EVENT
 * answers at once (EAGAIN when nothing waits); the preload waits for a byte
 * on the stream when the descriptor is blocking.
 */
import { encode, layout, struct, type Infer, type Input, type StructDef } from './layout.js';
import { gidOf } from '../hca/gid.js';
import { AH_ATTR } from './uverbs.js';

export const UCMA_ABI_VERSION = 4;
export const RDMA_MAX_PRIVATE_DATA = 256;

/** RDMA_USER_CM_CMD_* in header order. */
export const UcmaCmd = {
  CREATE_ID: 0,
  DESTROY_ID: 1,
  BIND_IP: 2,
  RESOLVE_IP: 3,
  RESOLVE_ROUTE: 4,
  QUERY_ROUTE: 5,
  CONNECT: 6,
  LISTEN: 7,
  ACCEPT: 8,
  REJECT: 9,
  DISCONNECT: 10,
  INIT_QP_ATTR: 11,
  GET_EVENT: 12,
  GET_OPTION: 13,
  SET_OPTION: 14,
  NOTIFY: 15,
  JOIN_IP_MCAST: 16,
  LEAVE_MCAST: 17,
  MIGRATE_ID: 18,
  QUERY: 19,
  BIND: 20,
  RESOLVE_ADDR: 21,
  JOIN_MCAST: 22,
} as const;
export type UcmaCmd = (typeof UcmaCmd)[keyof typeof UcmaCmd];

/**
 * softverbs' own: the event stream's token, and the first frame of the event stream connection; for a C program's
 * file, the first frame of its command connection (the file's token; replies are `sv_ucma_reply` from then on) and
 * of its notification stream.
 */
export const SvUcmaCmd = {
  EVENT_TOKEN: 0xf3,
  ATTACH_EVENTS: 0xf4,
  NOTIFY_TOKEN: 0xf5,
  ATTACH_NOTIFY: 0xf6,
} as const;
export type SvUcmaCmd = (typeof SvUcmaCmd)[keyof typeof SvUcmaCmd];

/**
 * softverbs' record on a TypeScript file's event stream (no rdma_cm event has this value): MIGRATE_ID took the id
 * (`id`, `uid`) to another file, and every event of it that this stream will ever carry came before this record.
 * The library moves those to the new channel (the kernel moves an id's unread events with it).
 */
export const SV_EVENT_MIGRATED = 0x53564d49;

/** enum rdma_ucm_port_space (the service ID's bytes 4 and 5) */
export const PortSpace = { IPOIB: 0x0002, IB: 0x013f, TCP: 0x0106, UDP: 0x0111 } as const;
export type PortSpace = (typeof PortSpace)[keyof typeof PortSpace];

/** RDMA_USER_CM_QUERY_* */
export const QueryOption = { ADDR: 0, PATH: 1, GID: 2 } as const;
export type QueryOption = (typeof QueryOption)[keyof typeof QueryOption];

/** rdma_set_option's levels and names (rdma_user_cm.h RDMA_OPTION_*) */
export const RdmaOption = { ID: 0, IB: 1, ID_TOS: 0, ID_REUSEADDR: 1, ID_AFONLY: 2, ID_ACK_TIMEOUT: 3, IB_PATH: 1 } as const;

/** enum rdma_cm_event_type (librdmacm's RDMA_CM_EVENT_*) */
export const CmEventType = {
  ADDR_RESOLVED: 0,
  ADDR_ERROR: 1,
  ROUTE_RESOLVED: 2,
  ROUTE_ERROR: 3,
  CONNECT_REQUEST: 4,
  CONNECT_RESPONSE: 5,
  CONNECT_ERROR: 6,
  UNREACHABLE: 7,
  REJECTED: 8,
  ESTABLISHED: 9,
  DISCONNECTED: 10,
  DEVICE_REMOVAL: 11,
  MULTICAST_JOIN: 12,
  MULTICAST_ERROR: 13,
  ADDR_CHANGE: 14,
  TIMEWAIT_EXIT: 15,
} as const;
export type CmEventType = (typeof CmEventType)[keyof typeof CmEventType];

/** rdma_event_str(): the names librdmacm prints. */
export function cmEventStr(e: number): string {
  const k = Object.keys(CmEventType).find((n) => CmEventType[n as keyof typeof CmEventType] === e);
  return k ? `RDMA_CM_EVENT_${k}` : 'UNKNOWN EVENT';
}

export const UCMA_HDR = struct('rdma_ucm_cmd_hdr', [['cmd', 'u32'], ['in', 'u16'], ['out', 'u16']]);
export const UCMA_HDR_SIZE = 8;

/** struct __kernel_sockaddr_storage: the family, then the address as sockaddr_in / sockaddr_in6 lay it out (network order). */
export const SOCKADDR_STORAGE = struct('__kernel_sockaddr_storage', [['bytes', { bytes: 128 }]]);
export const SOCKADDR_IN6 = struct('sockaddr_in6', [['bytes', { bytes: 28 }]]);

const resp = ['response', 'u64'] as const;

export const CREATE_ID = struct('rdma_ucm_create_id', [['uid', 'u64'], resp, ['ps', 'u16'], ['qp_type', 'u8'], ['reserved', { bytes: 5 }]]);
export const CREATE_ID_RESP = struct('rdma_ucm_create_id_resp', [['id', 'u32']]);
export const DESTROY_ID = struct('rdma_ucm_destroy_id', [resp, ['id', 'u32'], ['reserved', 'u32']]);
export const DESTROY_ID_RESP = struct('rdma_ucm_destroy_id_resp', [['events_reported', 'u32']]);
export const BIND = struct('rdma_ucm_bind', [['id', 'u32'], ['addr_size', 'u16'], ['reserved', 'u16'], ['addr', SOCKADDR_STORAGE]]);
export const RESOLVE_ADDR = struct('rdma_ucm_resolve_addr', [
  ['id', 'u32'], ['timeout_ms', 'u32'], ['src_size', 'u16'], ['dst_size', 'u16'], ['reserved', 'u32'],
  ['src_addr', SOCKADDR_STORAGE], ['dst_addr', SOCKADDR_STORAGE],
]);
/** The IP-only forms librdmacm uses when the kernel cannot bind AF_IB (ours cannot): addresses as sockaddr_in6 room. */
export const BIND_IP = struct('rdma_ucm_bind_ip', [resp, ['addr', SOCKADDR_IN6], ['id', 'u32']]);
export const RESOLVE_IP = struct('rdma_ucm_resolve_ip', [['src_addr', SOCKADDR_IN6], ['dst_addr', SOCKADDR_IN6], ['id', 'u32'], ['timeout_ms', 'u32']]);
export const RESOLVE_ROUTE = struct('rdma_ucm_resolve_route', [['id', 'u32'], ['timeout_ms', 'u32']]);
export const QUERY = struct('rdma_ucm_query', [resp, ['id', 'u32'], ['option', 'u32']]);
export const QUERY_ADDR_RESP = struct('rdma_ucm_query_addr_resp', [
  ['node_guid', 'u64'], ['port_num', 'u8'], ['reserved', 'u8'], ['pkey', 'u16'], ['src_size', 'u16'], ['dst_size', 'u16'],
  ['src_addr', SOCKADDR_STORAGE], ['dst_addr', SOCKADDR_STORAGE], ['ibdev_index', 'u32'], ['reserved1', 'u32'],
]);
/** struct ib_user_path_rec (ib_user_sa.h); dlid, slid, flow_label and pkey are big-endian. */
export const USER_PATH_REC = struct('ib_user_path_rec', [
  ['dgid', { bytes: 16 }], ['sgid', { bytes: 16 }], ['dlid', 'u16'], ['slid', 'u16'], ['raw_traffic', 'u32'], ['flow_label', 'u32'],
  ['reversible', 'u32'], ['mtu', 'u32'], ['pkey', 'u16'], ['hop_limit', 'u8'], ['traffic_class', 'u8'], ['numb_path', 'u8'], ['sl', 'u8'],
  ['mtu_selector', 'u8'], ['rate_selector', 'u8'], ['rate', 'u8'], ['packet_life_time_selector', 'u8'], ['packet_life_time', 'u8'], ['preference', 'u8'],
]);
/** QUERY_ROUTE's answer (its request is rdma_ucm_query; option unused). node_guid is big-endian. */
export const QUERY_ROUTE_RESP = struct('rdma_ucm_query_route_resp', [
  ['node_guid', 'u64'], ['ib_route0', USER_PATH_REC], ['ib_route1', USER_PATH_REC], ['src_addr', SOCKADDR_IN6], ['dst_addr', SOCKADDR_IN6],
  ['num_paths', 'u32'], ['port_num', 'u8'], ['reserved', { bytes: 3 }], ['ibdev_index', 'u32'], ['reserved1', 'u32'],
]);
export const CONN_PARAM = struct('rdma_ucm_conn_param', [
  ['qp_num', 'u32'], ['qkey', 'u32'], ['private_data', { bytes: RDMA_MAX_PRIVATE_DATA }], ['private_data_len', 'u8'], ['srq', 'u8'],
  ['responder_resources', 'u8'], ['initiator_depth', 'u8'], ['flow_control', 'u8'], ['retry_count', 'u8'], ['rnr_retry_count', 'u8'], ['valid', 'u8'],
]);
export const UD_PARAM = struct('rdma_ucm_ud_param', [
  ['qp_num', 'u32'], ['qkey', 'u32'], ['ah_attr', AH_ATTR], ['private_data', { bytes: RDMA_MAX_PRIVATE_DATA }], ['private_data_len', 'u8'], ['reserved', { bytes: 7 }],
]);
export const ECE = struct('rdma_ucm_ece', [['vendor_id', 'u32'], ['attr_mod', 'u32']]);
export const CONNECT = struct('rdma_ucm_connect', [['conn_param', CONN_PARAM], ['id', 'u32'], ['reserved', 'u32'], ['ece', ECE]]);
export const LISTEN = struct('rdma_ucm_listen', [['id', 'u32'], ['backlog', 'u32']]);
export const ACCEPT = struct('rdma_ucm_accept', [['uid', 'u64'], ['conn_param', CONN_PARAM], ['id', 'u32'], ['reserved', 'u32'], ['ece', ECE]]);
export const REJECT = struct('rdma_ucm_reject', [['id', 'u32'], ['private_data_len', 'u8'], ['reason', 'u8'], ['reserved', { bytes: 2 }], ['private_data', { bytes: RDMA_MAX_PRIVATE_DATA }]]);
export const DISCONNECT = struct('rdma_ucm_disconnect', [['id', 'u32']]);
export const INIT_QP_ATTR = struct('rdma_ucm_init_qp_attr', [resp, ['id', 'u32'], ['qp_state', 'u32']]);
/** struct ib_uverbs_qp_attr (ib_user_verbs.h): INIT_QP_ATTR's answer. */
export const QP_ATTR = struct('ib_uverbs_qp_attr', [
  ['qp_attr_mask', 'u32'], ['qp_state', 'u32'], ['cur_qp_state', 'u32'], ['path_mtu', 'u32'], ['path_mig_state', 'u32'], ['qkey', 'u32'],
  ['rq_psn', 'u32'], ['sq_psn', 'u32'], ['dest_qp_num', 'u32'], ['qp_access_flags', 'u32'], ['ah_attr', AH_ATTR], ['alt_ah_attr', AH_ATTR],
  ['max_send_wr', 'u32'], ['max_recv_wr', 'u32'], ['max_send_sge', 'u32'], ['max_recv_sge', 'u32'], ['max_inline_data', 'u32'],
  ['pkey_index', 'u16'], ['alt_pkey_index', 'u16'], ['en_sqd_async_notify', 'u8'], ['sq_draining', 'u8'], ['max_rd_atomic', 'u8'],
  ['max_dest_rd_atomic', 'u8'], ['min_rnr_timer', 'u8'], ['port_num', 'u8'], ['timeout', 'u8'], ['retry_cnt', 'u8'], ['rnr_retry', 'u8'],
  ['alt_port_num', 'u8'], ['alt_timeout', 'u8'], ['reserved', { bytes: 5 }],
]);
/** What INIT_QP_ATTR answers: the attributes (and their mask) that move a QP to the state asked for. */
export type InitQpAttr = Input<typeof QP_ATTR>;
export const NOTIFY = struct('rdma_ucm_notify', [['id', 'u32'], ['event', 'u32']]);
export const SET_OPTION = struct('rdma_ucm_set_option', [['optval', 'u64'], ['id', 'u32'], ['level', 'u32'], ['optname', 'u32'], ['optlen', 'u32']]);
/** The union of rdma_ucm_event_resp: conn or ud parameters, 4-byte aligned (decoded with CONN_PARAM or UD_PARAM at its offset). */
export const EVENT_PARAM_SIZE = Math.max(layout(CONN_PARAM).size, layout(UD_PARAM).size);
export const EVENT_RESP = struct('rdma_ucm_event_resp', [
  ['uid', 'u64'], ['id', 'u32'], ['event', 'u32'], ['status', 's32'], ['param', { bytes: EVENT_PARAM_SIZE }], ['reserved', 'u32'], ['ece', ECE],
]);
export const EVENT_RESP_SIZE = layout(EVENT_RESP).size;
/** The oldest size of rdma_ucm_event_resp GET_EVENT still answers into (without the trailing reserved and ece), as the kernel does. */
export const EVENT_RESP_MIN = EVENT_RESP_SIZE - 12;
export const GET_EVENT = struct('rdma_ucm_get_event', [resp]);
/** MIGRATE_ID moves an id to the file the command is written to from the file `fd` names (for a C program's file, the preload puts that file's token there). */
export const MIGRATE_ID = struct('rdma_ucm_migrate_id', [resp, ['id', 'u32'], ['fd', 'u32']]);
export const MIGRATE_RESP = struct('rdma_ucm_migrate_resp', [['events_reported', 'u32']]);
/** The token answered to EVENT_TOKEN and NOTIFY_TOKEN, carried by ATTACH_EVENTS and ATTACH_NOTIFY. */
export const SV_UCMA_TOKEN = struct('sv_ucma_token', [['token', 'u32'], ['reserved', 'u32']]);
/**
 * A reply on a C program's command connection: status and out_bytes as in every reply, then the notification bytes
 * the preload takes off this file's stream (`take`) and off the stream of the file MIGRATE_ID named (`take_old`)
 * before the write() returns; out_bytes of body follow.
 */
export const SV_UCMA_REPLY = struct('sv_ucma_reply', [['status', 's32'], ['out_bytes', 'u32'], ['take', 'u32'], ['take_old', 'u32']]);
export const SV_UCMA_REPLY_SIZE = layout(SV_UCMA_REPLY).size;

export interface UcmaSpec<Q extends StructDef = StructDef, R extends StructDef | undefined = StructDef | undefined> {
  readonly cmd: UcmaCmd;
  readonly name: string;
  readonly req: Q;
  readonly resp: R;
}

function spec<Q extends StructDef, R extends StructDef | undefined = undefined>(name: keyof typeof UcmaCmd, req: Q, resp?: R): UcmaSpec<Q, R> {
  return { cmd: UcmaCmd[name], name, req, resp: resp as R };
}

/** The commands softverbsd serves on the rdma_cm file. */
export const UcmaSpecs = {
  CREATE_ID: spec('CREATE_ID', CREATE_ID, CREATE_ID_RESP),
  DESTROY_ID: spec('DESTROY_ID', DESTROY_ID, DESTROY_ID_RESP),
  BIND: spec('BIND', BIND),
  BIND_IP: spec('BIND_IP', BIND_IP),
  RESOLVE_IP: spec('RESOLVE_IP', RESOLVE_IP),
  QUERY_ROUTE: spec('QUERY_ROUTE', QUERY, QUERY_ROUTE_RESP),
  RESOLVE_ADDR: spec('RESOLVE_ADDR', RESOLVE_ADDR),
  RESOLVE_ROUTE: spec('RESOLVE_ROUTE', RESOLVE_ROUTE),
  QUERY: spec('QUERY', QUERY, QUERY_ADDR_RESP),
  CONNECT: spec('CONNECT', CONNECT),
  LISTEN: spec('LISTEN', LISTEN),
  ACCEPT: spec('ACCEPT', ACCEPT),
  REJECT: spec('REJECT', REJECT),
  DISCONNECT: spec('DISCONNECT', DISCONNECT),
  INIT_QP_ATTR: spec('INIT_QP_ATTR', INIT_QP_ATTR, QP_ATTR),
  NOTIFY: spec('NOTIFY', NOTIFY),
  SET_OPTION: spec('SET_OPTION', SET_OPTION),
  GET_EVENT: spec('GET_EVENT', GET_EVENT, EVENT_RESP),
  MIGRATE_ID: spec('MIGRATE_ID', MIGRATE_ID, MIGRATE_RESP),
} as const;

export type UcmaName = keyof typeof UcmaSpecs;
export type UcmaReq<K extends UcmaName> = Infer<(typeof UcmaSpecs)[K]['req']>;

/** One request frame: the header (in/out as byte counts), then the struct. */
export function ucmaFrame<S extends UcmaSpec>(s: S, req: Input<S['req']>): Buffer {
  const size = layout(s.req).size;
  const b = Buffer.alloc(UCMA_HDR_SIZE + size);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  encode(UCMA_HDR, { cmd: s.cmd, in: size, out: s.resp ? layout(s.resp).size : 0 }, dv);
  encode(s.req, req, dv, UCMA_HDR_SIZE);
  return b;
}

/** rdma_set_option's frame: the struct, then the option's value (which the kernel would copy from optval). */
export function setOptionFrame(id: number, level: number, optname: number, value: Uint8Array): Buffer {
  const f = ucmaFrame(UcmaSpecs.SET_OPTION, { optval: 0n, id, level, optname, optlen: value.length });
  const b = Buffer.concat([f, value]);
  b.writeUInt16LE(b.length - UCMA_HDR_SIZE, 4);
  return b;
}

/** A softverbs frame of the rdma_cm file (EVENT_TOKEN, ATTACH_EVENTS). */
export function ucmaSvFrame(cmd: number, token = 0): Buffer {
  const size = layout(SV_UCMA_TOKEN).size;
  const b = Buffer.alloc(UCMA_HDR_SIZE + size);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  encode(UCMA_HDR, { cmd, in: size, out: cmd === SvUcmaCmd.EVENT_TOKEN || cmd === SvUcmaCmd.NOTIFY_TOKEN ? size : 0 }, dv);
  encode(SV_UCMA_TOKEN, { token }, dv, UCMA_HDR_SIZE);
  return b;
}

/** A request's length from its header: the header and `in` bytes. */
export function ucmaRequestSize(hdr: Buffer): number {
  return UCMA_HDR_SIZE + hdr.readUInt16LE(4);
}

// ---- socket addresses as the structs carry them ----

export const AF_INET = 2;
export const AF_INET6 = 10;

export interface SockAddr {
  family: 4 | 6;
  /** dotted quad or IPv6 text */
  address: string;
  port: number;
}

/** Writes a sockaddr_in / sockaddr_in6 into `b` (its room is zeroed first); the size the kernel would take for it. */
export function writeSockaddr(a: SockAddr, b: Uint8Array): number {
  b.fill(0);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (a.family === 4) {
    dv.setUint16(0, AF_INET, true);
    dv.setUint16(2, a.port);
    a.address.split('.').forEach((o, i) => dv.setUint8(4 + i, Number(o)));
    return 16;
  }
  dv.setUint16(0, AF_INET6, true);
  dv.setUint16(2, a.port);
  b.set(gidOf(a.address), 8);
  return 28;
}

/** Reads a sockaddr; null for a family other than AF_INET / AF_INET6. */
export function readSockaddr(b: Uint8Array): SockAddr | null {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const fam = dv.getUint16(0, true);
  if (fam === AF_INET) return { family: 4, address: `${b[4]}.${b[5]}.${b[6]}.${b[7]}`, port: dv.getUint16(2) };
  if (fam === AF_INET6 && b.length >= 24) return { family: 6, address: v6Text(b.subarray(8, 24)), port: dv.getUint16(2) };
  return null;
}

/** IPv6 text of 16 bytes (an IPv4-mapped address stays IPv6: ::ffff:a.b.c.d). */
function v6Text(b: Uint8Array): string {
  const w: string[] = [];
  for (let i = 0; i < 16; i += 2) w.push(((b[i]! << 8) | b[i + 1]!).toString(16));
  return w.join(':').replace(/(^|:)0(:0)+(:|$)/, '::').replace(/:::+/, '::');
}
