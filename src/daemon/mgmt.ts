/**
 * The management requests (what nldev serves `rdma` over netlink): a JSON object after the uverbs header,
 * `op` naming the request, answered with JSON or an errno and its reason. Each request has its handler,
 * named after it, in a table by request name.
 */
import { spinGate } from '../native/spin-gate.js';
import { wrIdOf } from '../abi/ring.js';
import * as U from '../abi/uverbs.js';
import { CmdError, E, fail } from '../common/errno.js';
import { messageOf } from '../common/errors.js';
import type { SoftDevice } from '../hca/device.js';
import type { Fault } from '../hca/fabric.js';
import type { Reply } from './connection.js';
import type { Context } from './context.js';
import type { PinnedAccounts } from './memlock.js';

/** What the management requests read and change of the daemon. */
export interface MgmtHost {
  readonly devs: ReadonlyArray<{ dev: SoftDevice; kname: string; path: string }>;
  readonly contexts: ReadonlySet<Context>;
  readonly pinned: PinnedAccounts;
  readonly fabric: { readonly fault: Fault | null };
  readonly cm: { track(): Array<Record<string, unknown>> };
  privileged(uid: number): boolean;
  /** The network interface a device's port follows (null while none carries its address). */
  netdevOf(dev: SoftDevice): string | null;
  linkAdd(name: string, netdev: string): Promise<void>;
  linkDelete(name: string): void;
}

/** A request: `op` names it, the rest are its arguments as the client sent them. */
interface Request {
  op?: unknown;
  name?: unknown;
  netdev?: unknown;
}

/** A handler's answer goes back as JSON (once settled, if it is a promise); a CmdError it throws as its errno. */
type Handler = (host: MgmtHost, req: Request, uid: number) => unknown;

/** restrack fields shown to root and the owner only. */
const SECRET_FIELDS = ['lkey', 'rkey', 'iova', 'sqPsn', 'rqPsn', 'pages', 'handle'] as const;

function restrack(host: MgmtHost, _req: Request, uid: number): unknown[] {
  // as nldev: everyone sees the resources; keys, IOVAs and PSNs (what it takes to reach into another
  // process's memory or inject into its connection) only root, the daemon's own uid and the owner
  const rows = [...host.contexts].flatMap((c) => {
    const own = c.track();
    if (host.privileged(uid) || c.uid === uid) return own;
    for (const r of own) for (const k of SECRET_FIELDS) delete r[k];
    return own;
  });
  return [...rows, ...host.cm.track()];
}

/** restrack's ctx entries: every open context, objects or not (nothing in them is secret). */
function contexts(host: MgmtHost): unknown[] {
  return [...host.contexts].map((c) => ({ dev: c.dev.name, pid: c.pid, uid: c.uid, comm: c.comm, type: 'ctx', ctxn: c.ctxn }));
}

/** Pinned pages by pid: of one's own processes, or of all of them for root. */
function pinned(host: MgmtHost, _req: Request, uid: number): Record<string, number> {
  const visible = (pid: number) => host.privileged(uid) || [...host.contexts].some((c) => c.pid === pid && c.uid === uid);
  return Object.fromEntries(Object.entries(host.pinned.snapshot()).filter(([pid]) => visible(Number(pid))));
}

function devices(host: MgmtHost): unknown[] {
  return host.devs.map(({ dev, kname, path }) => {
    const t = dev.transport;
    return {
      name: dev.name, kname, addr: dev.addr, netdev: host.netdevOf(dev), path, mtu: dev.mtuBytes, state: dev.portState,
      qpns: [...dev.qps.keys()],
      wire: t?.running ? t.mode : null, wireReader: t?.running ? t.portReader : null, wireMerged: t?.merged ?? 0,
      wireDropped: Object.fromEntries([...(t?.dropped ?? []), ...dev.drops]),
      doorbells: dev.doorbells, polled: dev.polled, compEvents: dev.compEvents,
      spin: { mode: spinGate.mode, granted: spinGate.granted, refused: spinGate.refused, runnable: spinGate.runnable },
    };
  });
}

function counters(host: MgmtHost): unknown[] {
  return host.devs.map(({ dev }) => ({ name: dev.name, counters: dev.counters }));
}

/** The transport state of every QP (debugging a stuck connection): PSNs and all, so root's only. */
function qps(host: MgmtHost, _req: Request, uid: number): unknown[] {
  if (!host.privileged(uid)) fail(E.EPERM, 'qps: only root may read the transport state of every QP');
  return host.devs.flatMap(({ dev }) => [...dev.qps.values()].map((q) => {
    const { comp, resp } = q;
    const head = q.wqeAt(comp.idx);
    return {
      qpn: q.qpn, state: q.state, req: q.req,
      comp: { idx: comp.idx, psn: comp.psn, retryCnt: comp.retryCnt, rnrRetry: comp.rnrRetry, timer: !!comp.timer, rnrTimer: !!comp.rnrTimer },
      resp: {
        psn: resp.psn, msn: resp.msn, sentPsnNak: resp.sentPsnNak, inMsg: resp.inMsg,
        res: resp.res.map((r) => [r.atomic ? 'A' : 'R', r.firstPsn, r.lastPsn]),
      },
      head: {
        state: head.state, opcode: head.opcode, firstPsn: head.firstPsn, lastPsn: head.lastPsn, offset: head.offset,
        wrId: String(wrIdOf(head)),
      },
      sqProduced: q.sqProduced(),
    };
  }));
}

function faults(host: MgmtHost): unknown {
  const f = host.fabric.fault;
  return f ? { dropped: f.dropped, duplicated: f.duplicated, reordered: f.reordered, delayed: f.delayed } : null;
}

/** Changing the device set is the administrator's (CAP_NET_ADMIN in Linux; here uid 0 or the daemon's own). */
function mayChangeLinks(host: MgmtHost, op: string, uid: number): void {
  if (!host.privileged(uid)) fail(E.EPERM, `${op}: only root may add or delete links`);
}

function linkAdd(host: MgmtHost, req: Request, uid: number): Promise<object> {
  mayChangeLinks(host, 'link-add', uid);
  return host.linkAdd(String(req.name ?? ''), String(req.netdev ?? '')).then(() => ({}));
}

function linkDelete(host: MgmtHost, req: Request, uid: number): object {
  mayChangeLinks(host, 'link-delete', uid);
  const name = String(req.name ?? '');
  const exists = () => host.devs.some((d) => d.dev.name === name);
  if (!exists()) fail(E.ENODEV, `link delete: no device ${name}`);
  // after the answer: this very connection may be one of the device's, and deleting it closes them all
  setImmediate(() => {
    // another request may have deleted it in between
    if (exists()) host.linkDelete(name);
  });
  return {};
}

const REQUESTS: Readonly<Record<string, Handler>> = {
  devices,
  counters,
  restrack,
  contexts,
  pinned,
  qps,
  faults,
  'link-add': linkAdd,
  'link-delete': linkDelete,
};

/** The request in a management frame: JSON text after the header, padded with spaces or NULs. */
function parseRequest(frame: Buffer): Request {
  const text = frame.subarray(U.HDR_SIZE).toString('utf8').replace(/\0+$/, '').trim();
  let req: unknown;
  try {
    req = JSON.parse(text || '{}');
  } catch (e) {
    if (!(e instanceof SyntaxError)) throw e;
    fail(E.EINVAL, `the request is not JSON (${e.message})`);
  }
  if (typeof req !== 'object' || req === null || Array.isArray(req)) {
    fail(E.EINVAL, `the request is ${req === null ? 'null' : Array.isArray(req) ? 'an array' : `a ${typeof req}`}, not a JSON object`);
  }
  return req;
}

function handlerOf(op: unknown): Handler {
  if (op === undefined) fail(E.EOPNOTSUPP, `the request has no op (one of ${Object.keys(REQUESTS).join(', ')})`);
  // own keys only: "constructor" or "__proto__" is no request
  if (typeof op !== 'string' || !Object.hasOwn(REQUESTS, op)) {
    fail(E.EOPNOTSUPP, `unknown request ${JSON.stringify(op)} (one of ${Object.keys(REQUESTS).join(', ')})`);
  }
  return REQUESTS[op]!;
}

function answer(reply: Reply, out: unknown): void {
  const body = Buffer.from(JSON.stringify(out));
  reply(0, body, body.length);
}

/** A refusal carries its reason; an error that is not an errno (a wire that cannot bind) is EIO with its message. */
function refuse(reply: Reply, e: unknown): void {
  if (e instanceof CmdError) reply(e.errno, Buffer.from(e.message));
  else reply(-E.EIO, Buffer.from(messageOf(e)));
}

/** One management frame from a client of `uid`, answered on `reply` (at once, unless its handler waits). */
export function serveMgmt(host: MgmtHost, frame: Buffer, reply: Reply, uid: number): void {
  let out: unknown;
  try {
    const req = parseRequest(frame);
    out = handlerOf(req.op)(host, req, uid);
  } catch (e) {
    return refuse(reply, e);
  }
  if (out instanceof Promise) out.then((v) => answer(reply, v), (e) => refuse(reply, e));
  else answer(reply, out);
}
