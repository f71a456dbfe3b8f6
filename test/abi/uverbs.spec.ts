/**
 * Struct layouts against the C header. Every offset below was written down
 * by hand from Linux include/uapi/rdma/ib_user_verbs.h (x86-64: natural
 * alignment, tail padding to the largest member), field by field; the
 * layout engine computes its own and they must agree.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { layout, pack, unpack, type StructDef } from '../../src/abi/layout.js';
import { CQE } from '../../src/abi/cq-ring.js';
import { RW } from '../../src/abi/recv-ring.js';
import { SG } from '../../src/abi/ring.js';
import { SW } from '../../src/abi/send-ring.js';
import * as U from '../../src/abi/uverbs.js';
import * as E from '../../src/abi/enums.js';

const expected: Array<[StructDef, number, Record<string, number>]> = [
  [U.CMD_HDR, 8, { command: 0, in_words: 4, out_words: 6 }],
  [U.GET_CONTEXT, 8, { response: 0 }],
  [U.GET_CONTEXT_RESP, 8, { async_fd: 0, num_comp_vectors: 4 }],
  [U.QUERY_DEVICE_RESP, 176, {
    fw_ver: 0, node_guid: 8, sys_image_guid: 16, max_mr_size: 24, page_size_cap: 32, vendor_id: 40, vendor_part_id: 44, hw_ver: 48, max_qp: 52,
    max_qp_wr: 56, device_cap_flags: 60, max_sge: 64, max_sge_rd: 68, max_cq: 72, max_cqe: 76, max_mr: 80, max_pd: 84, max_qp_rd_atom: 88,
    max_ee_rd_atom: 92, max_res_rd_atom: 96, max_qp_init_rd_atom: 100, max_ee_init_rd_atom: 104, atomic_cap: 108, max_ee: 112, max_rdd: 116,
    max_mw: 120, max_raw_ipv6_qp: 124, max_raw_ethy_qp: 128, max_mcast_grp: 132, max_mcast_qp_attach: 136, max_total_mcast_qp_attach: 140,
    max_ah: 144, max_fmr: 148, max_map_per_fmr: 152, max_srq: 156, max_srq_wr: 160, max_srq_sge: 164, max_pkeys: 168, local_ca_ack_delay: 170,
    phys_port_cnt: 171, reserved: 172,
  }],
  [U.QUERY_PORT, 16, { response: 0, port_num: 8, reserved: 9 }],
  [U.QUERY_PORT_RESP, 40, {
    port_cap_flags: 0, max_msg_sz: 4, bad_pkey_cntr: 8, qkey_viol_cntr: 12, gid_tbl_len: 16, pkey_tbl_len: 20, lid: 22, sm_lid: 24, state: 26,
    max_mtu: 27, active_mtu: 28, lmc: 29, max_vl_num: 30, sm_sl: 31, subnet_timeout: 32, init_type_reply: 33, active_width: 34, active_speed: 35,
    phys_state: 36, link_layer: 37, reserved: 38,
  }],
  [U.ALLOC_PD, 8, { response: 0 }],
  [U.ALLOC_PD_RESP, 4, { pd_handle: 0 }],
  [U.DEALLOC_PD, 4, { pd_handle: 0 }],
  [U.REG_MR, 40, { response: 0, start: 8, length: 16, hca_va: 24, pd_handle: 32, access_flags: 36 }],
  [U.REG_MR_RESP, 12, { mr_handle: 0, lkey: 4, rkey: 8 }],
  [U.REREG_MR, 48, { response: 0, mr_handle: 8, flags: 12, start: 16, length: 24, hca_va: 32, pd_handle: 40, access_flags: 44 }],
  [U.REREG_MR_RESP, 8, { lkey: 0, rkey: 4 }],
  [U.DEREG_MR, 4, { mr_handle: 0 }],
  [U.CREATE_COMP_CHANNEL, 8, { response: 0 }],
  [U.CREATE_COMP_CHANNEL_RESP, 4, { fd: 0 }],
  [U.CREATE_CQ, 32, { response: 0, user_handle: 8, cqe: 16, comp_vector: 20, comp_channel: 24, reserved: 28 }],
  [U.CREATE_CQ_RESP, 8, { cq_handle: 0, cqe: 4 }],
  [U.RESIZE_CQ, 16, { response: 0, cq_handle: 8, cqe: 12 }],
  [U.RESIZE_CQ_RESP, 8, { cqe: 0, reserved: 4 }],
  [U.REQ_NOTIFY_CQ, 8, { cq_handle: 0, solicited_only: 4 }],
  [U.DESTROY_CQ, 16, { response: 0, cq_handle: 8, reserved: 12 }],
  [U.DESTROY_CQ_RESP, 8, { comp_events_reported: 0, async_events_reported: 4 }],
  [U.WC, 48, {
    wr_id: 0, status: 8, opcode: 12, vendor_err: 16, byte_len: 20, imm_data: 24, qp_num: 28, src_qp: 32, wc_flags: 36, pkey_index: 40, slid: 42,
    sl: 44, dlid_path_bits: 45, port_num: 46, reserved: 47,
  }],
  [U.GLOBAL_ROUTE, 24, { dgid: 0, flow_label: 16, sgid_index: 20, hop_limit: 21, traffic_class: 22, reserved: 23 }],
  [U.AH_ATTR, 32, { grh: 0, dlid: 24, sl: 26, src_path_bits: 27, static_rate: 28, is_global: 29, port_num: 30, reserved: 31 }],
  [U.CREATE_AH, 56, { response: 0, user_handle: 8, pd_handle: 16, reserved: 20, attr: 24 }],
  [U.CREATE_AH_RESP, 4, { ah_handle: 0 }],
  [U.DESTROY_AH, 4, { ah_handle: 0 }],
  [U.QP_DEST, 32, {
    dgid: 0, flow_label: 16, dlid: 20, reserved: 22, sgid_index: 24, hop_limit: 25, traffic_class: 26, sl: 27, src_path_bits: 28, static_rate: 29,
    is_global: 30, port_num: 31,
  }],
  [U.CREATE_QP, 56, {
    response: 0, user_handle: 8, pd_handle: 16, send_cq_handle: 20, recv_cq_handle: 24, srq_handle: 28, max_send_wr: 32, max_recv_wr: 36,
    max_send_sge: 40, max_recv_sge: 44, max_inline_data: 48, sq_sig_all: 52, qp_type: 53, is_srq: 54, reserved: 55,
  }],
  [U.CREATE_QP_RESP, 32, { qp_handle: 0, qpn: 4, max_send_wr: 8, max_recv_wr: 12, max_send_sge: 16, max_recv_sge: 20, max_inline_data: 24, reserved: 28 }],
  [U.QUERY_QP, 16, { response: 0, qp_handle: 8, attr_mask: 12 }],
  [U.QUERY_QP_RESP, 128, {
    dest: 0, alt_dest: 32, max_send_wr: 64, max_recv_wr: 68, max_send_sge: 72, max_recv_sge: 76, max_inline_data: 80, qkey: 84, rq_psn: 88,
    sq_psn: 92, dest_qp_num: 96, qp_access_flags: 100, pkey_index: 104, alt_pkey_index: 106, qp_state: 108, cur_qp_state: 109, path_mtu: 110,
    path_mig_state: 111, sq_draining: 112, max_rd_atomic: 113, max_dest_rd_atomic: 114, min_rnr_timer: 115, port_num: 116, timeout: 117,
    retry_cnt: 118, rnr_retry: 119, alt_port_num: 120, alt_timeout: 121, sq_sig_all: 122, reserved: 123,
  }],
  [U.MODIFY_QP, 112, {
    dest: 0, alt_dest: 32, qp_handle: 64, attr_mask: 68, qkey: 72, rq_psn: 76, sq_psn: 80, dest_qp_num: 84, qp_access_flags: 88, pkey_index: 92,
    alt_pkey_index: 94, qp_state: 96, cur_qp_state: 97, path_mtu: 98, path_mig_state: 99, en_sqd_async_notify: 100, max_rd_atomic: 101,
    max_dest_rd_atomic: 102, min_rnr_timer: 103, port_num: 104, timeout: 105, retry_cnt: 106, rnr_retry: 107, alt_port_num: 108, alt_timeout: 109,
    reserved: 110,
  }],
  [U.DESTROY_QP, 16, { response: 0, qp_handle: 8, reserved: 12 }],
  [U.DESTROY_QP_RESP, 4, { events_reported: 0 }],
  [U.POST_SEND, 24, { response: 0, qp_handle: 8, wr_count: 12, sge_count: 16, wqe_size: 20 }],
  [U.POST_SEND_RESP, 4, { bad_wr: 0 }],
  [U.CREATE_SRQ, 32, { response: 0, user_handle: 8, pd_handle: 16, max_wr: 20, max_sge: 24, srq_limit: 28 }],
  [U.CREATE_SRQ_RESP, 16, { srq_handle: 0, max_wr: 4, max_sge: 8, srqn: 12 }],
  [U.MODIFY_SRQ, 16, { srq_handle: 0, attr_mask: 4, max_wr: 8, srq_limit: 12 }],
  [U.QUERY_SRQ, 16, { response: 0, srq_handle: 8, reserved: 12 }],
  [U.QUERY_SRQ_RESP, 16, { max_wr: 0, max_sge: 4, srq_limit: 8, reserved: 12 }],
  [U.DESTROY_SRQ, 16, { response: 0, srq_handle: 8, reserved: 12 }],
  [U.DESTROY_SRQ_RESP, 4, { events_reported: 0 }],
  // the extended commands' (their requests start after ib_uverbs_ex_cmd_hdr, which carries the response pointer)
  [U.EX_CMD_HDR, 16, { response: 0, provider_in_words: 8, provider_out_words: 10, cmd_hdr_reserved: 12 }],
  [U.EX_CREATE_CQ, 32, { user_handle: 0, cqe: 8, comp_vector: 12, comp_channel: 16, comp_mask: 20, flags: 24, reserved: 28 }],
  [U.EX_CREATE_CQ_RESP, 16, { base: 0, comp_mask: 8, response_length: 12 }],
  [U.EX_CREATE_QP, 64, {
    user_handle: 0, pd_handle: 8, send_cq_handle: 12, recv_cq_handle: 16, srq_handle: 20, max_send_wr: 24, max_recv_wr: 28, max_send_sge: 32,
    max_recv_sge: 36, max_inline_data: 40, sq_sig_all: 44, qp_type: 45, is_srq: 46, reserved: 47, comp_mask: 48, create_flags: 52,
    rwq_ind_tbl_handle: 56, source_qpn: 60,
  }],
  [U.EX_CREATE_QP_RESP, 40, { base: 0, comp_mask: 32, response_length: 36 }],
  [U.EX_MODIFY_QP, 120, { base: 0, rate_limit: 112, reserved: 116 }],
  [U.EX_MODIFY_QP_RESP, 8, { comp_mask: 0, response_length: 4 }],
  [U.ASYNC_EVENT_DESC, 16, { element: 0, event_type: 8, reserved: 12 }],
  [U.COMP_EVENT_DESC, 8, { cq_handle: 0 }],
  // the softverbs provider's own (the preload library's struct fd_req / fd_resp have these layouts too)
  [U.SV_GET_CONTEXT_RESP, 8, { fd_key: 0, reserved: 4 }],
  [U.SV_REG_MR, 16, { memfd_id: 0, reserved: 4, memfd_offset: 8 }],
  [U.SV_QUEUE, 8, { memfd_id: 0, reserved: 4 }],
  [U.SV_FD_REQ, 16, { op: 0, token: 4, arg: 8 }],
  [U.SV_FD_RESP, 32, { status: 0, text_len: 4, size: 8, offset: 16, id: 24, reserved: 28 }],
];

for (const [def, size, offsets] of expected) {
  test(`${def.name}: sizeof ${size} and every field offset as in ${def.name.startsWith('sv_') ? 'softverbs\'s ABI (and preload.c)' : 'ib_user_verbs.h'}`, () => {
    const l = layout(def);
    assert.equal(l.size, size);
    assert.deepEqual(l.fields.map((f) => f.name), Object.keys(offsets), 'field order');
    for (const [name, off] of Object.entries(offsets)) assert.equal(l.byName.get(name)!.offset, off, `${def.name}.${name}`);
  });
}

test('command numbers are the kernel enum', () => {
  assert.deepEqual(
    [U.Cmd.GET_CONTEXT, U.Cmd.QUERY_DEVICE, U.Cmd.QUERY_PORT, U.Cmd.ALLOC_PD, U.Cmd.DEALLOC_PD, U.Cmd.CREATE_AH, U.Cmd.DESTROY_AH, U.Cmd.REG_MR,
      U.Cmd.REREG_MR, U.Cmd.DEREG_MR, U.Cmd.CREATE_COMP_CHANNEL, U.Cmd.CREATE_CQ, U.Cmd.RESIZE_CQ, U.Cmd.DESTROY_CQ, U.Cmd.REQ_NOTIFY_CQ,
      U.Cmd.CREATE_QP, U.Cmd.QUERY_QP, U.Cmd.MODIFY_QP, U.Cmd.DESTROY_QP, U.Cmd.POST_SEND, U.Cmd.CREATE_SRQ, U.Cmd.MODIFY_SRQ, U.Cmd.QUERY_SRQ,
      U.Cmd.DESTROY_SRQ],
    [0, 1, 2, 3, 4, 5, 8, 9, 11, 13, 17, 18, 19, 20, 23, 24, 25, 26, 27, 28, 32, 33, 34, 35],
  );
  assert.equal(U.ABI_VERSION, 6);
  assert.deepEqual([U.ExCmd.QUERY_DEVICE, U.ExCmd.CREATE_CQ, U.ExCmd.CREATE_QP, U.ExCmd.MODIFY_QP], [1, 18, 24, 26]);
  assert.deepEqual([U.ExCqFlags.TIMESTAMP_COMPLETION, U.ExCqFlags.IGNORE_OVERRUN, U.CREATE_QP_MASK_IND_TABLE], [1, 2, 1]);
});

test('encode/decode round-trips every field, little-endian', () => {
  const v = { response: 0x1122334455667788n, user_handle: 42n, cqe: 0xdeadbeef, comp_vector: 7, comp_channel: -1, reserved: 0 };
  const b = pack(U.CREATE_CQ, v);
  assert.equal(b.length, 32);
  assert.equal(b.readBigUInt64LE(0), 0x1122334455667788n);
  assert.equal(b.readInt32LE(24), -1);
  assert.deepEqual(unpack(U.CREATE_CQ, b), v);
  const f = U.frame(U.Spec.REG_MR, { start: 4096n, length: 8192n, hca_va: 4096n, pd_handle: 3, access_flags: 7 }, { memfd_id: 9, memfd_offset: 0n });
  assert.equal(f.readUInt32LE(0), U.Cmd.REG_MR);
  assert.equal(f.readUInt16LE(4) * 4, f.length);
  assert.equal(f.length, 8 + 40 + 16);
  assert.equal(f.readUInt16LE(6) * 4, 12 + 0 /* resp */ + 0);
});

test('a struct definition is its type: decoded fields are typed, an unknown field does not compile, the ring layouts come from the same definitions', () => {
  const b = pack(U.CREATE_QP, { qp_type: 2, user_handle: 7n, max_send_wr: 16 });
  const r = unpack(U.CREATE_QP, b);
  const qpType: number = r.qp_type;
  const handle: bigint = r.user_handle;
  // @ts-expect-error a u64 decodes as a bigint, not a number
  const wrong: number = r.user_handle;
  // @ts-expect-error CREATE_QP has no field qp_typo
  pack(U.CREATE_QP, { qp_typo: 2 });
  // @ts-expect-error nor does its decoded value
  assert.equal(r.qp_typo, undefined);
  assert.equal(qpType, 2);
  assert.equal(handle, 7n);
  assert.equal(wrong, 7n);
  const nested = unpack(U.MODIFY_QP, pack(U.MODIFY_QP, { dest: { dgid: new Uint8Array(16).fill(1), hop_limit: 9 } }));
  const dgid: Uint8Array = nested.dest.dgid;
  assert.equal(dgid[15], 1);
  assert.equal(nested.dest.hop_limit, 9);
  // the CQ ring entry is struct ib_uverbs_wc, the WQEs their own structs: offsets() of them is what both sides use
  assert.deepEqual([CQE.SIZE, CQE.wr_id, CQE.status, CQE.byte_len, CQE.wc_flags, CQE.port_num], [48, 0, 8, 20, 36, 46]);
  assert.deepEqual([SW.SIZE, SW.opcode, SW.remote_addr, SW.compare_add, SW.remote_qkey], [96, 8, 24, 40, 64]);
  assert.deepEqual([RW.SIZE, RW.num_sge, SG.SIZE, SG.lkey], [16, 8, 16, 12]);
});

test('the extended verbs\' enums are <infiniband/verbs.h>\'s (compiled with cc)', () => {
  const rows: Array<[string, number]> = [
    ['IBV_WR_ATOMIC_WRITE', E.WrOpcode.ATOMIC_WRITE], ['IBV_WC_ATOMIC_WRITE', E.WcOpcode.ATOMIC_WRITE],
    ['IBV_WC_STANDARD_FLAGS', E.WC_STANDARD_FLAGS],
    ...Object.entries(E.WcExFlags).map(([k, v]): [string, number] => [`IBV_WC_EX_WITH_${k}`, v]),
    ...Object.entries(E.QpExSendOps).map(([k, v]): [string, number] => [`IBV_QP_EX_WITH_${k}`, v]),
    ...Object.entries(E.QpCreateFlags).map(([k, v]): [string, number] => [`IBV_QP_CREATE_${k}`, v]),
    ...Object.entries(E.CreateCqAttrFlags).map(([k, v]): [string, number] => [`IBV_CREATE_CQ_ATTR_${k}`, v]),
  ];
  const src = `#include <stdio.h>\n#include <infiniband/verbs.h>\nint main(void) {\n${rows.map(([c]) => `  printf("${c} %lld\\n", (long long)${c});`).join('\n')}\n  return 0;\n}\n`;
  const dir = mkdtempSync(join(tmpdir(), 'verbs-enums-'));
  try {
    writeFileSync(join(dir, 'enums.c'), src);
    const cc = spawnSync('cc', ['-o', join(dir, 'enums'), join(dir, 'enums.c')], { encoding: 'utf8' });
    if ((cc.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') assert.fail('this check compiles C against <infiniband/verbs.h>: install a C compiler and libibverbs-dev');
    assert.equal(cc.status, 0, `cc failed:\n${cc.stderr}`);
    const run = spawnSync(join(dir, 'enums'), { encoding: 'utf8' });
    assert.deepEqual(run.stdout.trim().split('\n'), rows.map(([c, v]) => `${c} ${v}`));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
