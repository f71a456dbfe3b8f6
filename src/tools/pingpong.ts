/**
 * ibv_rc_pingpong, ibv_uc_pingpong, ibv_ud_pingpong and ibv_srq_pingpong as
 * rdma-core 44 has them: the same flags, output lines and TCP out-of-band
 * exchange (port 18515; each side's "%04x:%06x:%06x:%s" message with the
 * GID as 32 hex digits in wire order, NUL included, then the client's
 * "done"), so either end can be rdma-core's own. The server connects its
 * QP(s) before it answers; the client connects after it has the answer and
 * sends first. One engine; the variants differ only in the data below.
 */
import { createConnection, createServer, type Socket } from 'node:net';
import {
  mtuOfBytes,
  Access, getDeviceList, Mtu, openDevice, QpAttrMask as A, QpState, QpType, SendFlags, WcStatus, WC_STATUS_STR, WorkCompletion, WrOpcode,
  type AddressHandle, type CompletionChannel, type CompletionQueue, type Context, type MemoryRegion, type QueuePair, type SharedReceiveQueue,
} from '../verbs/index.js';
import { cnum, parse } from './cli.js';
import { inet6 } from './devinfo.js';
import { reader } from './sockio.js';
import { schedYield } from '../native/libc.js';
import { codeOf, Fail } from '../common/errors.js';

type Kind = 'rc' | 'uc' | 'ud' | 'srq';

interface Variant {
  kind: Kind;
  defaultSize: number;
  usageSize: number;
  /** options beyond the common ones, as getopt letters */
  options: Record<string, { type: 'string' | 'boolean'; short: string }>;
  usageLines: string[];
}

const COMMON = {
  port: { type: 'string', short: 'p' }, 'ib-dev': { type: 'string', short: 'd' }, 'ib-port': { type: 'string', short: 'i' },
  size: { type: 'string', short: 's' }, 'rx-depth': { type: 'string', short: 'r' }, iters: { type: 'string', short: 'n' },
  sl: { type: 'string', short: 'l' }, events: { type: 'boolean', short: 'e' }, 'gid-idx': { type: 'string', short: 'g' },
  chk: { type: 'boolean', short: 'c' },
} as const;

const L = {
  port: '  -p, --port=<port>      listen on/connect to port <port> (default 18515)',
  dev: '  -d, --ib-dev=<dev>     use IB device <dev> (default first device found)',
  ibport: '  -i, --ib-port=<port>   use port <port> of IB device (default 1)',
  size: (n: number) => `  -s, --size=<size>      size of message to exchange (default ${n})`,
  mtu: '  -m, --mtu=<size>       path MTU (default 1024)',
  rx: '  -r, --rx-depth=<dep>   number of receives to post at a time (default 500)',
  iters: '  -n, --iters=<iters>    number of exchanges (default 1000)',
  sl: '  -l, --sl=<sl>          service level value',
  events: '  -e, --events           sleep on CQ events (default poll)',
  gid: '  -g, --gid-idx=<gid index> local port gid index',
  chk: '  -c, --chk              validate received buffer',
};

export const VARIANTS: Record<Kind, Variant> = {
  rc: {
    kind: 'rc', defaultSize: 4096, usageSize: 4096,
    options: { mtu: { type: 'string', short: 'm' }, odp: { type: 'boolean', short: 'o' }, iodp: { type: 'boolean', short: 'O' }, prefetch: { type: 'boolean', short: 'P' }, ts: { type: 'boolean', short: 't' }, dm: { type: 'boolean', short: 'j' }, new_send: { type: 'boolean', short: 'N' } },
    usageLines: [L.port, L.dev, L.ibport, L.size(4096), L.mtu, L.rx, L.iters, L.sl, L.events, L.gid,
      '  -o, --odp\t\t    use on demand paging', '  -O, --iodp\t\t    use implicit on demand paging', '  -P, --prefetch\t    prefetch an ODP MR',
      '  -t, --ts\t            get CQE with timestamp', '  -c, --chk\t            validate received buffer', '  -j, --dm\t            use device memory',
      '  -N, --new_send            use new post send WR API'],
  },
  uc: { kind: 'uc', defaultSize: 4096, usageSize: 4096, options: { mtu: { type: 'string', short: 'm' } }, usageLines: [L.port, L.dev, L.ibport, L.size(4096), L.mtu, L.rx, L.iters, L.sl, L.events, L.gid, L.chk] },
  ud: {
    kind: 'ud', defaultSize: 1024, usageSize: 2048, options: {},
    usageLines: [L.port, L.dev, L.ibport, L.size(2048), L.rx, L.iters, '  -l, --sl=<SL>          send messages with service level <SL> (default 0)', L.events, L.gid, L.chk],
  },
  srq: {
    kind: 'srq', defaultSize: 4096, usageSize: 4096, options: { mtu: { type: 'string', short: 'm' }, 'num-qp': { type: 'string', short: 'q' }, odp: { type: 'boolean', short: 'o' } },
    usageLines: [L.port, L.dev, L.ibport, L.size(4096), L.mtu, '  -q, --num-qp=<num>     number of QPs to use (default 16)', L.rx,
      '  -n, --iters=<iters>    number of exchanges per QP(default 1000)', L.sl, L.events, L.gid, '  -o, --odp\t\t    use on demand paging', L.chk],
  },
};

export function usage(tool: string, v: Variant): string {
  return ['Usage:', `  ${tool}            start a server and wait for connection`, `  ${tool} <host>     connect to server at <host>`, '', 'Options:', ...v.usageLines, ''].join('\n');
}


/** One side's address as the exchange carries it. */
export interface Dest { lid: number; qpn: number; psn: number; gid: Uint8Array }

/** sizeof "0000:000000:000000:00000000000000000000000000000000" in rdma-core: 52 bytes with the NUL. */
export const MSG_SIZE = 52;
/** srq_pingpong always exchanges MAX_QP messages, zeroed beyond the QPs in use. */
export const SRQ_MAX_QP = 256;

/** gid_to_wire_gid: the 16 GID bytes in order, as 32 hex digits. */
export function wireGid(g: Uint8Array): string {
  return Buffer.from(g).toString('hex');
}

export function formatDest(d: Dest): Buffer {
  const b = Buffer.alloc(MSG_SIZE);
  b.write(`${hex(d.lid, 4)}:${hex(d.qpn, 6)}:${hex(d.psn, 6)}:${wireGid(d.gid)}`, 'latin1');
  return b;
}

/** sscanf(msg, "%x:%x:%x:%s") and wire_gid_to_gid; null if the message is not one. */
export function parseDest(b: Buffer): Dest | null {
  const s = b.toString('latin1').replace(/\0.*$/s, '');
  const m = /^([0-9a-fA-F]+):([0-9a-fA-F]+):([0-9a-fA-F]+):([0-9a-fA-F]{32})/.exec(s);
  if (!m) return null;
  return { lid: parseInt(m[1]!, 16), qpn: parseInt(m[2]!, 16), psn: parseInt(m[3]!, 16), gid: Buffer.from(m[4]!, 'hex') };
}

const hex = (n: number, w: number) => (n >>> 0).toString(16).padStart(w, '0');

const fail = (msg: string): never => {
  throw new Fail(msg);
};

interface Pp {
  ctx: Context;
  cq: CompletionQueue;
  chan: CompletionChannel | null;
  qps: QueuePair[];
  srq: SharedReceiveQueue | null;
  mr: MemoryRegion;
  ah: AddressHandle | null;
  sendFlags: number;
  /** offset of the payload in the buffer (UD leaves room for the GRH) */
  off: number;
}

const PINGPONG_RECV_WRID = 1;
const PINGPONG_SEND_WRID = 2;

export async function run(tool: string, kind: Kind, argv: string[]): Promise<number> {
  const v = VARIANTS[kind];
  const use = usage(tool, v);
  const { values, positionals } = parse(tool, argv, { ...COMMON, ...v.options }, use, true, { usageTo: 'stdout', exit: 1 });
  if (values.help) {
    process.stdout.write(use);
    return 0;
  }
  const bad = () => {
    process.stdout.write(use);
    return 1;
  };
  const port = values.port !== undefined ? cnum(values.port as string) : 18515;
  if (port > 65535 || port < 0) return bad();
  const ibPort = values['ib-port'] !== undefined ? cnum(values['ib-port'] as string) : 1;
  if (ibPort < 1) return bad();
  const size = values.size !== undefined ? cnum(values.size as string) >>> 0 : v.defaultSize;
  let mtu: Mtu = Mtu.MTU_1024;
  if (values.mtu !== undefined) {
    const m = mtuOfBytes(cnum(values.mtu as string));
    if (!m) return bad();
    mtu = m;
  }
  const rxDepth = values['rx-depth'] !== undefined ? cnum(values['rx-depth'] as string) >>> 0 : 500;
  const iters = values.iters !== undefined ? cnum(values.iters as string) >>> 0 : 1000;
  const sl = values.sl !== undefined ? cnum(values.sl as string) : 0;
  const useEvent = !!values.events;
  const gidx = values['gid-idx'] !== undefined ? cnum(values['gid-idx'] as string) : -1;
  const validate = !!values.chk;
  const numQp = kind === 'srq' ? (values['num-qp'] !== undefined ? cnum(values['num-qp'] as string) : 16) : 1;
  for (const o of ['odp', 'iodp', 'prefetch', 'ts', 'dm', 'new_send']) {
    if (values[o]) {
      process.stderr.write(`${tool}: -${v.options[o]!.short} (--${o}) is not supported by softverbs (no ${o === 'dm' ? 'device memory' : o === 'ts' ? 'completion timestamps' : o === 'new_send' ? 'ibv_wr_* send API' : 'on-demand paging'})\n`);
      return 1;
    }
  }
  if (positionals.length > 1) return bad();
  const servername = positionals[0] ?? null;
  if (kind === 'srq') {
    if (numQp > SRQ_MAX_QP) {
      process.stderr.write(`num_qp ${numQp} must be <= ${SRQ_MAX_QP}\n`);
      return 1;
    }
    if (numQp > rxDepth) {
      process.stderr.write(`rx_depth ${rxDepth} is too small for ${numQp} QPs -- must have at least one receive per QP.\n`);
      return 1;
    }
  }

  const devs = getDeviceList();
  const want = values['ib-dev'] as string | undefined;
  const dev = want === undefined ? devs[0] : devs.find((d) => d.name === want);
  if (!dev) {
    process.stderr.write(want === undefined ? 'No IB devices found\n' : `IB device ${want} not found\n`);
    return 1;
  }

  let pp: Pp | null = null;
  try {
    const ctx = await openDevice(dev).catch(() => fail(`Couldn't get context for ${dev.name}`));
    pp = await initCtx(kind, ctx, size, rxDepth, ibPort, useEvent, numQp);
    let routs = postRecv(pp, size, rxDepth);
    if (routs < rxDepth) fail(`Couldn't post receive (${routs})`);
    if (useEvent) pp.cq.reqNotifyCq();
    const portAttr = await ctx.queryPort(ibPort).catch(() => fail("Couldn't get port info"));
    if (kind === 'ud') {
      const mtuBytes = 1 << (portAttr.activeMtu + 7);
      if (size > mtuBytes) fail(`Requested size larger than port MTU (${mtuBytes})`);
    }
    const mine: Dest[] = [];
    for (const qp of pp.qps) {
      let gid: Uint8Array = new Uint8Array(16);
      if (gidx >= 0) {
        try {
          gid = ctx.queryGid(ibPort, gidx);
        } catch {
          fail(kind === 'rc' || kind === 'uc' ? `can't read sgid of index ${gidx}` : `Could not get local gid for gid index ${gidx}`);
        }
      }
      const d = { lid: portAttr.lid, qpn: qp.qpNum, psn: Math.floor(Math.random() * 0x1000000), gid };
      mine.push(d);
      process.stdout.write(`  local address:  LID 0x${hex(d.lid, 4)}, QPN 0x${hex(d.qpn, 6)}, PSN 0x${hex(d.psn, 6)}${kind === 'ud' ? ':' : ','} GID ${inet6(d.gid)}\n`);
    }
    const connect = (rem: Dest[]) => connectCtx(pp!, kind, ibPort, mine, rem, mtu, sl, gidx);
    const rem = servername ? await clientExch(kind, servername, port, mine) : await serverExch(kind, port, mine, connect);
    for (let i = 0; i < pp.qps.length; i++) {
      const d = rem[i]!;
      process.stdout.write(`  remote address: LID 0x${hex(d.lid, 4)}, QPN 0x${hex(d.qpn, 6)}, PSN 0x${hex(d.psn, 6)}, GID ${inet6(d.gid)}\n`);
    }
    if (servername) await connect(rem);

    const buf = pp.mr.buf;
    const pending = new Array<number>(pp.qps.length).fill(PINGPONG_RECV_WRID);
    const send = (i: number) => postSend(pp!, kind, i, size, rem[i]!.qpn);
    if (servername) {
      // rdma-core writes i / page_size % sizeof(char) into each page: always 0 (kept as it checks it)
      if (validate) for (let i = 0; i < size; i += 4096) buf[pp.off + i] = 0;
      for (let i = 0; i < pp.qps.length; i++) {
        send(i);
        pending[i] = PINGPONG_RECV_WRID | PINGPONG_SEND_WRID;
      }
    }
    const wcs = Array.from({ length: kind === 'srq' ? numQp + rxDepth : 2 }, () => new WorkCompletion());
    const t0 = process.hrtime.bigint();
    let rcnt = 0;
    let scnt = 0;
    let events = 0;
    let spins = 0;
    const qpIndex = new Map(pp.qps.map((q, i) => [q.qpNum, i]));
    while (rcnt < iters || scnt < iters) {
      let ne: number;
      if (useEvent) {
        const cq = await pp.chan!.getCqEvent();
        if (!cq) fail('Failed to get cq_event');
        events++;
        pp.cq.reqNotifyCq();
        ne = pp.cq.pollCq(wcs);
      } else {
        do {
          ne = pp.cq.pollCq(wcs);
          // completions arrive in shared memory: an empty poll gives the CPU away, since the daemon that must run
          // for this completion may share this core (a NIC would not), and the event loop gets a turn now and then
          if (ne < 1) {
            schedYield();
            if ((++spins & 0x3ff) === 0) await new Promise((r) => setImmediate(r));
          }
        } while (ne < 1);
      }
      for (let k = 0; k < ne; k++) {
        const wc = wcs[k]!;
        const id = Number(wc.wrId);
        if (wc.status !== WcStatus.SUCCESS) fail(`Failed status ${WC_STATUS_STR[wc.status] ?? 'unknown'} (${wc.status}) for wr_id ${id}`);
        const qi = kind === 'srq' ? qpIndex.get(wc.qpNum) ?? fail(`Couldn't find QPN ${hex(wc.qpNum, 6)}`) : 0;
        if (id === PINGPONG_SEND_WRID) scnt++;
        else if (id === PINGPONG_RECV_WRID) {
          if (--routs <= (kind === 'srq' ? numQp : 1)) {
            routs += postRecv(pp, size, rxDepth - routs);
            if (routs < rxDepth) fail(`Couldn't post receive (${routs})`);
          }
          rcnt++;
        } else fail(`Completion for unknown wr_id ${id}`);
        pending[qi]! &= ~id;
        if (scnt < iters && !pending[qi]) {
          send(qi);
          pending[qi] = PINGPONG_RECV_WRID | PINGPONG_SEND_WRID;
        }
      }
    }
    const usec = Number(process.hrtime.bigint() - t0) / 1000;
    const bytes = size * iters * 2;
    process.stdout.write(`${bytes} bytes in ${(usec / 1e6).toFixed(2)} seconds = ${((bytes * 8) / usec).toFixed(2)} Mbit/sec\n`);
    process.stdout.write(`${iters} iters in ${(usec / 1e6).toFixed(2)} seconds = ${(usec / iters).toFixed(2)} usec/iter\n`);
    if (!servername && validate) {
      for (let i = 0; i < size; i += 4096) if (buf[pp.off + i] !== 0) process.stdout.write(`invalid data in page ${i / 4096}\n`);
    }
    if (events) pp.cq.ackCqEvents(events);
    return 0;
  } catch (e) {
    if (!(e instanceof Fail)) throw e;
    process.stderr.write(`${e.message}\n`);
    return 1;
  } finally {
    pp?.ctx.closeDevice();
  }
}

async function initCtx(kind: Kind, ctx: Context, size: number, rxDepth: number, ibPort: number, useEvent: boolean, numQp: number): Promise<Pp> {
  const off = kind === 'ud' ? 40 : 0;
  const chan = useEvent ? await ctx.createCompChannel().catch(() => fail("Couldn't create completion channel")) : null;
  const pd = await ctx.allocPd().catch(() => fail("Couldn't allocate PD"));
  const mr = await pd.allocMr(Math.max(1, size + off), Access.LOCAL_WRITE).catch(() => fail("Couldn't register MR"));
  // rdma-core fills the buffer with 0x7b (srq_pingpong with 0)
  mr.buf.fill(kind === 'srq' ? 0 : 0x7b, 0, size + off);
  const cq = await ctx.createCq(rxDepth + (kind === 'srq' ? numQp : 1), chan).catch(() => fail("Couldn't create CQ"));
  const srq = kind === 'srq' ? await pd.createSrq({ maxWr: rxDepth, maxSge: 1 }).catch(() => fail("Couldn't create SRQ")) : null;
  const qpType = kind === 'uc' ? QpType.UC : kind === 'ud' ? QpType.UD : QpType.RC;
  const qps: QueuePair[] = [];
  let sendFlags = SendFlags.SIGNALED;
  for (let i = 0; i < numQp; i++) {
    const qp = await pd.createQp({ sendCq: cq, recvCq: cq, srq: srq ?? undefined, qpType, sqSigAll: false, cap: { maxSendWr: 1, maxRecvWr: srq ? 0 : rxDepth, maxSendSge: 1, maxRecvSge: 1 } })
      .catch(() => fail("Couldn't create QP"));
    const q = await qp.queryQp(A.CAP);
    if ((q.cap?.maxInlineData ?? 0) >= size) sendFlags |= SendFlags.INLINE;
    const attr = kind === 'ud'
      ? { qpState: QpState.INIT, pkeyIndex: 0, portNum: ibPort, qkey: 0x11111111 }
      : { qpState: QpState.INIT, pkeyIndex: 0, portNum: ibPort, qpAccessFlags: 0 };
    const mask = A.STATE | A.PKEY_INDEX | A.PORT | (kind === 'ud' ? A.QKEY : A.ACCESS_FLAGS);
    await qp.modifyQp(attr, mask).catch(() => fail('Failed to modify QP to INIT'));
    qps.push(qp);
  }
  return { ctx, cq, chan, qps, srq, mr, ah: null, sendFlags, off };
}

function postRecv(pp: Pp, size: number, n: number): number {
  const wr = { wrId: PINGPONG_RECV_WRID, sgList: [pp.mr.sge(0, size + pp.off)] };
  let i = 0;
  try {
    for (; i < n; i++) {
      if (pp.srq) pp.srq.postSrqRecv(wr);
      else pp.qps[0]!.postRecv(wr);
    }
  } catch {
    /* the queue is full: report how many went in, as rdma-core does */
  }
  return i;
}

function postSend(pp: Pp, kind: Kind, i: number, size: number, remoteQpn: number): void {
  pp.qps[i]!.postSend({
    wrId: PINGPONG_SEND_WRID, opcode: WrOpcode.SEND, sendFlags: pp.sendFlags, sgList: [pp.mr.sge(pp.off, size)],
    ud: kind === 'ud' ? { ah: pp.ah!, remoteQpn, remoteQkey: 0x11111111 } : undefined,
  });
}

async function connectCtx(pp: Pp, kind: Kind, ibPort: number, mine: Dest[], rem: Dest[], mtu: Mtu, sl: number, gidx: number): Promise<void> {
  for (let i = 0; i < pp.qps.length; i++) {
    const qp = pp.qps[i]!;
    const d = rem[i]!;
    const global = d.gid.subarray(8).some((b) => b !== 0); // dest->gid.global.interface_id
    // without a GID (no -g) the AV has no GRH, which RoCE cannot route: modify/create_ah fail as on rxe
    const ahAttr = { isGlobal: global, dlid: d.lid, sl, srcPathBits: 0, portNum: ibPort, grh: { dgid: d.gid, hopLimit: 1, sgidIndex: Math.max(gidx, 0) } };
    if (kind === 'ud') {
      await qp.modifyQp({ qpState: QpState.RTR }, A.STATE).catch(() => fail('Failed to modify QP to RTR'));
      await qp.modifyQp({ qpState: QpState.RTS, sqPsn: mine[i]!.psn }, A.STATE | A.SQ_PSN).catch(() => fail('Failed to modify QP to RTS'));
      pp.ah = await qp.pd.createAh(ahAttr).catch(() => fail('Failed to create AH'));
      continue;
    }
    const rtr = { qpState: QpState.RTR, pathMtu: mtu, destQpNum: d.qpn, rqPsn: d.psn, maxDestRdAtomic: 1, minRnrTimer: 12, ahAttr };
    const rtrMask = A.STATE | A.AV | A.PATH_MTU | A.DEST_QPN | A.RQ_PSN | (kind === 'uc' ? 0 : A.MAX_DEST_RD_ATOMIC | A.MIN_RNR_TIMER);
    await qp.modifyQp(rtr, rtrMask).catch(() => fail('Failed to modify QP to RTR'));
    const rts = { qpState: QpState.RTS, sqPsn: mine[i]!.psn, timeout: 14, retryCnt: 7, rnrRetry: 7, maxRdAtomic: 1 };
    const rtsMask = A.STATE | A.SQ_PSN | (kind === 'uc' ? 0 : A.TIMEOUT | A.RETRY_CNT | A.RNR_RETRY | A.MAX_QP_RD_ATOMIC);
    await qp.modifyQp(rts, rtsMask).catch(() => fail('Failed to modify QP to RTS'));
  }
}

/** How many address messages each side sends: one per QP, or srq_pingpong's fixed MAX_QP. */
const msgCount = (kind: Kind, mine: Dest[]) => (kind === 'srq' ? SRQ_MAX_QP : mine.length);
const ZERO_DEST: Dest = { lid: 0, qpn: 0, psn: 0, gid: new Uint8Array(16) };

/** Sends n address messages: ours, then zeroed ones (srq_pingpong's fixed count). */
function writeDests(sock: Socket, n: number, mine: Dest[]): void {
  for (let i = 0; i < n; i++) sock.write(formatDest(mine[i] ?? ZERO_DEST));
}

/** Reads n address messages; one that is short or does not parse fails with `why`. */
async function readDests(read: (n: number) => Promise<Buffer | null>, n: number, why: (i: number, m: Buffer | null) => string): Promise<Dest[]> {
  const rem: Dest[] = [];
  for (let i = 0; i < n; i++) {
    const m = await read(MSG_SIZE);
    const d = m && parseDest(m);
    if (!d) fail(why(i, m));
    rem.push(d!);
  }
  return rem;
}

async function clientExch(kind: Kind, servername: string, port: number, mine: Dest[]): Promise<Dest[]> {
  const sock = await new Promise<Socket>((resolve) => {
    const s = createConnection({ host: servername, port });
    s.once('connect', () => resolve(s));
    s.once('error', (e) => {
      const code = codeOf(e);
      if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') process.stderr.write(`Name or service not known for ${servername}:${port}\n`);
      resolve(fail(`Couldn't connect to ${servername}:${port}`));
    });
  });
  try {
    const read = reader(sock);
    const n = msgCount(kind, mine);
    writeDests(sock, n, mine);
    const rem = await readDests(read, n, (i) => (kind === 'srq' ? `Couldn't read remote address [${i}]` : "Couldn't read/write remote address"));
    await new Promise<void>((r) => sock.write(Buffer.from('done\0', 'latin1'), () => r()));
    return rem;
  } finally {
    sock.end();
  }
}

async function serverExch(kind: Kind, port: number, mine: Dest[], connect: (rem: Dest[]) => Promise<void>): Promise<Dest[]> {
  const server = createServer();
  const sock = await new Promise<Socket>((resolve) => {
    server.once('connection', (s) => resolve(s));
    server.once('error', () => resolve(fail(`Couldn't listen to port ${port}`)));
    server.listen(port);
  });
  server.close();
  try {
    const read = reader(sock);
    const n = msgCount(kind, mine);
    const rem = await readDests(read, n, (_, m) => `${m ? m.length : 0}/${MSG_SIZE}: Couldn't read remote address`);
    try {
      await connect(rem);
    } catch (e) {
      if (e instanceof Fail) process.stderr.write(`${e.message}\n`);
      fail("Couldn't connect to remote QP");
    }
    writeDests(sock, n, mine);
    const done = await read(5);
    if (!done) fail("Couldn't send/recv local address");
    return rem;
  } finally {
    sock.end();
  }
}
