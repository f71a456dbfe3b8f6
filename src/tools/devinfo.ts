/**
 * ibv_devices and ibv_devinfo output, character for character as rdma-core
 * 44 prints it (fixtures recorded from the lab's Debian 12 rxe VM are in
 * test/tools/fixtures). Formatting is pure, so the tests feed it the rxe
 * VM's attributes and compare with the recorded text byte for byte.
 */
import type { DeviceAttr, PortAttr } from '../verbs/types.js';
import { guidString } from '../common/format.js';

export interface PortInfo {
  num: number;
  attr: PortAttr;
  /** non-zero GIDs: index, 16 bytes, type string ("RoCE v2") */
  gids: Array<{ index: number; gid: Uint8Array; type: string }>;
}

export interface DevInfo {
  name: string;
  attr: DeviceAttr;
  ports: PortInfo[];
  /** EX_QUERY_DEVICE's full capability word (when absent: device_cap_flags, as from a device without extended flags) */
  capFlagsEx?: bigint;
  /** the daemon's wire mode ("raw", "udp: why", "none") */
  wire?: string;
  numCompVectors: number;
}

const PORT_STATE = ['PORT_NOP', 'PORT_DOWN', 'PORT_INIT', 'PORT_ARMED', 'PORT_ACTIVE', 'PORT_ACTIVE_DEFER'];
const PHYS_STATE = ['invalid physical state', 'SLEEP', 'POLLING', 'DISABLED', 'PORT_CONFIGURATION TRAINNING', 'LINK_UP', 'LINK_ERROR_RECOVERY', 'PHY TEST'];
const ATOMIC = ['ATOMIC_NONE', 'ATOMIC_HCA', 'ATOMIC_GLOB'];
const SPEED: Record<number, string> = { 1: '2.5 Gbps', 2: '5.0 Gbps', 4: '10.0 Gbps', 8: '10.0 Gbps', 16: '14.0 Gbps', 32: '25.0 Gbps', 64: '50.0 Gbps', 128: '100.0 Gbps' };
const WIDTH: Record<number, string> = { 1: '1', 2: '4', 4: '8', 8: '12', 16: '2' };
const VL: Record<number, string> = { 1: '1', 2: '2', 3: '4', 4: '8', 5: '15' };
/** IBV_DEVICE_* bit → name, in the order rdma-core prints them */
const CAP_FLAGS: Array<[number, string]> = [
  [1 << 0, 'RESIZE_MAX_WR'], [1 << 1, 'BAD_PKEY_CNTR'], [1 << 2, 'BAD_QKEY_CNTR'], [1 << 3, 'RAW_MULTI'], [1 << 4, 'AUTO_PATH_MIG'],
  [1 << 5, 'CHANGE_PHY_PORT'], [1 << 6, 'UD_AV_PORT_ENFORCE'], [1 << 7, 'CURR_QP_STATE_MOD'], [1 << 8, 'SHUTDOWN_PORT'], [1 << 9, 'INIT_TYPE'],
  [1 << 10, 'PORT_ACTIVE_EVENT'], [1 << 11, 'SYS_IMAGE_GUID'], [1 << 12, 'RC_RNR_NAK_GEN'], [1 << 13, 'SRQ_RESIZE'], [1 << 14, 'N_NOTIFY_CQ'],
  [1 << 17, 'MEM_WINDOW'], [1 << 18, 'UD_IP_CSUM'], [1 << 20, 'XRC'], [1 << 21, 'MEM_MGT_EXTENSIONS'], [1 << 23, 'MEM_WINDOW_TYPE_2A'],
  [1 << 24, 'MEM_WINDOW_TYPE_2B'], [1 << 25, 'RC_IP_CSUM'], [1 << 26, 'RAW_IP_CSUM'], [1 << 29, 'MANAGED_FLOW_STEERING'],
];

const mtuStr = (m: number) => (m >= 1 && m <= 5 ? String(128 << m) : 'invalid MTU');
const hex = (n: number | bigint, w = 0) => n.toString(16).padStart(w, '0');
/** IBV_DEVICE_RAW_SCATTER_FCS, IBV_DEVICE_PCI_WRITE_END_PADDING: the device_cap_flags_ex bits rdma-core 44's ibv_devinfo names */
const RAW_SCATTER_FCS = 1n << 34n;
const PCI_WRITE_END_PADDING = 1n << 36n;


/** glibc inet_ntop(AF_INET6): longest zero run as "::", IPv4-mapped as a dotted quad. */
export function inet6(g: Uint8Array): string {
  const w: number[] = [];
  for (let i = 0; i < 16; i += 2) w.push((g[i]! << 8) | g[i + 1]!);
  let best = { base: -1, len: 0 };
  let cur = { base: -1, len: 0 };
  for (let i = 0; i < 8; i++) {
    if (w[i] === 0) {
      if (cur.base === -1) cur = { base: i, len: 1 };
      else cur.len++;
    } else if (cur.base !== -1) {
      if (best.base === -1 || cur.len > best.len) best = cur;
      cur = { base: -1, len: 0 };
    }
  }
  if (cur.base !== -1 && (best.base === -1 || cur.len > best.len)) best = cur;
  if (best.base !== -1 && best.len < 2) best = { base: -1, len: 0 };
  let s = '';
  for (let i = 0; i < 8; i++) {
    if (best.base !== -1 && i >= best.base && i < best.base + best.len) {
      if (i === best.base) s += ':';
      continue;
    }
    if (i !== 0) s += ':';
    if (i === 6 && best.base === 0 && (best.len === 6 || (best.len === 5 && w[5] === 0xffff))) {
      s += `${g[12]}.${g[13]}.${g[14]}.${g[15]}`;
      break;
    }
    s += hex(w[i]!);
  }
  if (best.base !== -1 && best.base + best.len === 8) s += ':';
  return s;
}

/** ibv_devices */
export function formatDevices(devs: Array<{ name: string; guid: bigint }>): string {
  let s = `    ${'device'.padEnd(16)}\t   node GUID\n`;
  s += `    ${'------'.padEnd(16)}\t----------------\n`;
  for (const d of devs) s += `    ${d.name.padEnd(16)}\t${hex(d.guid, 16)}\n`;
  return s;
}

/** One device as `ibv_devinfo [-v]` prints it. */
export function formatDevinfo(info: DevInfo, verbose: boolean): string {
  const a = info.attr;
  const o: string[] = [];
  const p = (s: string) => o.push(s);
  p(`hca_id:\t${info.name}`);
  p(`\ttransport:\t\t\tInfiniBand (0)`);
  if (a.fwVer) p(`\tfw_ver:\t\t\t\t${a.fwVer}`);
  p(`\tnode_guid:\t\t\t${guidString(a.nodeGuid)}`);
  p(`\tsys_image_guid:\t\t\t${guidString(a.sysImageGuid)}`);
  p(`\tvendor_id:\t\t\t0x${hex(a.vendorId, 4)}`);
  p(`\tvendor_part_id:\t\t\t${a.vendorPartId}`);
  p(`\thw_ver:\t\t\t\t0x${hex(a.hwVer).toUpperCase()}`);
  p(`\tphys_port_cnt:\t\t\t${a.physPortCnt}`);
  // not in rdma-core's output: only when the wire is not the exact one (plain UDP or none) does -v say so
  if (verbose && info.wire && !info.wire.startsWith('raw')) p(`\tsoftverbs_wire:\t\t\t${info.wire}`);
  if (verbose) {
    p(`\tmax_mr_size:\t\t\t0x${hex(a.maxMrSize)}`);
    p(`\tpage_size_cap:\t\t\t0x${hex(a.pageSizeCap)}`);
    p(`\tmax_qp:\t\t\t\t${a.maxQp}`);
    p(`\tmax_qp_wr:\t\t\t${a.maxQpWr}`);
    p(`\tdevice_cap_flags:\t\t0x${hex(a.deviceCapFlags >>> 0, 8)}`);
    for (const [bit, name] of CAP_FLAGS) if (a.deviceCapFlags & bit) p(`\t\t\t\t\t${name}`);
    p(`\tmax_sge:\t\t\t${a.maxSge}`);
    p(`\tmax_sge_rd:\t\t\t${a.maxSgeRd}`);
    p(`\tmax_cq:\t\t\t\t${a.maxCq}`);
    p(`\tmax_cqe:\t\t\t${a.maxCqe}`);
    p(`\tmax_mr:\t\t\t\t${a.maxMr}`);
    p(`\tmax_pd:\t\t\t\t${a.maxPd}`);
    p(`\tmax_qp_rd_atom:\t\t\t${a.maxQpRdAtom}`);
    p(`\tmax_ee_rd_atom:\t\t\t${a.maxEeRdAtom}`);
    p(`\tmax_res_rd_atom:\t\t${a.maxResRdAtom}`);
    p(`\tmax_qp_init_rd_atom:\t\t${a.maxQpInitRdAtom}`);
    p(`\tmax_ee_init_rd_atom:\t\t${a.maxEeInitRdAtom}`);
    p(`\tatomic_cap:\t\t\t${ATOMIC[a.atomicCap] ?? 'invalid atomic capability'} (${a.atomicCap})`);
    p(`\tmax_ee:\t\t\t\t${a.maxEe}`);
    p(`\tmax_rdd:\t\t\t${a.maxRdd}`);
    p(`\tmax_mw:\t\t\t\t${a.maxMw}`);
    p(`\tmax_raw_ipv6_qp:\t\t${a.maxRawIpv6Qp}`);
    p(`\tmax_raw_ethy_qp:\t\t${a.maxRawEthyQp}`);
    p(`\tmax_mcast_grp:\t\t\t${a.maxMcastGrp}`);
    p(`\tmax_mcast_qp_attach:\t\t${a.maxMcastQpAttach}`);
    p(`\tmax_total_mcast_qp_attach:\t${a.maxTotalMcastQpAttach}`);
    p(`\tmax_ah:\t\t\t\t${a.maxAh}`);
    p(`\tmax_fmr:\t\t\t${a.maxFmr}`);
    if (a.maxFmr) p(`\tmax_map_per_fmr:\t\t${a.maxMapPerFmr}`);
    p(`\tmax_srq:\t\t\t${a.maxSrq}`);
    if (a.maxSrq) {
      p(`\tmax_srq_wr:\t\t\t${a.maxSrqWr}`);
      p(`\tmax_srq_sge:\t\t\t${a.maxSrqSge}`);
    }
    p(`\tmax_pkeys:\t\t\t${a.maxPkeys}`);
    p(`\tlocal_ca_ack_delay:\t\t${a.localCaAckDelay}`);
    // softverbs has no ODP, timestamps, TSO, RSS, WQs, rate limits or tag matching: what rdma-core prints for a device without them
    p(`\tgeneral_odp_caps:`);
    for (const t of ['rc', 'uc', 'ud', 'xrc']) {
      p(`\t${t}_odp_caps:`);
      p(`\t\t\t\t\tNO SUPPORT`);
    }
    p(`\tcompletion_timestamp_mask not supported`);
    p(`\tcore clock not supported`);
    const ex = info.capFlagsEx ?? BigInt(a.deviceCapFlags >>> 0);
    p(`\tdevice_cap_flags_ex:\t\t0x${hex(ex).toUpperCase()}`);
    // rdma-core 44 names two flags past bit 31 and calls the rest unknown (rxe >= 6.2's ATOMIC_WRITE among them)
    const high = ex & 0xffffffff00000000n;
    if (high & RAW_SCATTER_FCS) p(`\t\t\t\t\tRAW_SCATTER_FCS`);
    if (high & PCI_WRITE_END_PADDING) p(`\t\t\t\t\tPCI_WRITE_END_PADDING`);
    if (high & ~(RAW_SCATTER_FCS | PCI_WRITE_END_PADDING)) p(`\t\t\t\t\tUnknown flags: 0x${hex(high & ~(RAW_SCATTER_FCS | PCI_WRITE_END_PADDING)).toUpperCase()}`);
    p(`\ttso_caps:`);
    p(`\t\tmax_tso:\t\t\t0`);
    p(`\trss_caps:`);
    p(`\t\tmax_rwq_indirection_tables:\t\t\t0`);
    p(`\t\tmax_rwq_indirection_table_size:\t\t\t0`);
    p(`\t\trx_hash_function:\t\t\t\t0x0`);
    p(`\t\trx_hash_fields_mask:\t\t\t\t0x0`);
    p(`\tmax_wq_type_rq:\t\t\t0`);
    p(`\tpacket_pacing_caps:`);
    p(`\t\tqp_rate_limit_min:\t0kbps`);
    p(`\t\tqp_rate_limit_max:\t0kbps`);
    p(`\ttag matching not supported`);
    p(`\tnum_comp_vectors:\t\t${info.numCompVectors}`);
  }
  for (const port of info.ports) {
    const q = port.attr;
    p(`\t\tport:\t${port.num}`);
    p(`\t\t\tstate:\t\t\t${PORT_STATE[q.state] ?? 'invalid state'} (${q.state})`);
    p(`\t\t\tmax_mtu:\t\t${mtuStr(q.maxMtu)} (${q.maxMtu})`);
    p(`\t\t\tactive_mtu:\t\t${mtuStr(q.activeMtu)} (${q.activeMtu})`);
    p(`\t\t\tsm_lid:\t\t\t${q.smLid}`);
    p(`\t\t\tport_lid:\t\t${q.lid}`);
    p(`\t\t\tport_lmc:\t\t0x${hex(q.lmc, 2)}`);
    p(`\t\t\tlink_layer:\t\t${q.linkLayer === 2 ? 'Ethernet' : q.linkLayer === 1 ? 'InfiniBand' : 'Unknown'}`);
    if (verbose) {
      p(`\t\t\tmax_msg_sz:\t\t0x${hex(q.maxMsgSz)}`);
      p(`\t\t\tport_cap_flags:\t\t0x${hex(q.portCapFlags >>> 0, 8)}`);
      p(`\t\t\tport_cap_flags2:\t0x0000`);
      p(`\t\t\tmax_vl_num:\t\t${VL[q.maxVlNum] ?? 'invalid value'} (${q.maxVlNum})`);
      p(`\t\t\tbad_pkey_cntr:\t\t0x${hex(q.badPkeyCntr)}`);
      p(`\t\t\tqkey_viol_cntr:\t\t0x${hex(q.qkeyViolCntr)}`);
      p(`\t\t\tsm_sl:\t\t\t${q.smSl}`);
      p(`\t\t\tpkey_tbl_len:\t\t${q.pkeyTblLen}`);
      p(`\t\t\tgid_tbl_len:\t\t${q.gidTblLen}`);
      p(`\t\t\tsubnet_timeout:\t\t${q.subnetTimeout}`);
      p(`\t\t\tinit_type_reply:\t${q.initTypeReply}`);
      p(`\t\t\tactive_width:\t\t${WIDTH[q.activeWidth] ?? 'invalid width'}X (${q.activeWidth})`);
      p(`\t\t\tactive_speed:\t\t${SPEED[q.activeSpeed] ?? 'invalid speed'} (${q.activeSpeed})`);
      p(`\t\t\tphys_state:\t\t${PHYS_STATE[q.physState] ?? 'invalid physical state'} (${q.physState})`);
      for (const g of port.gids) p(`\t\t\tGID[${String(g.index).padStart(3)}]:\t\t${inet6(g.gid)}, ${g.type}`);
    }
    p('');
  }
  return o.join('\n') + '\n';
}
