/**
 * rping (rdma-core's librdmacm/examples/rping.c): a ping-pong over an RDMA CM
 * connection. Per ping the client advertises its source buffer, the server
 * RDMA READs it, says go ahead, the client advertises its sink, the server
 * RDMA WRITEs the data back and says go ahead again; -V compares. Same flags,
 * messages and exit codes as rdma-core's, and the same bytes on the wire
 * (the 16-byte advertisement: address, rkey, size, big-endian), so either
 * end can be Linux's. As in rping.c, a CM event thread and a CQ thread drive
 * a small state machine through a semaphore; here they are two async loops.
 */
import { lookup } from 'node:dns/promises';
import { parseArgs } from 'node:util';
import { Access, QpType, SendFlags, WcOpcode, WcStatus, WrOpcode } from '../abi/enums.js';
import { strerror } from '../common/errno.js';
import { CmEventType, cmEventStr, EventChannel, PortSpace, type CmEvent, type CmId } from '../verbs/cm.js';
import type { CompletionChannel, CompletionQueue } from '../verbs/cq.js';
import type { MemoryRegion } from '../verbs/mr.js';
import type { ProtectionDomain } from '../verbs/pd.js';
import type { QueuePair } from '../verbs/qp.js';
import { atoi } from './cli.js';
import { codeOf, errnoOf, messageOf } from '../common/errors.js';

const State = {
  IDLE: 1, CONNECT_REQUEST: 2, ADDR_RESOLVED: 3, ROUTE_RESOLVED: 4, CONNECTED: 5, RDMA_READ_ADV: 6, RDMA_READ_COMPLETE: 7,
  RDMA_WRITE_ADV: 8, RDMA_WRITE_COMPLETE: 9, DISCONNECTED: 10, ERROR: 11,
} as const;

const RPING_BUFSIZE = 64 * 1024;
const RPING_SQ_DEPTH = 16;
/** sizeof("2147483647") + sizeof("rdma-ping-%d: ") */
const RPING_MIN_BUFSIZE = 11 + 15;
const EINVAL = 22;

const USAGE = `rping -s [-vVd] [-S size] [-C count] [-a addr] [-p port]
rping -c [-vVd] [-S size] [-C count] [-I addr] -a addr [-p port]
\t-c\t\tclient side
\t-I\t\tSource address to bind to for client.
\t-s\t\tserver side.  To bind to any address with IPv6 use -a ::0
\t-v\t\tdisplay ping data to stdout
\t-V\t\tvalidate ping data
\t-d\t\tdebug printfs
\t-S size \tping data size
\t-C count\tping count times
\t-a addr\t\taddress
\t-p port\t\tport
\t-P\t\tpersistent server mode allowing multiple connections
\t-q\t\tuse self-created, self-modified QP
`;

/** The states by number, for rping's "wait for X state N" lines. */
const STATE_NAME: Record<number, string> = Object.fromEntries(Object.entries(State).map(([k, v]) => [v, k]));

/** The state as the other loops left it (read fresh after every wait). */
const stateOf = (cb: Cb): number => cb.state;

/** A counting semaphore: rping's sem_t between its threads. */
class Sem {
  private n = 0;
  private waiters: Array<() => void> = [];
  post(): void {
    const w = this.waiters.shift();
    if (w) w();
    else this.n++;
  }
  wait(): Promise<void> {
    if (this.n > 0) {
      this.n--;
      return Promise.resolve();
    }
    return new Promise((r) => this.waiters.push(r));
  }
}

const out = (s: string) => process.stdout.write(s);
const err = (s: string) => process.stderr.write(s);

interface Cb {
  server: boolean;
  state: number;
  sem: Sem;
  verbose: number;
  validate: number;
  debug: number;
  count: number;
  size: number;
  child: CmId | null;
  // per connection
  pd?: ProtectionDomain;
  channel?: CompletionChannel;
  cq?: CompletionQueue;
  qp?: QueuePair;
  recvMr?: MemoryRegion;
  sendMr?: MemoryRegion;
  rdmaMr?: MemoryRegion;
  startMr?: MemoryRegion;
  remoteRkey: number;
  remoteAddr: bigint;
  remoteLen: number;
}

function perror(what: string, e: unknown): void {
  const code = codeOf(e) ?? 'EIO';
  err(`${what}: ${strerror(code)}\n`);
}

export async function main(argv: string[]): Promise<number> {
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({
      args: argv,
      options: {
        a: { type: 'string', short: 'a' }, I: { type: 'string', short: 'I' }, P: { type: 'boolean', short: 'P' }, p: { type: 'string', short: 'p' },
        C: { type: 'string', short: 'C' }, S: { type: 'string', short: 'S' }, t: { type: 'string', short: 't' }, s: { type: 'boolean', short: 's' },
        c: { type: 'boolean', short: 'c' }, v: { type: 'boolean', short: 'v', multiple: true }, V: { type: 'boolean', short: 'V', multiple: true },
        d: { type: 'boolean', short: 'd', multiple: true }, q: { type: 'boolean', short: 'q' },
      },
      strict: true,
      allowPositionals: true,
    }).values as Record<string, string | boolean | undefined>;
  } catch {
    // rping sets opterr = 0: no getopt message, just the usage
    out(USAGE);
    return EINVAL;
  }
  const cb: Cb = {
    server: false, state: State.IDLE, sem: new Sem(), verbose: (values.v as unknown as boolean[] | undefined)?.length ?? 0,
    validate: (values.V as unknown as boolean[] | undefined)?.length ?? 0, debug: (values.d as unknown as boolean[] | undefined)?.length ?? 0,
    count: 0, size: 64, child: null, remoteRkey: 0, remoteAddr: 0n, remoteLen: 0,
  };
  const dbg = (s: string) => cb.debug && out(s);
  let role = -1;
  // getopt order matters only for -s/-c (the last wins)
  for (const a of argv) if (/^-[A-Za-z]*[sc]/.test(a) && !/^-[aIpCSt]/.test(a)) role = a.lastIndexOf('s') > a.lastIndexOf('c') ? 1 : 0;
  if (values.s && !values.c) role = 1;
  else if (values.c && !values.s) role = 0;
  let ret = 0;
  let port = 7174;
  let addr: { address: string; family: number } = { address: '0.0.0.0', family: 4 };
  let src: string | undefined;
  if (typeof values.a === 'string') {
    try {
      addr = await lookup(values.a);
    } catch (e) {
      out(`getaddrinfo failed (${codeOf(e) === 'ENOTFOUND' ? 'Name or service not known' : messageOf(e)}) - invalid hostname or IP address\n`);
      ret = -2;
    }
  }
  if (typeof values.I === 'string') {
    try {
      src = (await lookup(values.I)).address;
    } catch (e) {
      out(`getaddrinfo failed (${messageOf(e)}) - invalid hostname or IP address\n`);
      ret = -2;
    }
  }
  if (typeof values.p === 'string') {
    port = atoi(values.p) & 0xffff;
    dbg(`port ${atoi(values.p)}\n`);
  }
  if (typeof values.S === 'string') {
    cb.size = atoi(values.S);
    if (cb.size < RPING_MIN_BUFSIZE || cb.size > RPING_BUFSIZE - 1) {
      err(`Invalid size ${cb.size} (valid range is ${RPING_MIN_BUFSIZE} to ${RPING_BUFSIZE})\n`);
      ret = EINVAL;
    }
  }
  if (typeof values.C === 'string') {
    cb.count = atoi(values.C);
    if (cb.count < 0) {
      err(`Invalid count ${cb.count}\n`);
      ret = EINVAL;
    }
  }
  if (values.q) {
    err('rping: -q (a self-created QP) is not supported by this rping\n');
    ret = EINVAL;
  }
  if (ret) return ret & 0xff;
  if (role === -1) {
    out(USAGE);
    return EINVAL;
  }
  cb.server = role === 1;
  const persistent = !!values.P;

  let ch: EventChannel;
  try {
    ch = await EventChannel.create();
  } catch (e) {
    err(`${messageOf(e)}\n`);
    return 1;
  }
  let cmId: CmId;
  try {
    cmId = await ch.createId(PortSpace.TCP, cb);
  } catch (e) {
    perror('rdma_create_id', e);
    await ch.destroy();
    return 255;
  }
  dbg(`created cm_id ${cmId.handle}\n`);

  // the CM event thread: each event moves the state and wakes the main flow; an error event ends the process
  let cmStop = false;
  const cmThread = (async () => {
    for (;;) {
      const ev = await ch.getCmEvent();
      if (!ev || cmStop) return;
      const cbx = (ev.id.context as Cb | null) ?? cb;
      if (await cmaEvent(cbx, ev, cmId, dbg)) process.exit(255);
    }
  })();

  try {
    if (cb.server) ret = persistent ? await runPersistentServer(cb, cmId, addr, port, dbg) : await runServer(cb, cmId, addr, port, dbg);
    else ret = await runClient(cb, cmId, addr, port, src, dbg);
  } catch (e) {
    err(`rping: ${messageOf(e)}\n`);
    ret = -1;
  }
  dbg(`destroy cm_id ${cmId.handle}\n`);
  await cmId.destroy().catch(() => {});
  cmStop = true;
  await ch.destroy();
  await cmThread;
  return ret & 0xff;
}

async function cmaEvent(cb: Cb, ev: CmEvent, parent: CmId, dbg: (s: string) => void): Promise<number> {
  dbg(`cma_event type ${cmEventStr(ev.event)} cma_id ${ev.id.handle} (${ev.id === parent ? 'parent' : 'child'})\n`);
  switch (ev.event) {
    case CmEventType.ADDR_RESOLVED:
      cb.state = State.ADDR_RESOLVED;
      try {
        await ev.id.resolveRoute(2000);
      } catch (e) {
        cb.state = State.ERROR;
        perror('rdma_resolve_route', e);
        cb.sem.post();
      }
      return 0;
    case CmEventType.ROUTE_RESOLVED:
      cb.state = State.ROUTE_RESOLVED;
      cb.sem.post();
      return 0;
    case CmEventType.CONNECT_REQUEST:
      cb.state = State.CONNECT_REQUEST;
      cb.child = ev.id;
      ev.id.context = null;
      dbg(`child cma ${ev.id.handle}\n`);
      cb.sem.post();
      return 0;
    case CmEventType.CONNECT_RESPONSE:
      dbg('CONNECT_RESPONSE\n');
      cb.state = State.CONNECTED;
      cb.sem.post();
      return 0;
    case CmEventType.ESTABLISHED:
      dbg('ESTABLISHED\n');
      // the server wakes when the first RECV completes
      if (!cb.server) cb.state = State.CONNECTED;
      cb.sem.post();
      return 0;
    case CmEventType.ADDR_ERROR:
    case CmEventType.ROUTE_ERROR:
    case CmEventType.CONNECT_ERROR:
    case CmEventType.UNREACHABLE:
    case CmEventType.REJECTED:
      err(`cma event ${cmEventStr(ev.event)}, error ${ev.status}\n`);
      // ours, on a line of its own: the line above stays rdma-core's
      if (ev.reason) err(`rping: error ${ev.status} = ${ev.reason}\n`);
      cb.sem.post();
      return -1;
    case CmEventType.DISCONNECTED:
      err(`${cb.server ? 'server' : 'client'} DISCONNECT EVENT...\n`);
      cb.state = State.DISCONNECTED;
      cb.sem.post();
      return 0;
    case CmEventType.DEVICE_REMOVAL:
      err('cma detected device removal!!!!\n');
      cb.state = State.ERROR;
      cb.sem.post();
      return -1;
    default:
      err(`unhandled event: ${cmEventStr(ev.event)}, ignoring\n`);
      return 0;
  }
}

/** rping_cq_event_handler: every completion moves the state; a flushed WR ends the CQ thread. */
function cqEvent(cb: Cb, dbg: (s: string) => void): number {
  let flushed = 0;
  for (;;) {
    const [wc] = cb.cq!.pollCq(1);
    if (!wc) break;
    if (wc.status !== WcStatus.SUCCESS) {
      if (wc.status === WcStatus.WR_FLUSH_ERR) {
        flushed = 1;
        continue;
      }
      err(`cq completion failed status ${wc.status}\n`);
      cb.state = State.ERROR;
      cb.sem.post();
      return -1;
    }
    switch (wc.opcode) {
      case WcOpcode.SEND:
        dbg('send completion\n');
        break;
      case WcOpcode.RDMA_WRITE:
        dbg('rdma write completion\n');
        cb.state = State.RDMA_WRITE_COMPLETE;
        cb.sem.post();
        break;
      case WcOpcode.RDMA_READ:
        dbg('rdma read completion\n');
        cb.state = State.RDMA_READ_COMPLETE;
        cb.sem.post();
        break;
      case WcOpcode.RECV: {
        dbg('recv completion\n');
        if (wc.byteLen !== 16) {
          err(`Received bogus data, size ${wc.byteLen}\n`);
          err('recv wc error: -1\n');
          cb.state = State.ERROR;
          cb.sem.post();
          return -1;
        }
        if (cb.server) {
          const b = cb.recvMr!.buf;
          cb.remoteAddr = b.readBigUInt64BE(0);
          cb.remoteRkey = b.readUInt32BE(8);
          cb.remoteLen = b.readUInt32BE(12);
          dbg(`Received rkey ${cb.remoteRkey.toString(16)} addr ${cb.remoteAddr.toString(16)} len ${cb.remoteLen} from peer\n`);
          cb.state = cb.state <= State.CONNECTED || cb.state === State.RDMA_WRITE_COMPLETE ? State.RDMA_READ_ADV : State.RDMA_WRITE_ADV;
        } else cb.state = cb.state === State.RDMA_READ_ADV ? State.RDMA_WRITE_ADV : State.RDMA_WRITE_COMPLETE;
        try {
          postRecv(cb);
        } catch (e) {
          err(`post recv error: ${errnoOf(e) ?? -1}\n`);
          cb.state = State.ERROR;
          cb.sem.post();
          return -1;
        }
        cb.sem.post();
        break;
      }
      default:
        dbg('unknown!!!!! completion\n');
        cb.state = State.ERROR;
        cb.sem.post();
        return -1;
    }
  }
  return flushed;
}

/** The CQ thread: until a flush (the QP went to ERR) or an error. */
async function cqThread(cb: Cb, dbg: (s: string) => void): Promise<void> {
  dbg('cq_thread started.\n');
  for (;;) {
    const cq = await cb.channel!.getCqEvent();
    if (!cq) return;
    if (cq !== cb.cq) {
      err('Unknown CQ!\n');
      return;
    }
    cq.reqNotifyCq(false);
    const r = cqEvent(cb, dbg);
    cq.ackCqEvents(1);
    if (r) return;
  }
}

function postRecv(cb: Cb): void {
  cb.qp!.postRecv({ wrId: 0n, sgList: [cb.recvMr!.sge(0, 16)] });
}

function postSendInfo(cb: Cb): void {
  cb.qp!.postSend({ wrId: 0n, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED, sgList: [cb.sendMr!.sge(0, 16)] });
}

function formatSend(cb: Cb, mr: MemoryRegion, dbg: (s: string) => void): void {
  const b = cb.sendMr!.buf;
  b.writeBigUInt64BE(mr.addr, 0);
  b.writeUInt32BE(mr.rkey, 8);
  b.writeUInt32BE(cb.size, 12);
  dbg(`RDMA addr ${mr.addr.toString(16)} rkey ${mr.rkey.toString(16)} len ${cb.size}\n`);
}

async function setupQp(cb: Cb, id: CmId, dbg: (s: string) => void): Promise<void> {
  const ctx = id.verbs!;
  cb.pd = await ctx.allocPd();
  dbg(`created pd ${cb.pd.handle}\n`);
  cb.channel = await ctx.createCompChannel();
  cb.cq = await ctx.createCq(RPING_SQ_DEPTH * 2, cb.channel);
  cb.cq.reqNotifyCq(false);
  cb.qp = await id.createQp(cb.pd, { sendCq: cb.cq, recvCq: cb.cq, qpType: QpType.RC, cap: { maxSendWr: RPING_SQ_DEPTH, maxRecvWr: 2, maxRecvSge: 1, maxSendSge: 1 } });
  dbg(`created qp ${cb.qp.qpNum}\n`);
}

async function setupBuffers(cb: Cb, dbg: (s: string) => void): Promise<void> {
  const pd = cb.pd!;
  cb.recvMr = await pd.allocMr(16, Access.LOCAL_WRITE);
  cb.sendMr = await pd.allocMr(16, 0);
  cb.rdmaMr = await pd.allocMr(cb.size, Access.LOCAL_WRITE | Access.REMOTE_READ | Access.REMOTE_WRITE);
  if (!cb.server) cb.startMr = await pd.allocMr(cb.size, Access.LOCAL_WRITE | Access.REMOTE_READ | Access.REMOTE_WRITE);
  dbg('allocated & registered buffers...\n');
}

async function freeAll(cb: Cb, id: CmId): Promise<void> {
  for (const mr of [cb.recvMr, cb.sendMr, cb.rdmaMr, cb.startMr]) await mr?.deregMr().catch(() => {});
  await id.destroyQp().catch(() => {});
  await cb.cq?.destroyCq().catch(() => {});
  await cb.channel?.destroyCompChannel().catch(() => {});
  await cb.pd?.deallocPd().catch(() => {});
}

/** The C string in a buffer (up to its NUL). */
function cstr(b: Buffer): string {
  const z = b.indexOf(0);
  return b.subarray(0, z < 0 ? b.length : z).toString('latin1');
}

/**
 * One step of rping's ping-pong: post a work request (none for the first wait), wait on the semaphore, and
 * expect `want`. 0, or what rping's loop breaks with: the post's error, or -1 for another state.
 */
async function step(cb: Cb, post: (() => void) | null, want: number): Promise<number> {
  if (post) {
    try {
      post();
    } catch (e) {
      const n = -(errnoOf(e) ?? -1);
      err(`post send error ${n}\n`);
      return n;
    }
  }
  await cb.sem.wait();
  if (stateOf(cb) !== want) {
    err(`wait for ${STATE_NAME[want]} state ${cb.state}\n`);
    return -1;
  }
  return 0;
}

/** An RDMA READ or WRITE of `len` bytes of the rdma buffer, to or from the client's advertised one. */
function postRdma(cb: Cb, opcode: WrOpcode, len: number): void {
  cb.qp!.postSend({ wrId: 0n, opcode, sendFlags: SendFlags.SIGNALED, sgList: [cb.rdmaMr!.sge(0, len)], rdma: { remoteAddr: cb.remoteAddr, rkey: cb.remoteRkey } });
}

async function testServer(cb: Cb, dbg: (s: string) => void): Promise<number> {
  let ret = 0;
  // each round ends with the second "go ahead", posted as the next round's first step
  for (let goAhead: (() => void) | null = null; ; ) {
    if ((ret = await step(cb, goAhead, State.RDMA_READ_ADV))) break;
    dbg('server received sink adv\n');
    if ((ret = await step(cb, () => (postRdma(cb, WrOpcode.RDMA_READ, cb.remoteLen), dbg('server posted rdma read req \n')), State.RDMA_READ_COMPLETE))) break;
    dbg('server received read complete\n');
    if (cb.verbose) out(`server ping data: ${cstr(cb.rdmaMr!.buf)}\n`);
    if ((ret = await step(cb, () => (postSendInfo(cb), dbg('server posted go ahead\n')), State.RDMA_WRITE_ADV))) break;
    dbg('server received sink adv\n');
    const len = cstr(cb.rdmaMr!.buf).length + 1;
    dbg(`rdma write from lkey ${cb.rdmaMr!.lkey.toString(16)} laddr ${cb.rdmaMr!.addr.toString(16)} len ${len}\n`);
    if ((ret = await step(cb, () => postRdma(cb, WrOpcode.RDMA_WRITE, len), State.RDMA_WRITE_COMPLETE))) break;
    dbg('server rdma write complete \n');
    goAhead = () => (postSendInfo(cb), dbg('server posted go ahead\n'));
  }
  return cb.state === State.DISCONNECTED ? 0 : ret;
}

async function bindServer(id: CmId, addr: { address: string }, port: number, dbg: (s: string) => void): Promise<number> {
  try {
    await id.bindAddr(addr.address, port);
  } catch (e) {
    perror('rdma_bind_addr', e);
    return -1;
  }
  dbg('rdma_bind_addr successful\n');
  dbg('rdma_listen\n');
  try {
    await id.listen(3);
  } catch (e) {
    perror('rdma_listen', e);
    return -1;
  }
  return 0;
}

/** rping_init_conn_param: one read each way, retries for ever. */
const CONN_PARAM = { responderResources: 1, initiatorDepth: 1, retryCount: 7, rnrRetryCount: 7 };

/** rping_setup_qp, rping_setup_buffers and the first receive, with rping's words when one fails. */
async function prepare(cb: Cb, id: CmId, dbg: (s: string) => void): Promise<boolean> {
  try {
    await setupQp(cb, id, dbg);
  } catch (e) {
    err(`setup_qp failed: ${errnoOf(e) ?? -1}\n`);
    return false;
  }
  try {
    await setupBuffers(cb, dbg);
    postRecv(cb);
  } catch (e) {
    err(`rping_setup_buffers failed: ${errnoOf(e) ?? -1}\n`);
    await freeAll(cb, id);
    return false;
  }
  return true;
}

/** One accepted connection, from its QP to its end (the body of rping_run_server and of each persistent-server thread). */
async function serveConnection(cb: Cb, child: CmId, dbg: (s: string) => void, persistent: boolean): Promise<number> {
  if (!(await prepare(cb, child, dbg))) return -1;
  const cq = cqThread(cb, dbg);
  dbg('accepting client connection request\n');
  try {
    await child.accept(CONN_PARAM);
  } catch (e) {
    perror('rdma_accept', e);
    err(`connect error ${-1}\n`);
    await freeAll(cb, child);
    return -1;
  }
  await cb.sem.wait();
  if (stateOf(cb) === State.ERROR) {
    err(`wait for CONNECTED state ${cb.state}\n`);
    err(`connect error -1\n`);
    await freeAll(cb, child);
    return -1;
  }
  const ret = await testServer(cb, dbg);
  if (ret && !persistent) err(`rping server failed: ${ret}\n`);
  await child.disconnect().catch(() => {});
  await Promise.race([cq, new Promise((r) => setTimeout(r, 2000).unref())]);
  await freeAll(cb, child);
  await child.destroy().catch(() => {});
  return ret;
}

async function runServer(cb: Cb, id: CmId, addr: { address: string }, port: number, dbg: (s: string) => void): Promise<number> {
  let ret = await bindServer(id, addr, port, dbg);
  if (ret) return ret;
  await cb.sem.wait();
  if (stateOf(cb) !== State.CONNECT_REQUEST) {
    err(`wait for CONNECT_REQUEST state ${cb.state}\n`);
    return -1;
  }
  const child = cb.child!;
  child.context = cb;
  ret = await serveConnection(cb, child, dbg, false);
  return ret;
}

async function runPersistentServer(cb: Cb, id: CmId, addr: { address: string }, port: number, dbg: (s: string) => void): Promise<number> {
  const ret = await bindServer(id, addr, port, dbg);
  if (ret) return ret;
  for (;;) {
    await cb.sem.wait();
    if (stateOf(cb) !== State.CONNECT_REQUEST) {
      err(`wait for CONNECT_REQUEST state ${cb.state}\n`);
      return -1;
    }
    // a copy of the listener's control block per connection, as clone_cb(), each served on its own
    const conn: Cb = { ...cb, sem: new Sem(), state: State.CONNECT_REQUEST, child: cb.child, remoteRkey: 0, remoteAddr: 0n, remoteLen: 0 };
    conn.child!.context = conn;
    void serveConnection(conn, conn.child!, dbg, true);
  }
}

async function runClient(cb: Cb, id: CmId, addr: { address: string }, port: number, src: string | undefined, dbg: (s: string) => void): Promise<number> {
  try {
    await id.resolveAddr(addr.address, port, { src, timeoutMs: 2000 });
  } catch (e) {
    perror('rdma_resolve_addr', e);
    return -1;
  }
  await cb.sem.wait();
  if (stateOf(cb) !== State.ROUTE_RESOLVED) {
    err(`waiting for addr/route resolution state ${cb.state}\n`);
    return -1;
  }
  dbg('rdma_resolve_addr - rdma_resolve_route successful\n');
  if (!(await prepare(cb, id, dbg))) return -1;
  const cq = cqThread(cb, dbg);
  try {
    await id.connect(CONN_PARAM);
  } catch (e) {
    perror('rdma_connect', e);
    err('connect error -1\n');
    await freeAll(cb, id);
    return -1;
  }
  await cb.sem.wait();
  if (stateOf(cb) !== State.CONNECTED) {
    err(`wait for CONNECTED state ${cb.state}\n`);
    err('connect error -1\n');
    await freeAll(cb, id);
    return -1;
  }
  dbg('rdma_connect successful\n');
  const ret = await testClient(cb, dbg);
  if (ret) err(`rping client failed: ${ret}\n`);
  const disconnected = new Promise<void>((r) => {
    if (cb.state === State.DISCONNECTED) return r();
    const t = setInterval(() => cb.state === State.DISCONNECTED && (clearInterval(t), r()), 5);
    setTimeout(() => (clearInterval(t), r()), 3000).unref();
  });
  await id.disconnect().catch(() => {});
  await Promise.race([cq, new Promise((r) => setTimeout(r, 2000).unref())]);
  // the DISCONNECTED event (the peer's DREP) is reported before the client goes, as rping's CM thread prints it
  await disconnected;
  await freeAll(cb, id);
  return ret;
}

async function testClient(cb: Cb, dbg: (s: string) => void): Promise<number> {
  let start = 65;
  let ret = 0;
  const sbuf = cb.startMr!.buf;
  for (let ping = 0; !cb.count || ping < cb.count; ping++) {
    cb.state = State.RDMA_READ_ADV;
    const head = Buffer.from(`rdma-ping-${ping}: `, 'latin1');
    const cc = Math.min(head.length, cb.size - 1);
    head.copy(sbuf, 0, 0, cc);
    // snprintf writes its NUL within size; the pattern follows from where the text ended
    let c = start;
    for (let i = cc; i < cb.size; i++) {
      sbuf[i] = c;
      c++;
      if (c > 122) c = 65;
    }
    start++;
    if (start > 122) start = 65;
    sbuf[cb.size - 1] = 0;
    // the source buffer for the server to read, then the sink for it to write into
    if ((ret = await step(cb, () => (formatSend(cb, cb.startMr!, dbg), postSendInfo(cb)), State.RDMA_WRITE_ADV))) break;
    if ((ret = await step(cb, () => (formatSend(cb, cb.rdmaMr!, dbg), postSendInfo(cb)), State.RDMA_WRITE_COMPLETE))) break;
    if (cb.validate && !sbuf.subarray(0, cb.size).equals(cb.rdmaMr!.buf.subarray(0, cb.size))) {
      err('data mismatch!\n');
      ret = -1;
      break;
    }
    if (cb.verbose) out(`ping data: ${cstr(cb.rdmaMr!.buf)}\n`);
  }
  return cb.state === State.DISCONNECTED ? 0 : ret;
}

