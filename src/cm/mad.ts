/**
 * CM MADs (IBA vol. 1 ch. 12, management class 0x07, class version 2): the
 * 24-byte MAD header and each message's 232 bytes as tables of big-endian
 * bit fields, one codec for all of them. Every bit of every message is in
 * its table (reserved bits too, named rsvd*), so what is decoded re-encodes
 * to the same bytes. Also the IP addressing header rdma_cm puts in front of
 * the private data (IBA Annex A11, the kernel's cma_hdr).
 */

export const MAD_SIZE = 256;
export const MAD_HDR_SIZE = 24;
export const CM_DATA_SIZE = MAD_SIZE - MAD_HDR_SIZE;
export const MGMT_CLASS_CM = 0x07;
export const CM_CLASS_VERSION = 2;
export const MAD_BASE_VERSION = 1;
export const METHOD_SEND = 0x03;
/** The GSI's Q_Key (IBA 14.4.1): every CM MAD is a UD SEND to QP1 with it. */
export const GSI_QKEY = 0x80010000;
export const GSI_QPN = 1;

export const CmAttr = {
  REQ: 0x0010,
  MRA: 0x0011,
  REJ: 0x0012,
  REP: 0x0013,
  RTU: 0x0014,
  DREQ: 0x0015,
  DREP: 0x0016,
  SIDR_REQ: 0x0017,
  SIDR_REP: 0x0018,
} as const;
export type CmAttr = (typeof CmAttr)[keyof typeof CmAttr];

/** A bit field: name, byte offset, first bit (0 = the byte's most significant), width (64: a bigint). */
type Bits = readonly [string, number, number, number];
/** A byte array: name, byte offset, 'bytes', length. */
type Bytes = readonly [string, number, 'bytes', number];
type FieldSpec = Bits | Bytes;
type ValueOf<S> = S extends Bytes ? Uint8Array : S extends readonly [string, number, number, 64] ? bigint : number;
/** A decoded message: every field of its table, typed. */
export type Fields<T extends readonly FieldSpec[]> = { [E in T[number] as E[0]]: ValueOf<E> };
/** What encoding takes: any subset of the fields (the rest are zero). */
export type FieldsIn<T extends readonly FieldSpec[]> = Partial<Fields<T>>;

const path = (p: string, o: number) =>
  [
    [`${p}_local_lid`, o, 0, 16],
    [`${p}_remote_lid`, o + 2, 0, 16],
    [`${p}_local_gid`, o + 4, 'bytes', 16],
    [`${p}_remote_gid`, o + 20, 'bytes', 16],
    [`${p}_flow_label`, o + 36, 0, 20],
    [`${p}_rsvd1`, o + 38, 4, 6],
    [`${p}_packet_rate`, o + 39, 2, 6],
    [`${p}_traffic_class`, o + 40, 0, 8],
    [`${p}_hop_limit`, o + 41, 0, 8],
    [`${p}_sl`, o + 42, 0, 4],
    [`${p}_subnet_local`, o + 42, 4, 1],
    [`${p}_rsvd2`, o + 42, 5, 3],
    [`${p}_local_ack_timeout`, o + 43, 0, 5],
    [`${p}_rsvd3`, o + 43, 5, 3],
  ] as const;

const P = path('primary', 52);
const A = path('alternate', 96);

export const REQ = [
  ['local_comm_id', 0, 0, 32],
  ['rsvd0', 4, 0, 32],
  ['service_id', 8, 0, 64],
  ['local_ca_guid', 16, 0, 64],
  ['rsvd1', 24, 0, 32],
  ['local_qkey', 28, 0, 32],
  ['local_qpn', 32, 0, 24],
  ['responder_resources', 35, 0, 8],
  ['local_eecn', 36, 0, 24],
  ['initiator_depth', 39, 0, 8],
  ['remote_eecn', 40, 0, 24],
  ['remote_cm_response_timeout', 43, 0, 5],
  ['transport_service_type', 43, 5, 2],
  ['end_to_end_flow_control', 43, 7, 1],
  ['starting_psn', 44, 0, 24],
  ['local_cm_response_timeout', 47, 0, 5],
  ['retry_count', 47, 5, 3],
  ['pkey', 48, 0, 16],
  ['path_mtu', 50, 0, 4],
  ['rdc_exists', 50, 4, 1],
  ['rnr_retry_count', 50, 5, 3],
  ['max_cm_retries', 51, 0, 4],
  ['srq', 51, 4, 1],
  ['extended_transport_type', 51, 5, 3],
  ...P,
  ...A,
  ['private_data', 140, 'bytes', 92],
] as const;

export const MRA = [
  ['local_comm_id', 0, 0, 32],
  ['remote_comm_id', 4, 0, 32],
  ['message_mraed', 8, 0, 2],
  ['rsvd0', 8, 2, 6],
  ['service_timeout', 9, 0, 5],
  ['rsvd1', 9, 5, 3],
  ['private_data', 10, 'bytes', 222],
] as const;

export const REJ = [
  ['local_comm_id', 0, 0, 32],
  ['remote_comm_id', 4, 0, 32],
  ['message_rejected', 8, 0, 2],
  ['rsvd0', 8, 2, 6],
  ['reject_info_length', 9, 0, 7],
  ['rsvd1', 9, 7, 1],
  ['reason', 10, 0, 16],
  ['ari', 12, 'bytes', 72],
  ['private_data', 84, 'bytes', 148],
] as const;

export const REP = [
  ['local_comm_id', 0, 0, 32],
  ['remote_comm_id', 4, 0, 32],
  ['local_qkey', 8, 0, 32],
  ['local_qpn', 12, 0, 24],
  ['rsvd0', 15, 0, 8],
  ['local_eecn', 16, 0, 24],
  ['rsvd1', 19, 0, 8],
  ['starting_psn', 20, 0, 24],
  ['rsvd2', 23, 0, 8],
  ['responder_resources', 24, 0, 8],
  ['initiator_depth', 25, 0, 8],
  ['target_ack_delay', 26, 0, 5],
  ['failover_accepted', 26, 5, 2],
  ['end_to_end_flow_control', 26, 7, 1],
  ['rnr_retry_count', 27, 0, 3],
  ['srq', 27, 3, 1],
  ['rsvd3', 27, 4, 4],
  ['local_ca_guid', 28, 0, 64],
  ['private_data', 36, 'bytes', 196],
] as const;

export const RTU = [
  ['local_comm_id', 0, 0, 32],
  ['remote_comm_id', 4, 0, 32],
  ['private_data', 8, 'bytes', 224],
] as const;

export const DREQ = [
  ['local_comm_id', 0, 0, 32],
  ['remote_comm_id', 4, 0, 32],
  ['remote_qpn_eecn', 8, 0, 24],
  ['rsvd0', 11, 0, 8],
  ['private_data', 12, 'bytes', 220],
] as const;

export const DREP = [
  ['local_comm_id', 0, 0, 32],
  ['remote_comm_id', 4, 0, 32],
  ['private_data', 8, 'bytes', 224],
] as const;

export const SIDR_REQ = [
  ['request_id', 0, 0, 32],
  ['pkey', 4, 0, 16],
  ['rsvd0', 6, 0, 16],
  ['service_id', 8, 0, 64],
  ['private_data', 16, 'bytes', 216],
] as const;

export const SIDR_REP = [
  ['request_id', 0, 0, 32],
  ['status', 4, 0, 8],
  ['additional_info_length', 5, 0, 8],
  ['rsvd0', 6, 0, 16],
  ['qpn', 8, 0, 24],
  ['rsvd1', 11, 0, 8],
  ['service_id', 12, 0, 64],
  ['qkey', 20, 0, 32],
  ['class_port_info', 24, 'bytes', 72],
  ['private_data', 96, 'bytes', 136],
] as const;

export const LAYOUTS = {
  [CmAttr.REQ]: REQ,
  [CmAttr.MRA]: MRA,
  [CmAttr.REJ]: REJ,
  [CmAttr.REP]: REP,
  [CmAttr.RTU]: RTU,
  [CmAttr.DREQ]: DREQ,
  [CmAttr.DREP]: DREP,
  [CmAttr.SIDR_REQ]: SIDR_REQ,
  [CmAttr.SIDR_REP]: SIDR_REP,
} as const satisfies Record<CmAttr, readonly FieldSpec[]>;

export type Req = Fields<typeof REQ>;
export type Mra = Fields<typeof MRA>;
export type Rej = Fields<typeof REJ>;
export type Rep = Fields<typeof REP>;
export type Rtu = Fields<typeof RTU>;
export type Dreq = Fields<typeof DREQ>;
export type Drep = Fields<typeof DREP>;
export type SidrReq = Fields<typeof SIDR_REQ>;
export type SidrRep = Fields<typeof SIDR_REP>;

/** Private data a consumer may send in each message (the field's size; rdma_cm's IP header takes 36 of REQ's and SIDR_REQ's). */
export const PRIVATE_DATA = { REQ: 92, MRA: 222, REJ: 148, REP: 196, RTU: 224, DREQ: 220, DREP: 224, SIDR_REQ: 216, SIDR_REP: 136 } as const;

/** The common MAD header (IBA 13.4.2). */
export interface MadHdr {
  baseVersion: number;
  mgmtClass: number;
  classVersion: number;
  method: number;
  status: number;
  classSpecific: number;
  tid: bigint;
  attrId: number;
  attrMod: number;
}

export function decodeHdr(b: Uint8Array): MadHdr {
  const dv = new DataView(b.buffer, b.byteOffset, MAD_HDR_SIZE);
  return {
    baseVersion: dv.getUint8(0),
    mgmtClass: dv.getUint8(1),
    classVersion: dv.getUint8(2),
    method: dv.getUint8(3),
    status: dv.getUint16(4),
    classSpecific: dv.getUint16(6),
    tid: dv.getBigUint64(8),
    attrId: dv.getUint16(16),
    attrMod: dv.getUint32(20),
  };
}

function encodeHdr(h: MadHdr, b: Uint8Array): void {
  const dv = new DataView(b.buffer, b.byteOffset, MAD_HDR_SIZE);
  dv.setUint8(0, h.baseVersion);
  dv.setUint8(1, h.mgmtClass);
  dv.setUint8(2, h.classVersion);
  dv.setUint8(3, h.method);
  dv.setUint16(4, h.status);
  dv.setUint16(6, h.classSpecific);
  dv.setBigUint64(8, h.tid);
  dv.setUint16(16, h.attrId);
  dv.setUint16(18, 0);
  dv.setUint32(20, h.attrMod);
}

/** The bytes a bit field spans, as one number (at most 5 bytes: exact in a double). */
function span(b: Uint8Array, off: number, n: number): number {
  let v = 0;
  for (let i = 0; i < n; i++) v = v * 256 + b[off + i]!;
  return v;
}

function getField(b: Uint8Array, f: FieldSpec): number | bigint | Uint8Array {
  const [, off, bit, width] = f;
  if (bit === 'bytes') return b.slice(off, off + width);
  if (width === 64) return new DataView(b.buffer, b.byteOffset).getBigUint64(off);
  const n = Math.ceil((bit + width) / 8);
  const shift = n * 8 - bit - width;
  return Math.floor(span(b, off, n) / 2 ** shift) % 2 ** width;
}

function setField(b: Uint8Array, f: FieldSpec, x: number | bigint | Uint8Array | undefined): void {
  const [, off, bit, width] = f;
  if (bit === 'bytes') {
    b.fill(0, off, off + width);
    if (x instanceof Uint8Array) b.set(x.subarray(0, width), off);
    return;
  }
  if (width === 64) {
    new DataView(b.buffer, b.byteOffset).setBigUint64(off, BigInt.asUintN(64, BigInt((x as number | bigint | undefined) ?? 0)));
    return;
  }
  const n = Math.ceil((bit + width) / 8);
  const shift = n * 8 - bit - width;
  const unit = 2 ** shift;
  const cur = span(b, off, n);
  const old = Math.floor(cur / unit) % 2 ** width;
  const v = Number(x ?? 0) % 2 ** width;
  let w = cur + (v - old) * unit;
  for (let i = n - 1; i >= 0; i--) {
    b[off + i] = w % 256;
    w = Math.floor(w / 256);
  }
}

/** The fields of one message's 232 bytes. */
export function decodeFields<T extends readonly FieldSpec[]>(table: T, data: Uint8Array): Fields<T> {
  const out: Record<string, unknown> = {};
  for (const f of table) out[f[0]] = getField(data, f);
  return out as Fields<T>;
}

/** A whole CM MAD (256 bytes) from a header and one message's fields. */
export function encodeMad<T extends readonly FieldSpec[]>(attrId: CmAttr, tid: bigint, table: T, fields: FieldsIn<T>, out = new Uint8Array(MAD_SIZE)): Uint8Array {
  out.fill(0);
  encodeHdr({ baseVersion: MAD_BASE_VERSION, mgmtClass: MGMT_CLASS_CM, classVersion: CM_CLASS_VERSION, method: METHOD_SEND, status: 0, classSpecific: 0, tid, attrId, attrMod: 0 }, out);
  const data = out.subarray(MAD_HDR_SIZE);
  const v = fields as Record<string, number | bigint | Uint8Array | undefined>;
  for (const f of table) setField(data, f, v[f[0]]);
  return out;
}

/** A decoded CM MAD, or why it is not one we take. */
export type CmMad = { hdr: MadHdr; attr: CmAttr; data: Uint8Array } | { error: string };

/** Checks the header of a MAD that arrived on QP1 and returns it with its message bytes. */
export function parseMad(b: Uint8Array): CmMad {
  if (b.length < MAD_SIZE) return { error: `MAD of ${b.length} bytes (expected ${MAD_SIZE})` };
  const hdr = decodeHdr(b);
  if (hdr.baseVersion !== MAD_BASE_VERSION) return { error: `MAD base version ${hdr.baseVersion}` };
  if (hdr.mgmtClass !== MGMT_CLASS_CM) return { error: `management class 0x${hdr.mgmtClass.toString(16)} (only the CM's, 0x07, is served)` };
  if (hdr.classVersion !== CM_CLASS_VERSION) return { error: `CM class version ${hdr.classVersion}` };
  if (hdr.method !== METHOD_SEND) return { error: `CM method 0x${hdr.method.toString(16)}` };
  if (!(hdr.attrId in LAYOUTS)) return { error: `CM attribute 0x${hdr.attrId.toString(16)}` };
  return { hdr, attr: hdr.attrId as CmAttr, data: b.subarray(MAD_HDR_SIZE, MAD_SIZE) };
}

/** REJ reasons (IBA table 112, as the kernel's ib_cm_rej_reason numbers them). */
export const RejReason = {
  NO_QP: 1,
  NO_EEC: 2,
  NO_RESOURCES: 3,
  TIMEOUT: 4,
  UNSUPPORTED: 5,
  INVALID_COMM_ID: 6,
  INVALID_COMM_INSTANCE: 7,
  INVALID_SERVICE_ID: 8,
  INVALID_TRANSPORT_TYPE: 9,
  STALE_CONN: 10,
  RDC_NOT_EXIST: 11,
  INVALID_GID: 12,
  INVALID_LID: 13,
  INVALID_SL: 14,
  INVALID_TRAFFIC_CLASS: 15,
  INVALID_HOP_LIMIT: 16,
  INVALID_PACKET_RATE: 17,
  INVALID_ALT_GID: 18,
  INVALID_ALT_LID: 19,
  INVALID_ALT_SL: 20,
  INVALID_ALT_TRAFFIC_CLASS: 21,
  INVALID_ALT_HOP_LIMIT: 22,
  INVALID_ALT_PACKET_RATE: 23,
  PORT_CM_REDIRECT: 24,
  PORT_REDIRECT: 25,
  INVALID_MTU: 26,
  INSUFFICIENT_RESP_RESOURCES: 27,
  CONSUMER_DEFINED: 28,
  INVALID_RNR_RETRY: 29,
  DUPLICATE_LOCAL_COMM_ID: 30,
  INVALID_CLASS_VERSION: 31,
  INVALID_FLOW_LABEL: 32,
  INVALID_ALT_FLOW_LABEL: 33,
  VENDOR_OPTION_NOT_SUPPORTED: 35,
} as const;
export type RejReason = (typeof RejReason)[keyof typeof RejReason];

/** Each REJ reason in the kernel's words (ibcm_reject_msg, what rdma_reject_msg gives on IB and RoCE). */
const REJ_REASON_MSG: Record<number, string> = {
  [RejReason.NO_QP]: 'no QP', [RejReason.NO_EEC]: 'no EEC', [RejReason.NO_RESOURCES]: 'no resources', [RejReason.TIMEOUT]: 'timeout',
  [RejReason.UNSUPPORTED]: 'unsupported', [RejReason.INVALID_COMM_ID]: 'invalid comm ID', [RejReason.INVALID_COMM_INSTANCE]: 'invalid comm instance',
  [RejReason.INVALID_SERVICE_ID]: 'invalid service ID', [RejReason.INVALID_TRANSPORT_TYPE]: 'invalid transport type', [RejReason.STALE_CONN]: 'stale conn',
  [RejReason.RDC_NOT_EXIST]: 'RDC not exist', [RejReason.INVALID_GID]: 'invalid GID', [RejReason.INVALID_LID]: 'invalid LID', [RejReason.INVALID_SL]: 'invalid SL',
  [RejReason.INVALID_TRAFFIC_CLASS]: 'invalid traffic class', [RejReason.INVALID_HOP_LIMIT]: 'invalid hop limit', [RejReason.INVALID_PACKET_RATE]: 'invalid packet rate',
  [RejReason.INVALID_ALT_GID]: 'invalid alt GID', [RejReason.INVALID_ALT_LID]: 'invalid alt LID', [RejReason.INVALID_ALT_SL]: 'invalid alt SL',
  [RejReason.INVALID_ALT_TRAFFIC_CLASS]: 'invalid alt traffic class', [RejReason.INVALID_ALT_HOP_LIMIT]: 'invalid alt hop limit',
  [RejReason.INVALID_ALT_PACKET_RATE]: 'invalid alt packet rate', [RejReason.PORT_CM_REDIRECT]: 'port CM redirect', [RejReason.PORT_REDIRECT]: 'port redirect',
  [RejReason.INVALID_MTU]: 'invalid MTU', [RejReason.INSUFFICIENT_RESP_RESOURCES]: 'insufficient resp resources', [RejReason.CONSUMER_DEFINED]: 'consumer defined',
  [RejReason.INVALID_RNR_RETRY]: 'invalid RNR retry', [RejReason.DUPLICATE_LOCAL_COMM_ID]: 'duplicate local comm ID',
  [RejReason.INVALID_CLASS_VERSION]: 'invalid class version', [RejReason.INVALID_FLOW_LABEL]: 'invalid flow label',
  [RejReason.INVALID_ALT_FLOW_LABEL]: 'invalid alt flow label', [RejReason.VENDOR_OPTION_NOT_SUPPORTED]: 'vendor option is not supported',
};

/** A REJ reason in words, as the kernel's rdma_reject_msg() gives it. */
export function rejectMsg(reason: number): string {
  return REJ_REASON_MSG[reason] ?? 'unrecognized reason';
}

/** SIDR_REP status (IBA table 119, the kernel's ib_cm_sidr_status). */
export const SidrStatus = { SUCCESS: 0, UNSUPPORTED: 1, REJECT: 2, NO_QP: 3, REDIRECT: 4, UNSUPPORTED_VERSION: 5 } as const;
export type SidrStatus = (typeof SidrStatus)[keyof typeof SidrStatus];

const SIDR_STATUS_MSG: Record<number, string> = {
  [SidrStatus.SUCCESS]: 'success', [SidrStatus.UNSUPPORTED]: 'service ID not supported', [SidrStatus.REJECT]: 'rejected by the service',
  [SidrStatus.NO_QP]: 'no QP', [SidrStatus.REDIRECT]: 'redirect', [SidrStatus.UNSUPPORTED_VERSION]: 'unsupported version',
};

/** A SIDR_REP status in words (the kernel has no strings for these). */
export function sidrStatusMsg(status: number): string {
  return SIDR_STATUS_MSG[status] ?? 'unrecognized status';
}

/** Which message a REJ or MRA answers (its message_rejected / message_mraed field). */
export const MsgRef = { REQ: 0, REP: 1, OTHER: 2 } as const;
export type MsgRef = (typeof MsgRef)[keyof typeof MsgRef];

/** IBA's 4.096 µs × 2^t, in milliseconds: CM response timeouts, service timeouts, ACK delays. */
export function timeoutMs(t: number): number {
  return Math.ceil((4.096 * 2 ** Math.min(t, 31)) / 1000);
}

// ---- The RDMA IP CM service (IBA Annex A11) ----

/** Service IDs of the RDMA IP CM: 0x0000000001 · port space (16 bits) · port (16 bits). */
export const IP_CM_SERVICE_PREFIX = 0x0000000001000000n;

export function serviceId(ps: number, port: number): bigint {
  return IP_CM_SERVICE_PREFIX | (BigInt(ps & 0xffff) << 16n) | BigInt(port & 0xffff);
}

/** The port space and port a service ID names, or null for a service outside the RDMA IP CM's range. */
export function parseServiceId(sid: bigint): { ps: number; port: number } | null {
  if ((sid & 0xffffffffff000000n) !== IP_CM_SERVICE_PREFIX) return null;
  return { ps: Number((sid >> 16n) & 0xffffn), port: Number(sid & 0xffffn) };
}

export const IP_CM_HDR_SIZE = 36;

/** The IP addressing header at the front of REQ and SIDR_REQ private data (the kernel's cma_hdr). */
export interface IpCmHdr {
  /** 0 (major 0, minor 0) */
  version: number;
  ipVersion: 4 | 6;
  srcPort: number;
  /** 16 bytes: an IPv4 address in the last 4, an IPv6 one whole */
  src: Uint8Array;
  dst: Uint8Array;
}

export function decodeIpCmHdr(pd: Uint8Array): IpCmHdr | null {
  if (pd.length < IP_CM_HDR_SIZE) return null;
  const ipVersion = pd[1]! >> 4;
  if (ipVersion !== 4 && ipVersion !== 6) return null;
  return { version: pd[0]!, ipVersion, srcPort: (pd[2]! << 8) | pd[3]!, src: pd.slice(4, 20), dst: pd.slice(20, 36) };
}

/** The private data of a REQ / SIDR_REQ: the IP CM header, then the consumer's bytes. */
export function ipCmPrivateData(h: IpCmHdr, consumer: Uint8Array, room: number): Uint8Array {
  const pd = new Uint8Array(room);
  pd[0] = h.version;
  pd[1] = h.ipVersion << 4;
  pd[2] = h.srcPort >> 8;
  pd[3] = h.srcPort & 0xff;
  pd.set(h.src.subarray(0, 16), 4);
  pd.set(h.dst.subarray(0, 16), 20);
  pd.set(consumer.subarray(0, room - IP_CM_HDR_SIZE), IP_CM_HDR_SIZE);
  return pd;
}
