/** The device's commands: QUERY_DEVICE (the limits it advertises are the object table's) and QUERY_PORT. */
import { AtomicCap, LinkLayer, PortState } from '../../abi/enums.js';
import { pack } from '../../abi/layout.js';
import { Limits } from '../../abi/queue.js';
import * as U from '../../abi/uverbs.js';
import { E, fail } from '../../common/errno.js';
import { bswap64 } from '../../common/format.js';
import { GID_TBL_LEN, PKEY_TBL_LEN } from '../port-tables.js';
import { McastLimits } from '../../hca/mcast.js';
import type { Context } from '../context.js';
import { deviceMax } from '../object-table.js';
import type { Commands } from './command.js';

/**
 * IBV_DEVICE_* flags. Linux rxe 6.1 reports 0x01223c76; softverbs has MEM_WINDOW (1 << 17),
 * MEM_MGT_EXTENSIONS (1 << 21: local invalidate and send with invalidate; fast registration is a kernel
 * ULP's) and MEM_WINDOW_TYPE_2B (1 << 24) as rxe does, and no SRQ resize (1 << 13), so that bit is off.
 */
const DEVICE_CAP_FLAGS = 0x01221c76;

/** The QUERY_DEVICE response (EX_QUERY_DEVICE's extends it). */
export function queryDevice(ctx: Context): Buffer {
  const d = ctx.dev;
  return pack(U.QUERY_DEVICE_RESP, {
    fw_ver: 0n, node_guid: bswap64(d.nodeGuid), sys_image_guid: bswap64(d.nodeGuid), max_mr_size: BigInt(Limits.maxMrSize),
    page_size_cap: 0xfffff000n, vendor_id: 0xffffff, vendor_part_id: 0, hw_ver: 0, max_qp: deviceMax(d, 'qp'), max_qp_wr: Limits.maxQpWr,
    device_cap_flags: DEVICE_CAP_FLAGS, max_sge: Limits.maxSge, max_sge_rd: Limits.maxSge, max_cq: deviceMax(d, 'cq'), max_cqe: Limits.maxCqe,
    max_mr: deviceMax(d, 'mr'), max_pd: deviceMax(d, 'pd'), max_qp_rd_atom: Limits.maxQpRdAtom, max_ee_rd_atom: 0, max_res_rd_atom: 258048,
    max_qp_init_rd_atom: Limits.maxQpRdAtom, max_ee_init_rd_atom: 0, atomic_cap: AtomicCap.HCA, max_ee: 0, max_rdd: 0, max_mw: deviceMax(d, 'mw'),
    max_raw_ipv6_qp: 0, max_raw_ethy_qp: 0, max_mcast_grp: McastLimits.maxMcastGrp, max_mcast_qp_attach: McastLimits.maxMcastQpAttach, max_total_mcast_qp_attach: McastLimits.maxTotalMcastQpAttach, max_ah: deviceMax(d, 'ah'),
    max_fmr: 0, max_map_per_fmr: 0, max_srq: deviceMax(d, 'srq'), max_srq_wr: Limits.maxSrqWr, max_srq_sge: Limits.maxSrqSge, max_pkeys: 64,
    local_ca_ack_delay: 15, phys_port_cnt: 1,
  });
}

/** IBV_PORT_CM_SUP, as rxe reports (QUERY_PORT and sysfs's cap_mask) */
export const PORT_CAP_FLAGS = 0x00010000;

function queryPort(ctx: Context, r: U.Req<'QUERY_PORT'>): Buffer {
  if (r.port_num !== 1) fail(E.EINVAL, `QUERY_PORT: port ${r.port_num} does not exist (only port 1)`);
  const d = ctx.dev;
  return pack(U.QUERY_PORT_RESP, {
    port_cap_flags: PORT_CAP_FLAGS,
    max_msg_sz: 0x800000, bad_pkey_cntr: 0, qkey_viol_cntr: 0, gid_tbl_len: GID_TBL_LEN, pkey_tbl_len: PKEY_TBL_LEN, lid: 0, sm_lid: 0,
    state: d.portState, max_mtu: 5, active_mtu: d.activeMtu, lmc: 0, max_vl_num: 1, sm_sl: 0, subnet_timeout: 0,
    init_type_reply: 0, active_width: 1, active_speed: 1, phys_state: d.portState === PortState.ACTIVE ? 5 : 3,
    link_layer: LinkLayer.ETHERNET,
  });
}

/** What a GET_CONTEXT of either ABI (GET_CONTEXT, GET_CONTEXT_RXE) is told on a connection that has its context. */
export const CONTEXT_EXISTS = 'GET_CONTEXT: context already created';

export const deviceCommands: Commands = {
  // the connection answers the first GET_CONTEXT itself, as it creates the context
  GET_CONTEXT: () => fail(E.EINVAL, CONTEXT_EXISTS),
  QUERY_DEVICE: (ctx) => queryDevice(ctx),
  QUERY_PORT: (ctx, r) => queryPort(ctx, r),
};
