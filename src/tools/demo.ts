#!/usr/bin/env node
/**
 * `npm start`: starts softverbsd with two devices (rxe0 on 127.0.0.1, rxe1
 * on 127.0.0.2), shows them with ibv_devinfo, runs ibv_rc_pingpong and rping
 * across them, then two client processes connect through the RDMA CM (B
 * listens on 127.0.0.2, A connects to it; B's buffer address and rkey ride in
 * the REP's private data) and move data with SEND, RDMA WRITE, RDMA READ and
 * both atomics;
 * ib_write_bw -a and ib_send_lat -a sweep message sizes across the two
 * devices and draw their curves (SVG, with the numbers as CSV), and
 * `rdma statistic show` counts the packets; everything it started stops.
 */
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, realpathSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import {
  Access, CmEventType, cmEventStr, EventChannel, PortSpace, QpType, SendFlags, WcStatus, WC_STATUS_STR, WrOpcode,
  type CmEvent, type CmId, type CompletionQueue, type MemoryRegion, type QueuePair, type WorkCompletion,
} from '../verbs/index.js';
import { spawnDaemon } from '../daemon/spawn.js';
import { Fail } from '../common/errors.js';

const TOOLS = fileURLToPath(new URL('../bin/', import.meta.url));

/** Runs one of our tools against the demo's daemon and gives back what it printed. */
function tool(root: string, name: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [join(TOOLS, `${name}.js`), ...args], { env: { ...process.env, SOFTVERBS_ROOT: root }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    p.on('error', reject);
    p.on('close', (code) => (code === 0 ? resolve(out) : reject(new Fail(`${name} ${args.join(' ')} exited ${code}:\n${out}`))));
  });
}

const ALL = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ | Access.REMOTE_ATOMIC;
const MiB = 1 << 20;
const COUNTER = 2 * MiB; // B's 64-bit counter, clear of the WRITE and READ windows

/** The port B listens on (RDMA_PS_TCP's port space is the daemon's own, not TCP's). */
const CM_PORT = 7471;

/** The next event on a CM channel, which must be `want`; anything else is an error that says what came and why. */
export async function expectEvent(ch: EventChannel, want: CmEventType): Promise<CmEvent> {
  const e = await ch.getCmEvent();
  if (!e || e.event !== want) throw new Fail(`expected ${cmEventStr(want)}, got ${e ? `${cmEventStr(e.event)} (status ${e.status}${e.reason ? ` = ${e.reason}` : ''})` : 'the end of the channel'}`);
  return e;
}

async function poll(cq: CompletionQueue): Promise<WorkCompletion> {
  for (;;) {
    const [wc] = cq.pollCq(1);
    if (wc) {
      if (wc.status !== WcStatus.SUCCESS) throw new Fail(`completion failed: ${WC_STATUS_STR[wc.status]}`);
      return wc;
    }
    await new Promise((r) => setImmediate(r));
  }
}

/** A QP on a CM id's device, with one CQ and a 3 MiB buffer everyone may reach. */
async function setup(id: CmId): Promise<{ qp: QueuePair; cq: CompletionQueue; mr: MemoryRegion }> {
  const ctx = id.verbs!;
  const pd = await ctx.allocPd();
  const cq = await ctx.createCq(64);
  const qp = await id.createQp(pd, { sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxSendWr: 16, maxRecvWr: 16 } });
  const mr = await pd.allocMr(3 * MiB, ALL);
  return { qp, cq, mr };
}

/** Process B: listens on 127.0.0.2, accepts A's connection with its buffer's address and rkey as the REP's private data. */
async function responder(root: string): Promise<void> {
  const send = (m: unknown) => process.send!(m);
  const ch = await EventChannel.create(root);
  const listen = await ch.createId(PortSpace.TCP);
  await listen.bindAddr('127.0.0.2', CM_PORT);
  await listen.listen(1);
  send({ listening: { pid: process.pid } });
  const req = await expectEvent(ch, CmEventType.CONNECT_REQUEST);
  const b = await setup(req.id);
  b.mr.buf.fill(0xab, MiB, 2 * MiB);
  b.mr.buf.writeBigUInt64LE(100n, COUNTER);
  b.qp.postRecv({ wrId: 1n, sgList: [b.mr.sge(0, 4096)] }); // receives may be posted from INIT on
  const pd = Buffer.alloc(12);
  pd.writeBigUInt64BE(b.mr.addr, 0);
  pd.writeUInt32BE(b.mr.rkey, 8);
  await req.id.accept({ privateData: pd, responderResources: 16, initiatorDepth: 16 });
  await expectEvent(ch, CmEventType.ESTABLISHED);
  send({ accepted: { qpn: b.qp.qpNum, from: `${req.id.peerAddr!.address}:${req.id.peerAddr!.port}` } });
  process.on('message', async (m: { wait?: boolean; check?: { off: number; len: number }; counter?: boolean; bye?: boolean }) => {
    if (m.wait) {
      const wc = await poll(b.cq);
      send({ recv: { byteLen: wc.byteLen, imm: wc.imm, text: b.mr.buf.subarray(0, wc.byteLen).toString().replace(/\0+$/, ''), srcQp: wc.srcQp } });
    } else if (m.check) {
      send({ sha: createHash('sha256').update(b.mr.buf.subarray(m.check.off, m.check.off + m.check.len)).digest('hex') });
    } else if (m.counter) {
      send({ counter: b.mr.buf.readBigUInt64LE(COUNTER).toString() });
    } else if (m.bye) {
      // A disconnected: the DREQ arrived as DISCONNECTED; our DREP answers it
      await expectEvent(ch, CmEventType.DISCONNECTED);
      await req.id.disconnect();
      send({ disconnected: true });
      process.exit(0);
    }
  });
}

function ask<T>(child: ChildProcess, msg: unknown, key: string): Promise<T> {
  return new Promise((resolve) => {
    const on = (m: Record<string, unknown>) => {
      if (key in m) {
        child.off('message', on);
        resolve(m[key] as T);
      }
    };
    child.on('message', on);
    if (msg) child.send(msg as object);
  });
}

async function main(): Promise<void> {
  const say = (s: string) => process.stdout.write(`${s}\n`);
  const daemon = await spawnDaemon(['--device', 'rxe0=127.0.0.1', '--device', 'rxe1=127.0.0.2']);
  const root = daemon.root;
  let child: ChildProcess | null = null;
  try {
    say(`softverbsd (pid ${daemon.proc.pid}) is up: rxe0 on 127.0.0.1, rxe1 on 127.0.0.2, root ${root}\n`);
    say('$ ibv_devinfo');
    process.stdout.write(await tool(root, 'ibv_devinfo', []));
    say('\n$ ibv_rc_pingpong -d rxe0 -g 0 -n 1000 &            # server');
    say('$ ibv_rc_pingpong -d rxe1 -g 0 -n 1000 127.0.0.1   # client');
    const port = String(18515 + (process.pid % 1000));
    const server = tool(root, 'ibv_rc_pingpong', ['-d', 'rxe0', '-g', '0', '-n', '1000', '-p', port]);
    await new Promise((r) => setTimeout(r, 300));
    const client = await tool(root, 'ibv_rc_pingpong', ['-d', 'rxe1', '-g', '0', '-n', '1000', '-p', port, '127.0.0.1']);
    process.stdout.write((await server).replace(/^/gm, 'server: ').replace(/server: $/, ''));
    process.stdout.write(client.replace(/^/gm, 'client: ').replace(/client: $/, ''));
    say('');
    say('$ rping -s -a 127.0.0.2 -C 3 -v &                # server, RDMA CM on 127.0.0.2:7174');
    say('$ rping -c -a 127.0.0.2 -I 127.0.0.1 -C 3 -v -V   # client');
    const rsrv = tool(root, 'rping', ['-s', '-a', '127.0.0.2', '-C', '3', '-v']);
    await new Promise((r) => setTimeout(r, 300));
    const rcli = await tool(root, 'rping', ['-c', '-a', '127.0.0.2', '-I', '127.0.0.1', '-C', '3', '-v', '-V']);
    process.stdout.write((await rsrv).replace(/^/gm, 'server: ').replace(/server: $/, ''));
    process.stdout.write(rcli.replace(/^/gm, 'client: ').replace(/client: $/, ''));
    say('');

    child = fork(fileURLToPath(import.meta.url), ['--responder', root], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    const accepted = ask<{ qpn: number; from: string }>(child, null, 'accepted');
    const listening = await ask<{ pid: number }>(child, null, 'listening');
    // A: resolve B's address and route, a QP on the device the route leaves from, connect
    const ch = await EventChannel.create(root);
    const id = await ch.createId(PortSpace.TCP);
    await id.resolveAddr('127.0.0.2', CM_PORT, { src: '127.0.0.1' });
    await expectEvent(ch, CmEventType.ADDR_RESOLVED);
    await id.resolveRoute();
    await expectEvent(ch, CmEventType.ROUTE_RESOLVED);
    const a = await setup(id);
    await id.connect({ responderResources: 16, initiatorDepth: 16 });
    const est = await expectEvent(ch, CmEventType.ESTABLISHED);
    const remote = est.param.privateData.subarray(0, 12);
    const info = { qpn: (await accepted).qpn, pid: listening.pid, addr: Buffer.from(remote).readBigUInt64BE(0), rkey: Buffer.from(remote).readUInt32BE(8) };
    say(`process A (pid ${process.pid}) rxe0 QP 0x${a.qp.qpNum.toString(16)}  <->  process B (pid ${info.pid}) rxe1 QP 0x${info.qpn.toString(16)}: RC, connected through the RDMA CM`);
    say(`  A resolved 127.0.0.2:${CM_PORT} and connected from ${id.localAddr!.address}:${id.localAddr!.port}; B's buffer (addr 0x${info.addr.toString(16)}, rkey 0x${info.rkey.toString(16)}) came in the REP's private data\n`);
    const remoteAddr = info.addr;

    // SEND with immediate
    const text = 'hello from process A';
    a.mr.buf.write(text, 0);
    const recv = ask<{ byteLen: number; imm: number; text: string; srcQp: number }>(child, { wait: true }, 'recv');
    a.qp.postSend({ wrId: 1n, opcode: WrOpcode.SEND_WITH_IMM, imm: 0x1234, sendFlags: SendFlags.SIGNALED, sgList: [a.mr.sge(0, text.length)] });
    await poll(a.cq);
    const r = await recv;
    say(`SEND_WITH_IMM   ${text.length} bytes: B received "${r.text}" (byte_len ${r.byteLen}, imm 0x${r.imm.toString(16)}, from QP 0x${r.srcQp.toString(16)})`);

    // RDMA WRITE 1 MiB
    for (let i = 0; i < MiB; i++) a.mr.buf[i] = (i * 31) & 0xff;
    const want = createHash('sha256').update(a.mr.buf.subarray(0, MiB)).digest('hex');
    let t = process.hrtime.bigint();
    a.qp.postSend({ wrId: 2n, opcode: WrOpcode.RDMA_WRITE, sendFlags: SendFlags.SIGNALED, sgList: [a.mr.sge(0, MiB)], rdma: { remoteAddr, rkey: info.rkey } });
    await poll(a.cq);
    let us = Number(process.hrtime.bigint() - t) / 1000;
    const got = await ask<string>(child, { check: { off: 0, len: MiB } }, 'sha');
    say(`RDMA_WRITE      1 MiB into B's memory in ${us.toFixed(0)} us: B's sha256 ${got.slice(0, 16)}… ${got === want ? 'matches' : 'DIFFERS'}`);

    // RDMA READ 1 MiB
    t = process.hrtime.bigint();
    a.qp.postSend({ wrId: 3n, opcode: WrOpcode.RDMA_READ, sendFlags: SendFlags.SIGNALED, sgList: [a.mr.sge(MiB, MiB)], rdma: { remoteAddr: remoteAddr + BigInt(MiB), rkey: info.rkey } });
    await poll(a.cq);
    us = Number(process.hrtime.bigint() - t) / 1000;
    const allAb = a.mr.buf.subarray(MiB, 2 * MiB).every((x) => x === 0xab);
    say(`RDMA_READ       1 MiB from B's memory in ${us.toFixed(0)} us: ${allAb ? 'every byte is 0xab, as B wrote it' : 'WRONG BYTES'}`);

    // atomics on B's counter
    a.qp.postSend({ wrId: 4n, opcode: WrOpcode.ATOMIC_FETCH_AND_ADD, sendFlags: SendFlags.SIGNALED, sgList: [a.mr.sge(0, 8)], atomic: { remoteAddr: remoteAddr + BigInt(COUNTER), compareAdd: 5n, rkey: info.rkey } });
    await poll(a.cq);
    const old = a.mr.buf.readBigUInt64LE(0);
    say(`FETCH_AND_ADD   +5 on B's counter: returned ${old}, counter is now ${await ask<string>(child, { counter: true }, 'counter')}`);
    a.qp.postSend({ wrId: 5n, opcode: WrOpcode.ATOMIC_CMP_AND_SWP, sendFlags: SendFlags.SIGNALED, sgList: [a.mr.sge(8, 8)], atomic: { remoteAddr: remoteAddr + BigInt(COUNTER), compareAdd: 105n, swap: 7n, rkey: info.rkey } });
    await poll(a.cq);
    say(`CMP_AND_SWP     105 -> 7: returned ${a.mr.buf.readBigUInt64LE(8)}, counter is now ${await ask<string>(child, { counter: true }, 'counter')}`);

    await id.disconnect();
    const bye = ask(child, { bye: true }, 'disconnected');
    await expectEvent(ch, CmEventType.DISCONNECTED);
    await bye;
    say('rdma_disconnect: A sent the DREQ, B answered with the DREP; both saw RDMA_CM_EVENT_DISCONNECTED');
    await new Promise((res) => child!.once('exit', res));
    await id.destroyQp();
    await id.destroy();
    await ch.destroy();
    await id.verbs!.closeDevice();
    // perftest, with our -a additions: CSV/JSON/SVG of the sweep
    const charts = join(tmpdir(), 'softverbs-demo');
    mkdirSync(charts, { recursive: true });
    for (const [t, args] of [['ib_write_bw', ['-a', '-n', '100']], ['ib_send_lat', ['-a', '-n', '50']]] as const) {
      const chart = join(charts, `${t}.svg`);
      const csv = join(charts, `${t}.csv`);
      const pport = String(19515 + (process.pid % 1000));
      say(`\n$ ${t} -d rxe0 ${args.join(' ')} &   # server`);
      say(`$ ${t} -d rxe1 ${args.join(' ')} --chart ${chart} --results_csv ${csv} 127.0.0.1   # client`);
      const sv = tool(root, t, ['-d', 'rxe0', '-p', pport, ...args]);
      await new Promise((res) => setTimeout(res, 300));
      process.stdout.write(await tool(root, t, ['-d', 'rxe1', '-p', pport, ...args, '--chart', chart, '--results_csv', csv, '127.0.0.1']));
      await sv;
      say(`chart: ${chart}`);
    }

    say('\n$ rdma statistic show');
    process.stdout.write(await tool(root, 'rdma', ['statistic', 'show']));
    say('\nall done: stopping the client and the daemon');
  } finally {
    if (child && child.exitCode === null) child.kill();
    await daemon.stop();
  }
}

/** Run as the program (npm start, and process B forked from it), not imported by a test for expectEvent; `node demo` may name it without .js. */
function isProgram(): boolean {
  const me = fileURLToPath(import.meta.url);
  for (const p of [process.argv[1], `${process.argv[1]}.js`]) {
    try {
      if (p && realpathSync(p) === me) return true;
    } catch {
      /* not this spelling */
    }
  }
  return false;
}

if (isProgram()) {
  if (process.argv[2] === '--responder') await responder(process.argv[3]!);
  else await main();
}
