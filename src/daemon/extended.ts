/**
 * Extended commands (IB_USER_VERBS_CMD_FLAG_EXTENDED), as a C program's
 * write() gives them: ib_uverbs_cmd_hdr, ib_uverbs_ex_cmd_hdr, the core
 * request, the provider's udata. The preload forwards the whole buffer in a
 * WRITE_EX frame; it is checked here as the kernel's ib_uverbs_write and
 * verify_hdr check it, with the kernel's errnos, and answered with exactly
 * the response bytes the caller's `response` pointer receives.
 */
import { layout, offsets, pack, unpack } from '../abi/layout.js';
import * as U from '../abi/uverbs.js';
import { E, fail } from '../common/errno.js';
import { QpAttrMask, QpType } from '../abi/enums.js';
import { newCq } from './cmd/cq.js';
import { queryDevice } from './cmd/device.js';
import { modifyQp, newQp, QP_ATTR_STANDARD_BITS } from './cmd/qp.js';
import type { Context } from './context.js';

const EX_HDR = offsets(U.EX_CMD_HDR);
/** both headers: where the core request starts */
const HEADERS = U.HDR_SIZE + EX_HDR.SIZE;
const QUERY_DEVICE_RESP = offsets(U.QUERY_DEVICE_RESP);
const EX_QUERY_DEVICE_RESP = layout(U.EX_QUERY_DEVICE_RESP);
/** the least response the kernel accepts: up to and including response_length (its UAPI_DEF_WRITE_IO_EX) */
const EX_QUERY_DEVICE_RESP_MIN = offsets(U.EX_QUERY_DEVICE_RESP).response_length + 4;
const EX_CREATE_CQ_RESP_SIZE = layout(U.EX_CREATE_CQ_RESP).size;
const EX_CREATE_QP_RESP = offsets(U.EX_CREATE_QP_RESP);
const EX_CREATE_QP_RESP_SIZE = EX_CREATE_QP_RESP.SIZE;
const EX_MODIFY_QP_RESP_SIZE = layout(U.EX_MODIFY_QP_RESP).size;

/** What an extended command needs from its context. */
interface ExMethod {
  readonly name: string;
  /** least core request and response sizes (ENOSPC below them, as verify_hdr says) */
  readonly reqSize: number;
  readonly respSize: number;
  /**
   * Runs it on the core request and the provider's request udata; returns what the response pointer gets: the
   * core response in `outBytes` (zero-filled past the struct, as uverbs_response does), then the provider's
   * response udata in at most `udataOut` bytes.
   */
  run(ctx: Context, core: Buffer, outBytes: number, udataIn: Buffer, udataOut: number): Buffer;
}

/** offsetofend(struct, member): the kernel's least request or response of an extended command (UAPI_DEF_WRITE_IO_EX). */
function fieldEnd(def: Parameters<typeof offsets>[0], member: string): number {
  const l = layout(def);
  const i = l.fields.findIndex((x) => x.name === member);
  return i + 1 < l.fields.length ? l.fields[i + 1]!.offset : l.size;
}

const METHODS: ReadonlyMap<number, ExMethod> = new Map([
  [U.ExCmd.QUERY_DEVICE, { name: 'EX_QUERY_DEVICE', reqSize: layout(U.EX_QUERY_DEVICE).size, respSize: EX_QUERY_DEVICE_RESP_MIN, run: exQueryDevice }],
  [U.ExCmd.CREATE_CQ, { name: 'EX_CREATE_CQ', reqSize: fieldEnd(U.EX_CREATE_CQ, 'reserved'), respSize: fieldEnd(U.EX_CREATE_CQ_RESP, 'response_length'), run: exCreateCq }],
  [U.ExCmd.CREATE_QP, { name: 'EX_CREATE_QP', reqSize: fieldEnd(U.EX_CREATE_QP, 'comp_mask'), respSize: fieldEnd(U.EX_CREATE_QP_RESP, 'response_length'), run: exCreateQp }],
  [U.ExCmd.MODIFY_QP, { name: 'EX_MODIFY_QP', reqSize: fieldEnd(U.EX_MODIFY_QP, 'base'), respSize: fieldEnd(U.EX_MODIFY_QP_RESP, 'response_length'), run: exModifyQp }],
]);

/**
 * Runs the extended command carried by a WRITE_EX frame and returns the bytes for its `response` pointer.
 * Throws CmdError for an errno reply.
 */
export function extendedWrite(ctx: Context, frame: Buffer): Buffer {
  const w = frame.subarray(U.HDR_SIZE); // what the program wrote
  if (w.length < HEADERS) fail(E.EINVAL, `extended command: ${w.length} bytes is shorter than its two headers`);
  const command = w.readUInt32LE(0);
  if ((command & ~(U.CMD_FLAG_EXTENDED | U.CMD_COMMAND_MASK)) >>> 0 !== 0 || !(command & U.CMD_FLAG_EXTENDED)) fail(E.EINVAL, `extended command: command 0x${(command >>> 0).toString(16)} is not one`);
  const m = METHODS.get(command & U.CMD_COMMAND_MASK);
  if (!m) fail(E.EOPNOTSUPP, `extended command ${command & U.CMD_COMMAND_MASK} is not supported`);
  const inWords = w.readUInt16LE(4);
  const outWords = w.readUInt16LE(6);
  const response = w.readBigUInt64LE(U.HDR_SIZE + EX_HDR.response);
  const providerIn = w.readUInt16LE(U.HDR_SIZE + EX_HDR.provider_in_words);
  const providerOut = w.readUInt16LE(U.HDR_SIZE + EX_HDR.provider_out_words);
  if ((inWords + providerIn) * 8 !== w.length - HEADERS) fail(E.EINVAL, `${m.name}: in_words ${inWords} + provider_in_words ${providerIn} do not make the ${w.length - HEADERS} bytes written`);
  if (inWords * 8 < m.reqSize) fail(E.ENOSPC, `${m.name}: in_words ${inWords} is shorter than the command`);
  if (w.readUInt32LE(U.HDR_SIZE + EX_HDR.cmd_hdr_reserved) !== 0) fail(E.EINVAL, `${m.name}: cmd_hdr_reserved is not zero`);
  if (response !== 0n) {
    if (!outWords && !providerOut) fail(E.EINVAL, `${m.name}: a response pointer with no room behind it`);
    if (outWords * 8 < m.respSize) fail(E.ENOSPC, `${m.name}: out_words ${outWords} is shorter than the response`);
  } else if (outWords || providerOut) fail(E.EINVAL, `${m.name}: room for a response but no response pointer`);
  const core = w.subarray(HEADERS, HEADERS + inWords * 8);
  const udataIn = w.subarray(HEADERS + inWords * 8);
  return response === 0n ? m.run(ctx, core, 0, udataIn, 0) : m.run(ctx, core, outWords * 8, udataIn, providerOut * 8);
}

/** Request bytes past the struct this kernel knows must be zero (ib_is_buffer_cleared), else EOPNOTSUPP. */
function checkTail(name: string, core: Buffer, known: number): void {
  for (let i = known; i < core.length; i++) if (core[i] !== 0) fail(E.EOPNOTSUPP, `${name}: request bytes past offset ${known} are not understood`);
}

/**
 * ib_uverbs_ex_query_device: the legacy attributes plus what the extended struct adds. softverbs has no
 * ODP, timestamps, RSS, WQs, tag matching or CQ moderation, so those stay zero as on Linux rxe;
 * device_cap_flags_ex is the full capability word, with rxe ≥ 6.2's ATOMIC_WRITE, which the engines do. At most the struct goes back, however much room the
 * caller offered (rdma-core zeroes its buffer before the write, as the kernel would zero the rest).
 */
function exQueryDevice(ctx: Context, core: Buffer, outBytes: number, udataIn: Buffer): Buffer {
  const r = unpack(U.EX_QUERY_DEVICE, core);
  if (r.comp_mask !== 0) fail(E.EINVAL, `EX_QUERY_DEVICE: comp_mask 0x${r.comp_mask.toString(16)} is not zero`);
  if (r.reserved !== 0) fail(E.EINVAL, 'EX_QUERY_DEVICE: reserved is not zero');
  checkTail('EX_QUERY_DEVICE', core, layout(U.EX_QUERY_DEVICE).size);
  noUdata('EX_QUERY_DEVICE', udataIn);
  const base = queryDevice(ctx);
  const resp = pack(U.EX_QUERY_DEVICE_RESP, {
    response_length: Math.min(outBytes, EX_QUERY_DEVICE_RESP.size),
    device_cap_flags_ex: BigInt(base.readUInt32LE(QUERY_DEVICE_RESP.device_cap_flags)) | U.DEVICE_ATOMIC_WRITE,
  });
  base.copy(resp, 0);
  return resp.subarray(0, Math.min(outBytes, resp.length));
}

/** A command whose provider takes no request udata: what is there must be zero (as the legacy commands' trailing bytes). */
function noUdata(name: string, udataIn: Buffer): void {
  for (let i = 0; i < udataIn.length; i++) if (udataIn[i] !== 0) fail(E.EINVAL, `${name}: ${udataIn.length} bytes of provider data not understood`);
}

/**
 * Decodes the provider's request udata for the core command it extends (ours: the memfd behind the rings), runs
 * `fn` with it, and drops the memfd it names whatever the outcome, as the legacy dispatch does.
 */
function withUdata<K extends 'CREATE_CQ' | 'CREATE_QP', T>(ctx: Context, name: K, udataIn: Buffer, fn: (u: U.Udata<K> | null) => T): T {
  const def = ctx.provider.reqUdata(U.Spec[name]);
  let u: object | null = null;
  let rest = 0;
  if (def && udataIn.length >= layout(def).size) {
    u = unpack(def, udataIn, 0);
    rest = layout(def).size;
  }
  const memfd = u ? ctx.provider.memfdOf?.(u) ?? 0 : 0;
  try {
    noUdata(`EX_${name}`, udataIn.subarray(rest));
    return fn(u as U.Udata<K> | null);
  } finally {
    if (memfd) ctx.dropMemfd(memfd);
  }
}

/** The core response in the caller's room (zero past the struct), then the provider's udata (at most its room). */
function answer(core: Buffer, outBytes: number, udata: Buffer, udataOut: number): Buffer {
  const out = Buffer.alloc(outBytes + Math.min(udata.length, udataOut));
  core.copy(out, 0, 0, Math.min(core.length, outBytes));
  udata.copy(out, outBytes, 0, Math.min(udata.length, udataOut));
  return out;
}

/**
 * ib_uverbs_ex_create_cq: CREATE_CQ with comp_mask (none defined: EINVAL) and flags. rxe's create_cq takes no
 * flag (EOPNOTSUPP: a timestamped or overrun-ignoring CQ is not supported, and libibverbs and its callers fall
 * back on exactly that) and wants room for its mminfo (EINVAL), both before anything is made.
 */
function exCreateCq(ctx: Context, core: Buffer, outBytes: number, udataIn: Buffer, udataOut: number): Buffer {
  // the memfd the udata names is the command's whatever its outcome, a refusal's too
  return withUdata(ctx, 'CREATE_CQ', udataIn, (u) => createCqEx(ctx, core, outBytes, u, udataOut));
}

function createCqEx(ctx: Context, core: Buffer, outBytes: number, u: U.Udata<'CREATE_CQ'> | null, udataOut: number): Buffer {
  checkTail('EX_CREATE_CQ', core, layout(U.EX_CREATE_CQ).size);
  const r = unpack(U.EX_CREATE_CQ, core);
  if (r.comp_mask !== 0) fail(E.EINVAL, `EX_CREATE_CQ: comp_mask 0x${r.comp_mask.toString(16)} is not zero`);
  if (r.reserved !== 0) fail(E.EINVAL, 'EX_CREATE_CQ: reserved is not zero');
  if (r.comp_vector !== 0) fail(E.EINVAL, `EX_CREATE_CQ: comp_vector ${r.comp_vector} (the device has 1)`);
  if (udataOut < ctx.provider.createRespUdata.cq) fail(E.EINVAL, `EX_CREATE_CQ: ${udataOut} bytes of provider response room, the ${ctx.provider.name} provider answers ${ctx.provider.createRespUdata.cq}`);
  if (r.flags !== 0) fail(E.EOPNOTSUPP, `EX_CREATE_CQ: flags 0x${r.flags.toString(16)} (completion timestamps, ignoring overrun) are not supported`);
  const made = newCq(ctx, r, u);
  const resp = pack(U.EX_CREATE_CQ_RESP, {
    base: { cq_handle: made.handle, cqe: made.cqe }, comp_mask: 0, response_length: Math.min(outBytes, EX_CREATE_CQ_RESP_SIZE),
  });
  return answer(resp, outBytes, made.udata, udataOut);
}

/** The QP types the kernel's create_qp knows (any other is EINVAL there; softverbs makes RC, UC and UD). */
const KNOWN_QP_TYPES: ReadonlySet<number> = new Set([QpType.RC, QpType.UC, QpType.UD, QpType.RAW_PACKET, QpType.XRC_SEND, QpType.XRC_RECV, QpType.DRIVER]);
const CREATE_FLAGS_KNOWN = Object.values(U.QpCreateFlags).reduce((a, b) => a | b, 0);

/**
 * ib_uverbs_ex_create_qp: CREATE_QP with comp_mask (an RSS indirection table: softverbs has no WQs, so no table
 * handle names one: EINVAL), create_flags (a bit the kernel does not know: EINVAL; SOURCE_QPN without
 * CAP_NET_RAW, which only root has here: EPERM; any other: rxe's create_qp takes none, EOPNOTSUPP) and
 * source_qpn. The checks run in the kernel's order, each before anything is made.
 */
function exCreateQp(ctx: Context, core: Buffer, outBytes: number, udataIn: Buffer, udataOut: number): Buffer {
  return withUdata(ctx, 'CREATE_QP', udataIn, (u) => createQpEx(ctx, core, outBytes, u, udataOut));
}

function createQpEx(ctx: Context, core: Buffer, outBytes: number, u: U.Udata<'CREATE_QP'> | null, udataOut: number): Buffer {
  checkTail('EX_CREATE_QP', core, layout(U.EX_CREATE_QP).size);
  // a request that stops at comp_mask (the least the kernel takes) reads as zero past it
  const full = core.length >= layout(U.EX_CREATE_QP).size ? core : Buffer.concat([core, Buffer.alloc(layout(U.EX_CREATE_QP).size - core.length)]);
  const r = unpack(U.EX_CREATE_QP, full);
  if (r.comp_mask & ~U.CREATE_QP_MASK_IND_TABLE) fail(E.EINVAL, `EX_CREATE_QP: comp_mask 0x${r.comp_mask.toString(16)} has bits the kernel does not know`);
  if (r.reserved !== 0) fail(E.EINVAL, 'EX_CREATE_QP: reserved is not zero');
  if (!KNOWN_QP_TYPES.has(r.qp_type)) fail(E.EINVAL, `EX_CREATE_QP: QP type ${r.qp_type} does not exist`);
  if (r.qp_type === QpType.RAW_PACKET && ctx.uid !== 0) fail(E.EPERM, 'EX_CREATE_QP: a raw packet QP needs CAP_NET_RAW');
  if (r.comp_mask & U.CREATE_QP_MASK_IND_TABLE) fail(E.EINVAL, `EX_CREATE_QP: rwq_ind_tbl_handle ${r.rwq_ind_tbl_handle} is no indirection table (softverbs has no WQs)`);
  ctx.get('pd', r.pd_handle);
  ctx.get('cq', r.send_cq_handle, 'send_cq');
  if (r.create_flags & ~CREATE_FLAGS_KNOWN) fail(E.EINVAL, `EX_CREATE_QP: create_flags 0x${r.create_flags.toString(16)} has bits the kernel does not know`);
  if (r.create_flags & U.QpCreateFlags.SOURCE_QPN && ctx.uid !== 0) fail(E.EPERM, 'EX_CREATE_QP: SOURCE_QPN needs CAP_NET_RAW');
  if (udataOut < ctx.provider.createRespUdata.qp) fail(E.EINVAL, `EX_CREATE_QP: ${udataOut} bytes of provider response room, the ${ctx.provider.name} provider answers ${ctx.provider.createRespUdata.qp}`);
  if (r.create_flags !== 0) fail(E.EOPNOTSUPP, `EX_CREATE_QP: create_flags 0x${r.create_flags.toString(16)} are not supported (rxe takes none)`);
  const made = newQp(ctx, r, u);
  const resp = Buffer.concat([made.resp, Buffer.alloc(EX_CREATE_QP_RESP_SIZE - made.resp.length)]);
  resp.writeUInt32LE(Math.min(outBytes, EX_CREATE_QP_RESP_SIZE), EX_CREATE_QP_RESP.response_length);
  return answer(resp, outBytes, made.udata, udataOut);
}

/** ib_uverbs_ex_modify_qp takes the standard attributes and RATE_LIMIT; any other bit is EOPNOTSUPP before anything. */
const EX_MODIFY_MASK = QP_ATTR_STANDARD_BITS | QpAttrMask.RATE_LIMIT;

/**
 * ib_uverbs_ex_modify_qp: MODIFY_QP and a rate limit. rxe's modify_qp takes only the standard attributes
 * (IB_QP_ATTR_STANDARD_BITS): RATE_LIMIT is EOPNOTSUPP there, so rate_limit is never read.
 */
function exModifyQp(ctx: Context, core: Buffer, outBytes: number, udataIn: Buffer): Buffer {
  checkTail('EX_MODIFY_QP', core, layout(U.EX_MODIFY_QP).size);
  noUdata('EX_MODIFY_QP', udataIn);
  const full = core.length >= layout(U.EX_MODIFY_QP).size ? core : Buffer.concat([core, Buffer.alloc(layout(U.EX_MODIFY_QP).size - core.length)]);
  const r = unpack(U.EX_MODIFY_QP, full);
  const mask = r.base.attr_mask;
  if (mask & ~EX_MODIFY_MASK) fail(E.EOPNOTSUPP, `EX_MODIFY_QP: attr_mask 0x${(mask >>> 0).toString(16)} has bits other than the standard ones and RATE_LIMIT`);
  ctx.get('qp', r.base.qp_handle);
  if (mask & QpAttrMask.RATE_LIMIT) fail(E.EOPNOTSUPP, 'EX_MODIFY_QP: RATE_LIMIT is not supported (rxe takes the standard attributes only)');
  modifyQp(ctx, r.base);
  return answer(pack(U.EX_MODIFY_QP_RESP, { comp_mask: 0, response_length: Math.min(outBytes, EX_MODIFY_QP_RESP_SIZE) }), outBytes, Buffer.alloc(0), 0);
}
