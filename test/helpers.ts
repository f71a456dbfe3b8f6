/** Test helpers: a real softverbsd process in a temp root, and QP plumbing. */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { readFileSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { after, before } from 'node:test';
import { fileURLToPath } from 'node:url';
import { mgmtQuery } from '../src/verbs/mgmt.js';
import { DAEMON_MAIN, spawnDaemon, type SpawnedDaemon } from '../src/daemon/spawn.js';
import { Access, getDeviceList, Mtu, openDevice, QpAttrMask as A, QpState, QpType, SendFlags, WrOpcode, type Context, type ProtectionDomain, type QueuePair } from '../src/verbs/index.js';

export const DIST = join(dirname(fileURLToPath(import.meta.url)), '..');
export const DAEMON = DAEMON_MAIN;

export type RunningDaemon = SpawnedDaemon;

/**
 * This test process's device addresses: four of one loopback /24 picked at random (127.a.b.1–4), so no
 * other run's daemon, not even a stale one holding ADDR:4791, can stand in the way of this one's.
 */
export const [A1, A2, A3, A4] = loopbackAddrs(4) as [string, string, string, string];

/** Starts softverbsd in a temp root and waits for "softverbsd: ready". */
export function startDaemon(args: string[] = ['--device', `rxe0=${A1}`], opts: { root?: string; keepRoot?: boolean; wrapper?: string[] } = {}): Promise<RunningDaemon> {
  return spawnDaemon(args, opts);
}

/**
 * The daemon the tests of the describe block that calls this share: started with `args` before them, stopped after
 * them. Its root is there for the tests to read.
 */
export function suiteDaemon(args: string[]): { readonly root: string } {
  let d: RunningDaemon | undefined;
  before(async () => {
    d = await startDaemon(args);
  });
  after(async () => {
    await d?.stop();
  });
  return {
    get root() {
      return d!.root;
    },
  };
}

/** What a process printed (stdout and stderr as one stream) and how it exited; killed after `ms`. */
/** How a process ended: its exit code, or (code null) the signal that killed it. */
export interface Run { code: number | null; out: string; signal?: NodeJS.Signals | null }
export function runProcess(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env, ms = 30_000): Promise<Run> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout!.on('data', (d) => (out += d));
    p.stderr!.on('data', (d) => (out += d));
    const t = setTimeout(() => p.kill('SIGKILL'), ms);
    p.on('close', (code, signal) => {
      clearTimeout(t);
      resolve({ code, out, signal });
    });
  });
}

/** Two daemons, rxe0 on A1 and rxe0 on A2 (RoCEv2 between them), with a context open on each. */
export async function twoDaemons(): Promise<{ d1: RunningDaemon; d2: RunningDaemon; a: Context; b: Context; close(): Promise<void> }> {
  const d1 = await startDaemon(['--device', `rxe0=${A1}`]);
  const d2 = await startDaemon(['--device', `rxe0=${A2}`]);
  const a = await openDevice(getDeviceList(d1.root)[0]!, d1.root);
  const b = await openDevice(getDeviceList(d2.root)[0]!, d2.root);
  return {
    d1, d2, a, b,
    async close() {
      a.closeDevice();
      b.closeDevice();
      await d1.stop();
      await d2.stop();
    },
  };
}

/** Brings a QP to RTS connected to (destQpn on gid). RC gets generous defaults; pass overrides for error tests. */
export async function connectQp(qp: QueuePair, ctx: Context, remote: { qpn: number; gid: Uint8Array; psn?: number }, o: Partial<{ mtu: Mtu; timeout: number; retryCnt: number; rnrRetry: number; minRnrTimer: number; access: number; maxRd: number; psn: number; rtrOnly: boolean }> = {}): Promise<void> {
  const t = qp.qpType;
  const access = o.access ?? (Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ | Access.REMOTE_ATOMIC);
  if (t === QpType.UD) {
    await qp.modifyQp({ qpState: QpState.INIT, pkeyIndex: 0, portNum: 1, qkey: 0x11111111 }, A.STATE | A.PKEY_INDEX | A.PORT | A.QKEY);
    await qp.modifyQp({ qpState: QpState.RTR }, A.STATE);
    await qp.modifyQp({ qpState: QpState.RTS, sqPsn: o.psn ?? 0 }, A.STATE | A.SQ_PSN);
    return;
  }
  await qp.modifyQp({ qpState: QpState.INIT, pkeyIndex: 0, portNum: 1, qpAccessFlags: access }, A.STATE | A.PKEY_INDEX | A.PORT | A.ACCESS_FLAGS);
  const rtr = { qpState: QpState.RTR, pathMtu: o.mtu ?? Mtu.MTU_4096, destQpNum: remote.qpn, rqPsn: remote.psn ?? 0, ahAttr: { grh: { dgid: remote.gid, sgidIndex: 0, hopLimit: 64 }, isGlobal: true, portNum: 1 }, maxDestRdAtomic: 16, minRnrTimer: o.minRnrTimer ?? 1 };
  if (t === QpType.RC) await qp.modifyQp(rtr, A.STATE | A.AV | A.PATH_MTU | A.DEST_QPN | A.RQ_PSN | A.MAX_DEST_RD_ATOMIC | A.MIN_RNR_TIMER);
  else await qp.modifyQp(rtr, A.STATE | A.AV | A.PATH_MTU | A.DEST_QPN | A.RQ_PSN);
  if (o.rtrOnly) return;
  if (t === QpType.RC)
    await qp.modifyQp({ qpState: QpState.RTS, sqPsn: o.psn ?? 0, timeout: o.timeout ?? 14, retryCnt: o.retryCnt ?? 7, rnrRetry: o.rnrRetry ?? 7, maxRdAtomic: o.maxRd ?? 16 }, A.STATE | A.SQ_PSN | A.TIMEOUT | A.RETRY_CNT | A.RNR_RETRY | A.MAX_QP_RD_ATOMIC);
  else await qp.modifyQp({ qpState: QpState.RTS, sqPsn: o.psn ?? 0 }, A.STATE | A.SQ_PSN);
  void ctx;
}

/** Polls a CQ until n completions arrived or the deadline passed (yielding to the event loop between polls). */
export async function pollN(cq: { pollCq(max?: number): import('../src/verbs/index.js').WorkCompletion[] }, n: number, ms = 3000): Promise<import('../src/verbs/index.js').WorkCompletion[]> {
  const out: import('../src/verbs/index.js').WorkCompletion[] = [];
  const end = Date.now() + ms;
  while (out.length < n) {
    out.push(...cq.pollCq(n - out.length));
    if (out.length >= n) break;
    if (Date.now() > end) throw new Error(`only ${out.length} of ${n} completions in ${ms} ms`);
    await new Promise((r) => setTimeout(r, 1));
  }
  return out;
}

export const PEER = join(DIST, 'test', 'fixtures', 'peer.js');

export interface Peer {
  pid: number;
  call<T = any>(op: string, args?: Record<string, unknown>): Promise<T>;
  kill(sig?: NodeJS.Signals): Promise<void>;
  proc: ChildProcess;
}

/** Starts the peer fixture as its own process (optionally through a wrapper such as setpriv/prlimit). */
export function spawnPeer(wrapper: string[] = []): Peer {
  const cmd = [...wrapper, process.execPath, PEER];
  const proc = spawn(cmd[0]!, cmd.slice(1), { stdio: ['pipe', 'pipe', 'inherit'] });
  const waiting: Array<(l: string) => void> = [];
  let buf = '';
  proc.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      waiting.shift()?.(line);
    }
  });
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  proc.once('exit', () => {
    for (const w of waiting.splice(0)) w(JSON.stringify({ ok: false, error: 'peer exited' }));
  });
  return {
    pid: proc.pid!,
    proc,
    call(op, args = {}) {
      return new Promise((resolve, reject) => {
        waiting.push((l) => {
          const r = JSON.parse(l);
          if (r.ok) resolve(r.out);
          else reject(Object.assign(new Error(`${op}: ${r.error}`), { code: r.code }));
        });
        proc.stdin!.write(JSON.stringify({ op, ...args }) + '\n');
      });
    },
    async kill(sig = 'SIGKILL') {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(sig);
      await exited;
    },
  };
}

/** Management query to a device file (what `rdma` asks). */
export async function mgmt(devPath: string, op: string): Promise<any> {
  return mgmtQuery(devPath, op);
}

/** A deterministic byte pattern (so two processes can check bytes without shipping them). */
export function pattern(seed: number, len: number): Buffer {
  const b = Buffer.alloc(len);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < len; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}


/** The TCP payloads of a pcap (Ethernet, IPv4), in order, with their ports: one per segment, as the tools wrote them. */
export function tcpPayloads(file: string): { sport: number; dport: number; data: Buffer }[] {
  const b = readFileSync(file);
  const out: { sport: number; dport: number; data: Buffer }[] = [];
  for (let o = 24; o + 16 <= b.length; ) {
    const incl = b.readUInt32LE(o + 8);
    const f = b.subarray(o + 16, o + 16 + incl);
    o += 16 + incl;
    if (f.readUInt16BE(12) !== 0x0800 || f[23] !== 6) continue;
    const ihl = (f[14]! & 15) * 4;
    const tcp = 14 + ihl;
    const total = f.readUInt16BE(16);
    const data = f.subarray(tcp + (f[tcp + 12]! >> 4) * 4, 14 + total);
    if (data.length) out.push({ sport: f.readUInt16BE(tcp), dport: f.readUInt16BE(tcp + 2), data: Buffer.from(data) });
  }
  return out;
}

/**
 * Our tool against the lab's, our side as the server or as the client: the
 * server starts first (an ssh into a TCG guest takes a while). Both runs,
 * ours first.
 */
export async function meet(oursServes: boolean, ours: (server: boolean) => Promise<Run>, theirs: (server: boolean) => Promise<Run>): Promise<[Run, Run]> {
  if (oursServes) {
    const s = ours(true);
    await new Promise((r) => setTimeout(r, 800));
    const [b, a] = await Promise.all([theirs(false), s]);
    return [a, b];
  }
  const s = theirs(true);
  await new Promise((r) => setTimeout(r, 3000));
  const [a, b] = await Promise.all([ours(false), s]);
  return [a, b];
}

/**
 * n addresses of one loopback /24 no other run is likely to use (127.a.b.1 … 127.a.b.n, a and b
 * random), so a daemon left behind by another run cannot hold the wire port this test needs.
 */
export function loopbackAddrs(n: number): string[] {
  const a = 10 + Math.floor(Math.random() * 240);
  const b = 1 + Math.floor(Math.random() * 254);
  return Array.from({ length: n }, (_, i) => `127.${a}.${b}.${i + 1}`);
}

/** A TCP port that was free a moment ago (the kernel's pick), for a tool's out-of-band exchange. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

export const IS_ROOT = process.getuid?.() === 0;

/**
 * An unprivileged user of the tests' own, created on first use (root only): its uid and gid,
 * and the setpriv prefix that runs a command as that user with no supplementary groups.
 */
export function testUser(name: string): { uid: number; gid: number; as: string[] } {
  let r = spawnSync('id', ['-u', name], { encoding: 'utf8' });
  if (r.status !== 0) {
    const add = spawnSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', name], { encoding: 'utf8' });
    if (add.status !== 0 && !/already exists/.test(add.stderr)) throw new Error(`useradd ${name}: ${add.stderr}`);
    r = spawnSync('id', ['-u', name], { encoding: 'utf8' });
  }
  const uid = Number(r.stdout.trim());
  const gid = Number(spawnSync('id', ['-g', name], { encoding: 'utf8' }).stdout.trim());
  return { uid, gid, as: ['setpriv', `--reuid=${uid}`, `--regid=${gid}`, '--clear-groups', '--'] };
}

/**
 * After an attack or a fuzzer: the daemon is alive, reported no internal error of its own, and a
 * fresh RC pair in `pd` does an RDMA WRITE end to end.
 */
export async function assertServing(d: RunningDaemon, ctx: Context, pd: ProtectionDomain): Promise<void> {
  assert.equal(d.proc.exitCode, null, d.stderr());
  assert.doesNotMatch(d.stderr(), /internal error/);
  assert.deepEqual(await rcWriteLoop(ctx, pd, 'softverbs', 7), { status: 0, landed: 'softverbs' });
}

/**
 * A fresh RC pair in `pd` RDMA WRITEs `word` from the start of a new MR to its byte 64, then everything it
 * made is destroyed: the WRITE's completion status, and what landed.
 */
export async function rcWriteLoop(ctx: Context, pd: ProtectionDomain, word: string, wrId: number): Promise<{ status: number; landed: string }> {
  const cq = await ctx.createCq(8);
  const a = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: {} });
  const b = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: {} });
  await connectQp(a, ctx, { qpn: b.qpNum, gid: ctx.queryGid(1, 0) });
  await connectQp(b, ctx, { qpn: a.qpNum, gid: ctx.queryGid(1, 0) });
  const mr = await pd.allocMr(128, Access.LOCAL_WRITE | Access.REMOTE_WRITE);
  const n = mr.buf.write(word, 0);
  a.postSend({ wrId, opcode: WrOpcode.RDMA_WRITE, sendFlags: SendFlags.SIGNALED, sgList: [mr.sge(0, n)], rdma: { remoteAddr: mr.addr + 64n, rkey: mr.rkey } });
  const status = (await pollN(cq, 1))[0]!.status;
  const landed = mr.buf.toString('utf8', 64, 64 + n);
  await a.destroyQp();
  await b.destroyQp();
  await mr.deregMr();
  await cq.destroyCq();
  return { status, landed };
}

/** A process's resident memory in KiB (VmRSS), to bound what a daemon grows to. */
export function rssKiB(pid: number): number {
  return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
}
