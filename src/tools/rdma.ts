/**
 * rdma (iproute2's RDMA tool, the parts an rxe user types): link show / add /
 * delete, resource show [qp|cq|mr|pd|ctx|srq|cm_id], statistic show, in iproute2 6.1's
 * output format. It asks the daemon over a device file's management
 * connection (where the kernel's tool asks netlink); `-j` prints JSON.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Fail } from '../common/errors.js';
import { verbsClassDir } from '../common/paths.js';
import { COUNTER_NAMES } from '../hca/counters.js';
import { getDeviceList, qpStateName, type Device } from '../verbs/index.js';
import { whyNoDevices } from '../verbs/device.js';
import { mgmtQuery } from '../verbs/mgmt.js';
import { VerbsError } from '../verbs/errors.js';

const USAGE = `Usage: rdma [ OPTIONS ] OBJECT { COMMAND | help }
       rdma [ -f[orce] ] -b[atch] filename
where  OBJECT := { dev | link | resource | system | statistic | help }
       OPTIONS := { -V[ersion] | -d[etails] | -j[son] | -p[retty]}
`;
const LINK_USAGE = `Usage: rdma link show [DEV/PORT_INDEX]
Usage: rdma link add NAME type TYPE netdev NETDEV
Usage: rdma link delete NAME
`;
const RES_USAGE = `Usage: rdma resource
          resource show [DEV]
          resource show [qp|cm_id|pd|mr|cq|ctx|srq]
          resource show qp link [DEV/PORT]
          resource show cq link [DEV/PORT]
          resource show pd dev [DEV]
          resource show mr dev [DEV]
          resource show ctx dev [DEV]
          resource show srq dev [DEV]
`;
const STAT_USAGE = `Usage: rdma statistic [ OBJECT ] show
       rdma statistic [ OBJECT ] show link [ DEV/PORT_INDEX ]
`;

/** iproute2's names (its qp_types_to_str / path_mig_to_str tables), which the kernel's QP types beyond libibverbs' have too. */
const QP_TYPE = ['SMI', 'GSI', 'RC', 'UC', 'UD', 'RAW_IPV6', 'RAW_ETHERTYPE', 'UNKNOWN', 'RAW_PACKET', 'XRC_INI', 'XRC_TGT'];
const PATH_MIG = ['MIGRATED', 'REARM', 'ARMED'];
const PORT_STATE = ['NOP', 'DOWN', 'INIT', 'ARMED', 'ACTIVE', 'ACTIVE_DEFER'];
/** ib_srq_type, as res-srq.c names them. */
const SRQ_TYPE = ['BASIC', 'XRC', 'TM'];
/** Each object's restrack id: the order nldev dumps them in. */
const ID_OF: Record<string, string> = { qp: 'lqpn', cq: 'cqn', mr: 'mrn', pd: 'pdn', ctx: 'ctxn', srq: 'srqn' };

interface DevRow { name: string; kname: string; addr: string; path: string; state: number; netdev: string | null }
type Row = Record<string, unknown>;

/** The daemons behind the devices under the root: one management query each, merged. */
async function ask<T>(op: string, args: Record<string, unknown> = {}): Promise<T[]> {
  const devs = getDeviceList();
  if (devs.length === 0) throw new Fail(`No RDMA devices found: ${whyNoDevices()}`, 'ENODEV');
  const seen = new Set<string>();
  const out: T[] = [];
  for (const d of devs) {
    // one daemon serves several devices: ask it once
    const key = daemonOf(d);
    if (seen.has(key)) continue;
    seen.add(key);
    out.push(...(await mgmtQuery<T[]>(d.devPath, op, args)));
  }
  return out;
}

function daemonOf(d: Device): string {
  return readFileSync(join(verbsClassDir(d.root), d.devName, 'softverbsd_pid'), 'utf8').trim();
}

/** "DEV/PORT" or "DEV" → device name and port (1), or what was wrong. */
function parseLink(s: string | undefined): { dev: string; port: number } | null {
  if (!s) return null;
  const m = /^([^/]+)(?:\/(\d+))?$/.exec(s);
  if (!m) throw new Fail(`Wrong device name ${s}`, 'ENODEV');
  const port = m[2] ? Number(m[2]) : 1;
  return { dev: m[1]!, port };
}

function checkDev(devs: DevRow[], l: { dev: string; port: number } | null): void {
  if (!l) return;
  if (!devs.some((d) => d.name === l.dev)) throw new Fail(`Wrong device name ${l.dev}`, 'ENODEV');
  if (l.port !== 1) throw new Fail(`Wrong port number ${l.port}`, 'EINVAL');
}

async function link(args: string[], json: boolean): Promise<string> {
  const [cmd = 'show', ...rest] = args;
  if (cmd === 'help') return LINK_USAGE;
  if (cmd === 'show' || cmd === 'list') {
    const devs = await ask<DevRow>('devices');
    const l = parseLink(rest[0]);
    checkDev(devs, l);
    const rows = devs.filter((d) => !l || d.name === l.dev).map((d, i) => ({
      ifindex: i, ifname: d.name, port: 1, state: PORT_STATE[d.state] ?? 'UNKNOWN', physical_state: d.state === 4 ? 'LINK_UP' : 'DISABLED', netdev: d.netdev ?? '',
    }));
    if (json) return `${JSON.stringify(rows)}\n`;
    return rows.map((r) => `link ${r.ifname}/${r.port} state ${r.state} physical_state ${r.physical_state} ${r.netdev ? `netdev ${r.netdev} ` : ''}\n`).join('');
  }
  if (cmd === 'add') {
    // rdma link add NAME type rxe netdev IFACE
    const [name, t, type, n, netdev] = rest;
    if (!name) throw new Fail('Please provide a link name to add.', 'EINVAL');
    if (t !== 'type' || !type) throw new Fail('Please provide a link type name.', 'EINVAL');
    if (type !== 'rxe') throw new Fail(`Unknown link type ${type}: softverbs devices are rxe-like`, 'EOPNOTSUPP');
    if (n !== 'netdev' || !netdev) throw new Fail('Please provide a net device name.', 'EINVAL');
    await mgmtQuery(getDeviceList()[0]?.devPath ?? noDaemon(), 'link-add', { name, netdev });
    return '';
  }
  if (cmd === 'delete' || cmd === 'del') {
    const name = rest[0];
    if (!name) throw new Fail('Please provide a link name to delete.', 'EINVAL');
    const d = getDeviceList().find((x) => x.name === name);
    if (!d) throw new Fail(`Wrong device name ${name}`, 'ENODEV');
    await mgmtQuery(d.devPath, 'link-delete', { name });
    return '';
  }
  throw new Fail(`Unknown parameter '${cmd}'.`, 'EINVAL');
}

function noDaemon(): never {
  throw new Fail('No RDMA devices found: softverbsd is reached through one of its device files', 'ENODEV');
}

const comm = (r: Row) => `comm ${r.comm} `;

async function resource(args: string[], json: boolean): Promise<string> {
  const [cmd = 'show', obj, how, which] = args;
  if (cmd === 'help') return RES_USAGE;
  if (cmd !== 'show' && cmd !== 'list') throw new Fail(`Unknown parameter '${cmd}'.`, 'EINVAL');
  const devs = await ask<DevRow>('devices');
  // contexts are restrack entries of their own: one that holds no object yet still counts
  const rows = [...(await ask<Row>('restrack')), ...(await ask<Row>('contexts'))];
  const idx = (name: unknown) => devs.findIndex((d) => d.name === name);
  if (obj === undefined || devs.some((d) => d.name === obj)) {
    // summary: per device, the kernel's restrack types in its order
    const out = devs.filter((d) => obj === undefined || d.name === obj).map((d, i) => {
      const n = (t: string) => rows.filter((r) => r.dev === d.name && r.type === t).length;
      return { ifindex: i, ifname: d.name, pd: n('pd'), cq: n('cq'), qp: n('qp'), cm_id: n('cm_id'), mr: n('mr'), ctx: n('ctx'), srq: n('srq') };
    });
    if (json) return `${JSON.stringify(out)}\n`;
    return out.map((o) => `${o.ifindex}: ${o.ifname}: pd ${o.pd} cq ${o.cq} qp ${o.qp} cm_id ${o.cm_id} mr ${o.mr} ctx ${o.ctx} srq ${o.srq} \n`).join('');
  }
  if (obj === 'cm_id') return cmIds(rows, devs, how, which, json);
  if (!ID_OF[obj]) throw new Fail(`Unknown parameter '${obj}'.`, 'EINVAL');
  let only: { dev: string; port: number } | null = null;
  if (how !== undefined) {
    if (how !== (obj === 'qp' || obj === 'cq' ? 'link' : 'dev')) throw new Fail(`Unknown parameter '${how}'.`, 'EINVAL');
    only = parseLink(which);
    checkDev(devs, only);
  }
  const id = ID_OF[obj]!;
  const mine = rows.filter((r) => r.type === obj && (!only || r.dev === only.dev)).sort((a, b) => idx(a.dev) - idx(b.dev) || Number(a[id]) - Number(b[id]));
  if (json) {
    return `${JSON.stringify(mine.map((r) => {
      const base = { ifindex: idx(r.dev), ifname: r.dev };
      if (obj === 'qp') return { ...base, port: 1, lqpn: r.lqpn, ...(r.qpType !== 4 ? { rqpn: r.rqpn } : {}), type: QP_TYPE[Number(r.qpType)], state: qpStateName(Number(r.state)), ...(r.qpType !== 4 && r.rqPsn !== undefined ? { 'rq-psn': r.rqPsn } : {}), ...(r.sqPsn !== undefined ? { 'sq-psn': r.sqPsn } : {}), ...(r.qpType !== 4 ? { 'path-mig-state': PATH_MIG[Number(r.pathMigState)] } : {}), pdn: r.pdn, pid: r.pid, comm: r.comm };
      if (obj === 'cq') return { ...base, cqn: r.cqn, cqe: r.cqe, users: r.users, 'adaptive-moderation': 'off', ctxn: r.ctxn, pid: r.pid, comm: r.comm };
      if (obj === 'mr') return { ...base, mrn: r.mrn, ...(r.rkey !== undefined ? { rkey: r.rkey, lkey: r.lkey } : {}), mrlen: r.mrlen, pdn: r.pdn, pid: r.pid, comm: r.comm };
      if (obj === 'ctx') return { ...base, ctxn: r.ctxn, pid: r.pid, comm: r.comm };
      if (obj === 'srq') {
        const lqpn = qpnRanges(r.lqpns as number[]);
        return { ...base, srqn: r.srqn, type: SRQ_TYPE[Number(r.srqType)] ?? 'UNKNOWN', ...(lqpn.length ? { lqpn } : {}), pdn: r.pdn, pid: r.pid, comm: r.comm };
      }
      return { ...base, pdn: r.pdn, local_dma_lkey: 0, users: r.users, ctxn: r.ctxn, pid: r.pid, comm: r.comm };
    }))}\n`;
  }
  const hex = (v: unknown) => `0x${BigInt(v as string | number).toString(16)}`;
  return mine.map((r) => {
    if (obj === 'qp') {
      const conn = r.qpType !== 4; // RC/UC report the remote QPN, RQ PSN and path migration state
      // another user's PSNs are not shown (the daemon leaves them out): nldev hides what reaches into others' resources
      return `link ${r.dev}/1 lqpn ${r.lqpn} ${conn ? `rqpn ${r.rqpn} ` : ''}type ${QP_TYPE[Number(r.qpType)]} state ${qpStateName(Number(r.state))} ${conn && r.rqPsn !== undefined ? `rq-psn ${r.rqPsn} ` : ''}${r.sqPsn !== undefined ? `sq-psn ${r.sqPsn} ` : ''}${conn ? `path-mig-state ${PATH_MIG[Number(r.pathMigState)] ?? 'UNKNOWN'} ` : ''}pdn ${r.pdn} pid ${r.pid} ${comm(r)}\n`;
    }
    // as rxe on 6.1 prints them (fixtures/rdma/res_show_all.txt): no DIM on rxe, rkey 0 without remote access, no iova
    if (obj === 'cq') return `dev ${r.dev} cqn ${r.cqn} cqe ${r.cqe} users ${r.users} adaptive-moderation off ctxn ${r.ctxn} pid ${r.pid} ${comm(r)}\n`;
    // keys only for root and the owner, as nldev gives them only with CAP_NET_ADMIN
    if (obj === 'mr') return `dev ${r.dev} mrn ${r.mrn} ${r.rkey !== undefined ? `rkey ${hex(r.rkey)} lkey ${hex(r.lkey)} ` : ''}mrlen ${r.mrlen} pdn ${r.pdn} pid ${r.pid} ${comm(r)}\n`;
    if (obj === 'ctx') return `dev ${r.dev} ctxn ${r.ctxn} pid ${r.pid} ${comm(r)}\n`;
    if (obj === 'srq') {
      // res-srq.c: the QPs that take their receives from it, runs of QPNs as FIRST-LAST, and no cqn (a BASIC SRQ has no CQ)
      const lqpn = qpnRanges(r.lqpns as number[]);
      return `dev ${r.dev} srqn ${r.srqn} type ${SRQ_TYPE[Number(r.srqType)] ?? 'UNKNOWN'} ${lqpn.length ? `lqpn ${lqpn.join(',')} ` : ''}pdn ${r.pdn} pid ${r.pid} ${comm(r)}\n`;
    }
    return `dev ${r.dev} pdn ${r.pdn} local_dma_lkey 0x0 users ${r.users} ctxn ${r.ctxn} pid ${r.pid} ${comm(r)}\n`;
  }).join('');
}

/** An SRQ's QPNs as nldev sends them (ascending, each run of consecutive QPNs one FIRST-LAST entry). */
function qpnRanges(qpns: number[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < qpns.length; ) {
    let j = i;
    while (j + 1 < qpns.length && qpns[j + 1] === qpns[j]! + 1) j++;
    out.push(j === i ? String(qpns[i]) : `${qpns[i]}-${qpns[j]}`);
    i = j + 1;
  }
  return out;
}

/**
 * `rdma resource show cm_id [link DEV/PORT]`, as iproute2's res-cmid.c prints it: link (once the id has a
 * device), lqpn and qp-type (once it has a QP), state, ps, pid, comm, src-addr, dst-addr, cm-idn.
 */
function cmIds(rows: Row[], devs: DevRow[], how: string | undefined, which: string | undefined, json: boolean): string {
  let only: { dev: string; port: number } | null = null;
  if (how !== undefined) {
    if (how !== 'link') throw new Fail(`Unknown parameter '${how}'.`, 'EINVAL');
    only = parseLink(which);
    checkDev(devs, only);
  }
  const mine = rows.filter((r) => r.type === 'cm_id' && (!only || r.dev === only.dev));
  if (json) {
    return `${JSON.stringify(mine.map((r) => ({
      ...(r.dev ? { ifindex: devs.findIndex((d) => d.name === r.dev), ifname: r.dev, port: 1 } : {}),
      ...(r.qpn ? { lqpn: r.qpn, 'qp-type': r.qpType } : {}),
      state: r.state, ps: r.ps, pid: r.pid, comm: r.comm, ...(r.srcAddr ? { 'src-addr': r.srcAddr } : {}), ...(r.dstAddr ? { 'dst-addr': r.dstAddr } : {}), 'cm-idn': r.cmIdn,
    })))}\n`;
  }
  return mine.map((r) => `${r.dev ? `link ${r.dev}/1 ` : ''}${r.qpn ? `lqpn ${r.qpn} qp-type ${r.qpType} ` : ''}state ${r.state} ps ${r.ps} pid ${r.pid} ${comm(r)}${r.srcAddr ? `src-addr ${r.srcAddr} ` : ''}${r.dstAddr ? `dst-addr ${r.dstAddr} ` : ''}cm-idn ${r.cmIdn} \n`).join('');
}

async function statistic(args: string[], json: boolean): Promise<string> {
  let a = args;
  if (a[0] === 'link') a = a.slice(1); // "rdma statistic link show" is the same
  const [cmd = 'show', how, which] = a;
  if (cmd === 'help') return STAT_USAGE;
  if (cmd !== 'show' && cmd !== 'list') throw new Fail(`Unknown parameter '${cmd}'.`, 'EINVAL');
  const devs = await ask<DevRow>('devices');
  let only: { dev: string; port: number } | null = null;
  if (how !== undefined) {
    if (how !== 'link') throw new Fail(`Unknown parameter '${how}'.`, 'EINVAL');
    only = parseLink(which);
    checkDev(devs, only);
  }
  const counters = await ask<{ name: string; counters: Record<string, number> }>('counters');
  const out = devs.map((d, i) => ({ ifindex: i, ifname: d.name, c: counters.find((c) => c.name === d.name)!.counters })).filter((d) => !only || d.ifname === only.dev);
  if (json) return `${JSON.stringify(out.map((d) => ({ ifindex: d.ifindex, ifname: d.ifname, port: 1, ...Object.fromEntries(COUNTER_NAMES.map((n) => [n, d.c[n] ?? 0])) })))}\n`;
  return out.map((d) => `link ${d.ifname}/1 ${COUNTER_NAMES.map((n) => `${n} ${d.c[n] ?? 0} `).join('')}\n`).join('');
}

export async function main(argv: string[]): Promise<number> {
  let json = false;
  const args = [...argv];
  while (args[0]?.startsWith('-')) {
    const o = args.shift()!;
    if (o === '-j' || o === '-json' || o === '--json') json = true;
    else if (o === '-d' || o === '-details' || o === '-p' || o === '-pretty') continue;
    else if (o === '-h' || o === '-help' || o === '--help') {
      process.stdout.write(USAGE);
      return 0;
    } else if (o === '-V' || o === '-Version') {
      process.stdout.write('rdma utility, softverbs (iproute2 6.1 output format)\n');
      return 0;
    } else {
      process.stderr.write(`Option "${o}" is unknown, try "rdma -help".\n`);
      return 1;
    }
  }
  const [object, ...rest] = args;
  try {
    let out: string;
    if (object === undefined || object === 'help') out = USAGE;
    else if ('link'.startsWith(object)) out = await link(rest, json);
    else if ('resource'.startsWith(object) && object.length >= 1) out = await resource(rest, json);
    else if ('statistic'.startsWith(object) && object.length >= 1) out = await statistic(rest, json);
    else {
      process.stderr.write(`Object "${object}" is unknown, try "rdma help".\n`);
      return 1;
    }
    process.stdout.write(out);
    return 0;
  } catch (e) {
    if (e instanceof Fail) {
      process.stderr.write(`${e.message}\n`);
      return 1;
    }
    if (e instanceof VerbsError) {
      process.stderr.write(`error: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
}

