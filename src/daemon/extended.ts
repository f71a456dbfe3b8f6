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
import { queryDevice } from './cmd/device.js';
import type { Context } from './context.js';

const EX_HDR = offsets(U.EX_CMD_HDR);
/** both headers: where the core request starts */
const HEADERS = U.HDR_SIZE + EX_HDR.SIZE;
const QUERY_DEVICE_RESP = offsets(U.QUERY_DEVICE_RESP);
const EX_QUERY_DEVICE_RESP = layout(U.EX_QUERY_DEVICE_RESP);
/** the least response the kernel accepts: up to and including response_length (its UAPI_DEF_WRITE_IO_EX) */
const EX_QUERY_DEVICE_RESP_MIN = offsets(U.EX_QUERY_DEVICE_RESP).response_length + 4;

/** What an extended command needs from its context. */
interface ExMethod {
  readonly name: string;
  /** least core request and response sizes (ENOSPC below them, as verify_hdr says) */
  readonly reqSize: number;
  readonly respSize: number;
  run(ctx: Context, core: Buffer, outBytes: number): Buffer;
}

const METHODS: ReadonlyMap<number, ExMethod> = new Map([
  [U.ExCmd.QUERY_DEVICE, { name: 'EX_QUERY_DEVICE', reqSize: layout(U.EX_QUERY_DEVICE).size, respSize: EX_QUERY_DEVICE_RESP_MIN, run: exQueryDevice }],
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
  return m.run(ctx, core, response === 0n ? 0 : outWords * 8);
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
function exQueryDevice(ctx: Context, core: Buffer, outBytes: number): Buffer {
  const r = unpack(U.EX_QUERY_DEVICE, core);
  if (r.comp_mask !== 0) fail(E.EINVAL, `EX_QUERY_DEVICE: comp_mask 0x${r.comp_mask.toString(16)} is not zero`);
  if (r.reserved !== 0) fail(E.EINVAL, 'EX_QUERY_DEVICE: reserved is not zero');
  checkTail('EX_QUERY_DEVICE', core, layout(U.EX_QUERY_DEVICE).size);
  const base = queryDevice(ctx);
  const resp = pack(U.EX_QUERY_DEVICE_RESP, {
    response_length: Math.min(outBytes, EX_QUERY_DEVICE_RESP.size),
    device_cap_flags_ex: BigInt(base.readUInt32LE(QUERY_DEVICE_RESP.device_cap_flags)) | U.DEVICE_ATOMIC_WRITE,
  });
  base.copy(resp, 0);
  return resp.subarray(0, Math.min(outBytes, resp.length));
}
