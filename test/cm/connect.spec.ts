/**
 * RDMA CM end to end through a real daemon: listen/connect/accept between two
 * devices of one daemon and between two daemons (IPv4, IPv6), data over the
 * connection, disconnect from either side, refusal without a listener, a
 * listener that dies mid-handshake, private data of every allowed length,
 * many connections with nothing left behind, and lost REQs/REPs retried.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CmEventType, EventChannel, PortSpace, WrOpcode, SendFlags, Access, type CmId } from '../../src/verbs/index.js';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { A1, A2, A3, A4, DIST, mgmt, pollN, runProcess, startDaemon, suiteDaemon } from '../helpers.js';
import { connectToNobody, dial, expectEvent, listenOn, nextPort, resolve } from './helpers.js';
import { createEp, getAddrInfo, getDeviceList, nextCompletion, openDevice, type CompletionQueue, type MemoryRegion, type QueuePair, type VerbsError } from '../../src/verbs/index.js';

/** A connection from a new id on `cch` to the listener on `sch` (addr:port), accepted with a small QP: both ends established. */
async function connectPair(cch: EventChannel, sch: EventChannel, addr: string, port: number, src: string, ms = 10_000): Promise<{ cid: CmId; sid: CmId }> {
  const cid = await dial(cch, addr, port, src);
  await cid.connect();
  const req = await expectEvent(sch, CmEventType.CONNECT_REQUEST, ms);
  await req.id.createQp(null, { cap: { maxSendWr: 1, maxRecvWr: 1 } });
  await req.id.accept();
  await expectEvent(cch, CmEventType.ESTABLISHED, ms);
  await expectEvent(sch, CmEventType.ESTABLISHED, ms);
  return { cid, sid: req.id };
}

/** `first` disconnects, `second` sees it and answers, `first` sees that; then both ids and their QPs go. */
async function closePair(first: CmId, firstCh: EventChannel, second: CmId, secondCh: EventChannel, ms = 10_000): Promise<void> {
  await first.disconnect();
  await expectEvent(secondCh, CmEventType.DISCONNECTED, ms);
  await second.disconnect();
  await expectEvent(firstCh, CmEventType.DISCONNECTED, ms);
  for (const id of [first, second]) {
    await id.destroyQp();
    await id.destroy();
  }
}

/** The cmlisten fixture (argv after its path), and a wait for each line it is to say. */
function listener(...args: string[]) {
  const child = spawn(process.execPath, [join(DIST, 'test', 'fixtures', 'cmlisten.js'), ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  let said = '';
  const saw = (what: string) => new Promise<void>((res) => {
    const check = () => said.includes(what) && res();
    child.stdout!.on('data', (b) => ((said += b), check()));
    check();
  });
  return { child, saw };
}

/** Two event channels (the server's on srvRoot, the client's on cliRoot) and a listener bound to addr:port (a fresh port unless given). */
async function listening(srvRoot: string, cliRoot: string, addr: string, backlog?: number, port = nextPort()) {
  const sch = await EventChannel.create(srvRoot);
  const cch = await EventChannel.create(cliRoot);
  const listen = await listenOn(sch, addr, port, backlog);
  return { sch, cch, listen, port };
}

/** A listener on `addr`, a client from `src`: both ends established, each with an RC QP. */
async function establish(srvRoot: string, cliRoot: string, addr: string, src: string | undefined, pd: Uint8Array = new Uint8Array(0)) {
  const { sch, cch, listen, port: p } = await listening(srvRoot, cliRoot, addr, 4);
  const cid = await cch.createId(PortSpace.TCP);
  await resolve(cch, cid, addr, p, src);
  assert.ok(cid.verbs, 'the client id has its device');
  await cid.createQp(null, { cap: { maxSendWr: 4, maxRecvWr: 4, maxSendSge: 1, maxRecvSge: 1 } });
  await cid.connect({ privateData: pd });
  const req = await expectEvent(sch, CmEventType.CONNECT_REQUEST);
  assert.equal(req.listenId, listen);
  const child = req.id;
  assert.ok(child.verbs, 'the new id has its device');
  await child.createQp(null, { cap: { maxSendWr: 4, maxRecvWr: 4, maxSendSge: 1, maxRecvSge: 1 } });
  await child.accept({});
  await expectEvent(cch, CmEventType.ESTABLISHED);
  await expectEvent(sch, CmEventType.ESTABLISHED);
  return { sch, cch, listen, cid, child, req, port: p };
}

/** The end of what `establish` made: both ids with their QPs, the listener, both channels. */
async function teardown(c: Awaited<ReturnType<typeof establish>>): Promise<void> {
  for (const id of [c.cid, c.child]) {
    await id.destroyQp();
    await id.destroy();
  }
  await c.listen.destroy();
  await c.sch.destroy();
  await c.cch.destroy();
}

async function sendOne(from: CmId, to: CmId, text: string): Promise<string> {
  const sbuf = await from.pd!.allocMr(64, Access.LOCAL_WRITE);
  const rbuf = await to.pd!.allocMr(64, Access.LOCAL_WRITE);
  to.qp!.postRecv({ wrId: 1n, sgList: [{ addr: rbuf.addr, length: 64, lkey: rbuf.lkey }] });
  sbuf.buf.write(text);
  from.qp!.postSend({ wrId: 2n, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED, sgList: [{ addr: sbuf.addr, length: text.length, lkey: sbuf.lkey }] });
  const [wc] = await pollN(to.recvCq!, 1);
  assert.equal(wc!.status, 0);
  await pollN(from.sendCq!, 1);
  const got = rbuf.buf.subarray(0, wc!.byteLen).toString();
  await sbuf.deregMr();
  await rbuf.deregMr();
  return got;
}

describe('RDMA CM', () => {
  const d = suiteDaemon(['--device', `rxe0=${A1}`, '--device', `rxe1=${A2}`]);

  test('connect, accept, data and disconnect between two devices of one daemon', async () => {
    const c = await establish(d.root, d.root, A2, A1, Buffer.from('hello'));
    assert.equal(Buffer.from(c.req.param.privateData.subarray(0, 5)).toString(), 'hello');
    assert.equal(c.cid.localAddr?.address, A1);
    assert.equal(c.child.peerAddr?.address, A1);
    assert.equal(c.child.localAddr?.port, c.port);
    assert.equal(await sendOne(c.cid, c.child, 'ping'), 'ping');
    assert.equal(await sendOne(c.child, c.cid, 'pong'), 'pong');
    await c.cid.disconnect();
    await expectEvent(c.sch, CmEventType.DISCONNECTED);
    await c.child.disconnect();
    await expectEvent(c.cch, CmEventType.DISCONNECTED);
    await teardown(c);
  });

  test('no listener: REJECTED with reason 8 (invalid service ID)', async () => {
    const cch = await EventChannel.create(d.root);
    const e = await connectToNobody(cch, A2, A1, CmEventType.REJECTED);
    assert.equal(e.status, 8);
    await cch.destroy();
  });

  /** What the daemon tracks: cm_ids and QPs (nothing may be left once every connection is closed). */
  async function tracked(): Promise<{ cmIds: number; qps: number }> {
    const rows: Array<{ type: string }> = await mgmt(getDeviceList(d.root)[0]!.devPath, 'restrack');
    return { cmIds: rows.filter((r) => r.type === 'cm_id').length, qps: rows.filter((r) => r.type === 'qp').length };
  }

  test("the first SEND runs from the REP's starting PSN and the peer's READ from the REQ's (as Linux numbers them)", async () => {
    const c = await establish(d.root, d.root, A2, A1);
    const qps: Array<{ qpn: number; req: { psn: number }; resp: { psn: number } }> = await mgmt(getDeviceList(d.root)[0]!.devPath, 'qps');
    const cli = qps.find((q) => q.qpn === c.cid.qp!.qpNum && q.req)!;
    const srv = qps.find((q) => q.qpn === c.child.qp!.qpNum && q !== cli)!;
    // each side's send PSN is the other's receive PSN: what the CM exchanged, one way each
    assert.equal(cli.req.psn, srv.resp.psn);
    assert.equal(srv.req.psn, cli.resp.psn);
    for (const id of [c.cid, c.child]) await id.disconnect().catch(() => {});
    await teardown(c);
  });

  test('private data of every allowed length arrives whole (REQ 0..56, REP 0..196, REJ 0..148); one byte more is EINVAL', async () => {
    const { sch, cch, listen, port: p } = await listening(d.root, d.root, A2, 8);
    const bytes = (n: number, seed: number) => Uint8Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff || 1);
    /** a request with `n` bytes of private data, as the listener sees it */
    const request = async (n: number, tooLong: boolean) => {
      const cid = await dial(cch, A2, p, A1);
      if (tooLong) await assert.rejects(cid.connect({ privateData: bytes(57, 1) }), { code: 'EINVAL' });
      await cid.connect({ privateData: bytes(n, n) });
      const req = await expectEvent(sch, CmEventType.CONNECT_REQUEST);
      // the REQ's private data field after the IP CM header: 56 bytes, the consumer's first, zeros after
      assert.equal(req.param.privateData.length, 56);
      assert.deepEqual(req.param.privateData.subarray(0, n), bytes(n, n), `REQ private data of ${n} bytes`);
      assert.ok(req.param.privateData.subarray(n).every((b) => b === 0));
      return { cid, req };
    };
    for (let n = 0; n <= 196; n++) {
      const { cid, req } = await request(n % 57, n === 0);
      await req.id.createQp(null, { cap: { maxSendWr: 1, maxRecvWr: 1 } });
      if (n === 0) await assert.rejects(req.id.accept({ privateData: bytes(197, 1) }), { code: 'EINVAL' });
      await req.id.accept({ privateData: bytes(n, 5) });
      const est = await expectEvent(cch, CmEventType.ESTABLISHED);
      assert.equal(est.param.privateData.length, 196);
      assert.deepEqual(est.param.privateData.subarray(0, n), bytes(n, 5), `REP private data of ${n} bytes`);
      await expectEvent(sch, CmEventType.ESTABLISHED);
      await closePair(cid, cch, req.id, sch);
    }
    for (let n = 0; n <= 148; n++) {
      const { cid, req } = await request(n % 57, false);
      if (n === 0) await assert.rejects(req.id.reject(bytes(257, 0)), { code: 'EINVAL' });
      if (n === 0) await assert.rejects(req.id.reject(bytes(149, 0)), { code: 'EINVAL' });
      await req.id.reject(bytes(n, 3));
      const rej = await expectEvent(cch, CmEventType.REJECTED);
      assert.equal(rej.status, 28, 'consumer defined');
      assert.equal(rej.param.privateData.length, 148);
      assert.deepEqual(rej.param.privateData.subarray(0, n), bytes(n, 3), `REJ private data of ${n} bytes`);
      await cid.destroyQp();
      await cid.destroy();
      await req.id.destroy();
    }
    await listen.destroy();
    await sch.destroy();
    await cch.destroy();
  });

  test('200 connections opened and closed in a loop leave no cm_id and no QP behind', async () => {
    const before = await tracked();
    const { sch, cch, listen, port: p } = await listening(d.root, d.root, A2, 4);
    for (let i = 0; i < 200; i++) {
      const { cid, sid } = await connectPair(cch, sch, A2, p, A1);
      // alternate which side closes first
      if (i % 2) await closePair(cid, cch, sid, sch);
      else await closePair(sid, sch, cid, cch);
    }
    assert.deepEqual(await tracked(), { cmIds: before.cmIds + 1, qps: before.qps }, 'only the listener is left');
    await listen.destroy();
    await sch.destroy();
    await cch.destroy();
    assert.deepEqual(await tracked(), before);
  });

  test('a listener killed mid-handshake: the client is refused (REJECTED, consumer defined), not left hanging', async () => {
    const p = nextPort();
    const before = await tracked();
    const { child, saw } = listener(d.root, A2, String(p));
    await saw('listening');
    const cch = await EventChannel.create(d.root);
    const cid = await dial(cch, A2, p, A1);
    await cid.connect();
    await saw('request');
    child.kill('SIGKILL');
    const e = await expectEvent(cch, CmEventType.REJECTED, 5000);
    assert.equal(e.status, 28);
    await cid.destroyQp();
    await cid.destroy();
    await cch.destroy();
    assert.deepEqual(await tracked(), before, "the dead listener's ids are gone");
  });

  test('a process killed with a connection open: the daemon sends the DREQ, the peer sees DISCONNECTED', async () => {
    const p = nextPort();
    const before = await tracked();
    const { child, saw } = listener(d.root, A2, String(p), 'accept');
    await saw('listening');
    const cch = await EventChannel.create(d.root);
    const cid = await dial(cch, A2, p, A1);
    await cid.connect();
    await expectEvent(cch, CmEventType.ESTABLISHED);
    await saw('established');
    child.kill('SIGKILL');
    await expectEvent(cch, CmEventType.DISCONNECTED, 5000);
    await cid.disconnect();
    await cid.destroyQp();
    await cid.destroy();
    await cch.destroy();
    assert.deepEqual(await tracked(), before, "the dead process's ids and QP are gone");
  });

  test('TIMEWAIT_EXIT follows a closed connection whose ids are kept', async () => {
    const c = await establish(d.root, d.root, A2, A1);
    await c.cid.disconnect();
    await expectEvent(c.sch, CmEventType.DISCONNECTED);
    await c.child.disconnect();
    await expectEvent(c.cch, CmEventType.DISCONNECTED);
    await expectEvent(c.cch, CmEventType.TIMEWAIT_EXIT, 5000);
    await expectEvent(c.sch, CmEventType.TIMEWAIT_EXIT, 5000);
    await teardown(c);
  });

  test("a device context its user closed is opened again for the next id", async () => {
    const ch = await EventChannel.create(d.root);
    const a = await ch.createId(PortSpace.TCP);
    await a.resolveAddr(A2, nextPort(), { src: A1 });
    await expectEvent(ch, CmEventType.ADDR_RESOLVED);
    await a.verbs!.closeDevice();
    const b = await ch.createId(PortSpace.TCP);
    await b.resolveAddr(A2, nextPort(), { src: A1 });
    await expectEvent(ch, CmEventType.ADDR_RESOLVED);
    assert.notEqual(b.verbs, a.verbs);
    await b.createQp(null, { cap: { maxSendWr: 1, maxRecvWr: 1 } });
    await b.destroyQp();
    await a.destroy();
    await b.destroy();
    await ch.destroy();
  });

  test('await using over CM ids in creation order (the id first, or the device objects first), id.createQp between: no throw, nothing left in the daemon', async () => {
    const { sch, cch, listen, port: p } = await listening(d.root, d.root, A2, 4);
    await cch.destroy();
    // what the programs make is on rxe0 (the client's side); the server's on rxe1
    const client = async () => ((await mgmt(getDeviceList(d.root)[0]!.devPath, 'restrack')) as Array<{ dev: string; pid: number; type: string; handle?: number; cmIdn?: number }>)
      .filter((r) => r.dev === 'rxe0' && r.pid === process.pid).map((r) => `${r.type} ${r.handle ?? r.cmIdn}`).sort();
    const before = await client();
    const servers: CmId[] = [];
    /** Connects, the server accepting, and sends one message over the connection. */
    const exchange = async (events: EventChannel, id: CmId, qp: QueuePair, cq: CompletionQueue, mr: MemoryRegion) => {
      await id.connect();
      const req = await expectEvent(sch, CmEventType.CONNECT_REQUEST);
      const sid = req.id;
      servers.push(sid);
      await sid.createQp(null, { cap: { maxSendWr: 4, maxRecvWr: 4 } });
      await sid.accept();
      await expectEvent(events, CmEventType.ESTABLISHED);
      await expectEvent(sch, CmEventType.ESTABLISHED);
      const rbuf = await sid.pd!.allocMr(64, Access.LOCAL_WRITE);
      sid.qp!.postRecv({ wrId: 1n, sgList: [rbuf.sge()] });
      mr.buf.write('ping');
      qp.postSend({ wrId: 2n, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED, sgList: [mr.sge(0, 4)] });
      assert.equal((await nextCompletion(cq)).status, 0);
      assert.equal((await pollN(sid.recvCq!, 1))[0]!.status, 0);
      assert.equal(rbuf.buf.toString('utf8', 0, 4), 'ping');
      await rbuf.deregMr();
      assert.ok((await client()).length > before.length);
    };
    // the program: the id comes first (it names the device), so it is disposed last, after the CQ, PD
    // and channel its QP uses
    const idFirst = async () => {
      await using events = await EventChannel.create(d.root);
      await using id = await events.createId(PortSpace.TCP);
      await resolve(events, id, A2, p, A1);
      const ctx = id.verbs!;
      await using channel = await ctx.createCompChannel();
      await using pd = await ctx.allocPd();
      await using cq = await ctx.createCq(8, channel);
      await using mr = await pd.allocMr(64, Access.LOCAL_WRITE);
      const qp = await id.createQp(pd, { sendCq: cq, recvCq: cq, cap: { maxSendWr: 4, maxRecvWr: 4 } });
      await exchange(events, id, qp, cq, mr);
    };
    // its own context, channel, PD and CQ first, then the id
    const deviceFirst = async () => {
      await using ctx = await openDevice(getDeviceList(d.root)[0]!, d.root);
      await using channel = await ctx.createCompChannel();
      await using pd = await ctx.allocPd();
      await using cq = await ctx.createCq(8, channel);
      await using mr = await pd.allocMr(64, Access.LOCAL_WRITE);
      await using events = await EventChannel.create(d.root);
      await using id = await events.createId(PortSpace.TCP);
      await resolve(events, id, A2, p, A1);
      const qp = await id.createQp(pd, { sendCq: cq, recvCq: cq, cap: { maxSendWr: 4, maxRecvWr: 4 } });
      await exchange(events, id, qp, cq, mr);
    };
    for (const program of [idFirst, deviceFirst]) {
      await program();
      assert.deepEqual(await client(), before, `${program.name}: the daemon holds nothing of the program`);
      // the id went without a disconnect: the daemon sent the DREQ for it
      await expectEvent(sch, CmEventType.DISCONNECTED);
    }
    for (const sid of servers) await sid[Symbol.asyncDispose]();
    await listen.destroy();
    await sch.destroy();
  });

  test('hostile and mistaken requests: errno and a reason, nothing disturbed', async () => {
    const ch = await EventChannel.create(d.root);
    const a = await ch.createId(PortSpace.TCP);
    const p = nextPort();
    await a.bindAddr(A2, p);
    const b = await ch.createId(PortSpace.TCP);
    await assert.rejects(b.bindAddr(A2, p), { code: 'EADDRINUSE' });
    await assert.rejects(b.bindAddr('0.0.0.0', p), { code: 'EADDRINUSE' });
    await assert.rejects(b.bindAddr('192.0.2.1', nextPort()), { code: 'EADDRNOTAVAIL' });
    await assert.rejects(b.connect(), { code: 'EINVAL' }, 'connect before the route');
    await assert.rejects(b.accept(), { code: 'EINVAL' }, 'accept without a request');
    await assert.rejects(b.resolveRoute(), { code: 'EINVAL' });
    await assert.rejects(ch.createId(0x9999 as PortSpace), { code: 'EINVAL' });
    // a QP that is not the caller's own cannot be handed to a peer
    await resolve(ch, b, A2, p, A1);
    await assert.rejects(b.connect({ qpNum: 0xabcdef }), { code: 'EINVAL' });
    await a.destroy();
    await b.destroy();
    await ch.destroy();
  });

  test('ucmatose -c 4 -C 10 across the two devices: every connection carries its messages both ways and closes', async () => {
    const p = String(nextPort());
    const env = { ...process.env, SOFTVERBS_ROOT: d.root };
    const bin = join(DIST, 'src', 'bin', 'ucmatose.js');
    const srv = runProcess(process.execPath, [bin, '-b', A2, '-p', p, '-c', '4', '-C', '10'], env);
    await new Promise((r) => setTimeout(r, 500));
    const cli = await runProcess(process.execPath, [bin, '-s', A2, '-b', A1, '-p', p, '-c', '4', '-C', '10'], env);
    const s = await srv;
    assert.equal(cli.out, 'cmatose: starting client\ncmatose: connecting\nreceiving data transfers\nsending replies\ndata transfers complete\ntest complete\nreturn status 0\n');
    assert.equal(s.out, 'cmatose: starting server\ninitiating data transfers\ncompleting sends\nreceiving data transfers\ndata transfers complete\ncmatose: disconnecting\ndisconnected\ntest complete\nreturn status 0\n');
    assert.equal(cli.code, 0);
    assert.equal(s.code, 0);
  });

  test('udaddy -c 2 -C 10 across the two devices: SIDR gives the client the server\'s QPN, Q_Key and path; replies go back by the GRH', async () => {
    const env = { ...process.env, SOFTVERBS_ROOT: d.root };
    const bin = join(DIST, 'src', 'bin', 'udaddy.js');
    const srv = runProcess(process.execPath, [bin, '-b', A2, '-c', '2', '-C', '10'], env);
    await new Promise((r) => setTimeout(r, 500));
    const cli = await runProcess(process.execPath, [bin, '-s', A2, '-b', A1, '-c', '2', '-C', '10'], env);
    const s = await srv;
    assert.equal(cli.out, 'udaddy: starting client\nudaddy: connecting\ninitiating data transfers\nreceiving data transfers\ndata transfers complete\ntest complete\nreturn status 0\n');
    assert.equal(s.out, 'udaddy: starting server\nreceiving data transfers\nsending replies\ndata transfers complete\ntest complete\nreturn status 0\n');
  });

  test('a SIDR request nobody listens for: UNREACHABLE with the SIDR status (1, unsupported)', async () => {
    const ch = await EventChannel.create(d.root);
    const e = await connectToNobody(ch, A2, A1, CmEventType.UNREACHABLE, PortSpace.UDP);
    assert.equal(e.status, 1);
    await ch.destroy();
  });

  test('the convenience layer: rdma_server and rdma_client exchange their 16 bytes; createEp to nobody is ECONNREFUSED', async () => {
    const env = { ...process.env, SOFTVERBS_ROOT: d.root };
    const p = String(nextPort());
    const srv = runProcess(process.execPath, [join(DIST, 'src', 'bin', 'rdma_server.js'), '-p', p], env);
    await new Promise((r) => setTimeout(r, 500));
    const cli = await runProcess(process.execPath, [join(DIST, 'src', 'bin', 'rdma_client.js'), '-s', A2, '-p', p], env);
    assert.equal(cli.out, 'rdma_client: start\nrdma_client: end 0\n');
    assert.equal((await srv).out, 'rdma_server: start\nrdma_server: end 0\n');
    const res = await getAddrInfo(A2, nextPort(), { src: A1 });
    const id = await createEp(res, null, { cap: { maxSendWr: 1, maxRecvWr: 1 } }, d.root);
    await assert.rejects(id.connect(), (e: VerbsError) => e.code === 'ECONNREFUSED' && /REJECTED \(status 8 = invalid service ID/.test(e.message));
    await id[Symbol.asyncDispose]();
    await assert.rejects(getAddrInfo(A2, 'http'), { code: 'EINVAL' });
  });

  test('rping between two daemons over IPv4, verified', () => {
    const r = spawnSync(process.execPath, [join(DIST, 'test', 'fixtures', 'cmpair.js'), A3, A4], { encoding: 'utf8', timeout: 60_000 });
    const x = JSON.parse(r.stdout.trim().split('\n').pop()!);
    assert.equal(x.client.code, 0, x.client.out);
    assert.equal(x.server.code, 0, x.server.out);
    assert.equal(x.client.out.match(/^ping data: rdma-ping-\d+/gm).length, 20);
    assert.equal(x.server.out.match(/^server ping data: rdma-ping-\d+/gm).length, 20);
  });

  test('softverbsd --allow-dst: a destination outside the prefixes does not resolve (ADDR_ERROR, ENETUNREACH); one inside connects', async () => {
    const d2 = await startDaemon(['--device', `rxe0=${A4}`]);
    const d1 = await startDaemon(['--device', `rxe0=${A3}`, '--allow-dst', '192.0.2.0/24,fd00::/8']);
    const d1b = await startDaemon(['--device', `rxe0=${A1.replace(/\.1$/, '.9')}`, '--allow-dst', `${A4}/32`]);
    try {
      const rping = join(DIST, 'src', 'bin', 'rping.js');
      const p = String(nextPort());
      const srv = runProcess(process.execPath, [rping, '-s', '-a', A4, '-p', p, '-C', '2'], { ...process.env, SOFTVERBS_ROOT: d2.root });
      await new Promise((r) => setTimeout(r, 500));
      const refused = await runProcess(process.execPath, [rping, '-c', '-a', A4, '-p', p, '-C', '2'], { ...process.env, SOFTVERBS_ROOT: d1.root });
      assert.equal(refused.code, 255, refused.out);
      assert.match(refused.out, /cma event RDMA_CM_EVENT_ADDR_ERROR, error -101/);
      const ok = await runProcess(process.execPath, [rping, '-c', '-a', A4, '-p', p, '-C', '2', '-V'], { ...process.env, SOFTVERBS_ROOT: d1b.root });
      assert.equal(ok.code, 0, ok.out);
      assert.equal((await srv).code, 0);
      const bad = await runProcess(process.execPath, [join(DIST, 'src', 'bin', 'softverbsd.js'), '--allow-dst', '10.0.0.0/40']);
      assert.equal(bad.code, 2);
      assert.match(bad.out, /--allow-dst "10\.0\.0\.0\/40": expected ADDRESS\[\/BITS\]/);
    } finally {
      await d1.stop();
      await d1b.stop();
      await d2.stop();
    }
  });

  const netns = spawnSync('unshare', ['--net', 'true']).status === 0;
  test('rping between two daemons over IPv6, verified', { skip: netns ? false : 'needs unshare --net and ip (root)' }, () => {
    const script = 'ip link set lo up && ip -6 addr add fd00::1/128 dev lo && ip -6 addr add fd00::2/128 dev lo && exec "$0" "$@"';
    const r = spawnSync('unshare', ['--net', 'sh', '-c', script, process.execPath, join(DIST, 'test', 'fixtures', 'cmpair.js'), 'fd00::1', 'fd00::2'], { encoding: 'utf8', timeout: 60_000 });
    const x = JSON.parse(r.stdout.trim().split('\n').pop()!);
    assert.equal(x.client.code, 0, x.client.out);
    assert.equal(x.server.code, 0, x.server.out);
    assert.equal(x.client.out.match(/^ping data: rdma-ping-\d+/gm).length, 20);
  });
});

describe('RDMA CM under packet loss', () => {
  const d = suiteDaemon(['--device', `rxe0=${A1}`, '--device', `rxe1=${A2}`, '--fault', 'drop=0.25,seed=11']);

  test('lost REQs, REPs, RTUs, DREQs and DREPs are sent again: every connection opens and closes', async () => {
    const { sch, cch, listen, port: p } = await listening(d.root, d.root, A2, 4);
    for (let i = 0; i < 6; i++) {
      const { cid, sid } = await connectPair(cch, sch, A2, p, A1, 20_000);
      await closePair(cid, cch, sid, sch, 20_000);
    }
    // an id destroyed while connected: its DREQ is resent (out of its owner's sight) until the peer hears it
    for (let i = 0; i < 4; i++) {
      const { cid, sid } = await connectPair(cch, sch, A2, p, A1, 20_000);
      await cid.destroyQp();
      await cid.destroy();
      await expectEvent(sch, CmEventType.DISCONNECTED, 20_000);
      await sid.disconnect();
      await sid.destroyQp();
      await sid.destroy();
    }
    const f = await mgmt(getDeviceList(d.root)[0]!.devPath, 'faults');
    assert.ok(f.dropped >= 3, `the seed drops some of the MADs (dropped ${f.dropped})`);
    await listen.destroy();
    await sch.destroy();
    await cch.destroy();
  });
});

describe('RDMA CM and a device going away', () => {
  test('the daemon killed mid-program: disposing the id (and its QP and CQs) and the channel throws nothing and unmaps the rings', { timeout: 30_000 }, async () => {
    const rings = () => readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => /memfd:ibv_create_(cq|qp) /.test(l)).length;
    const d = await startDaemon(['--device', `rxe0=${A3}`, '--device', `rxe1=${A4}`]);
    const before = rings();
    try {
      const program = async () => {
        await using events = await EventChannel.create(d.root);
        await using id = await events.createId(PortSpace.TCP);
        await resolve(events, id, A4, nextPort(), A3);
        await id.createQp(null, { cap: { maxSendWr: 1, maxRecvWr: 1 } });
        assert.equal(rings(), before + 3);
        d.proc.kill('SIGKILL');
        await new Promise((r) => d.proc.once('exit', r));
        assert.equal(await events.getCmEvent(), null, 'the channel ends');
        await assert.rejects(id.resolveRoute(), { code: 'EIO' });
      };
      await program();
      assert.equal(rings(), before);
    } finally {
      await d.stop();
    }
  });

  test('rdma link delete: the ids on the device get DEVICE_REMOVAL', async () => {
    const d = await startDaemon(['--device', `rxe0=${A3}`, '--device', `rxe1=${A4}`]);
    try {
      const ch = await EventChannel.create(d.root);
      const on1 = await listenOn(ch, A4, 7999);
      const on0 = await listenOn(ch, A3, 7999);
      const r = await runProcess(process.execPath, [join(DIST, 'src', 'bin', 'rdma.js'), 'link', 'delete', 'rxe1'], { ...process.env, SOFTVERBS_ROOT: d.root });
      assert.equal(r.code, 0, r.out);
      const e = await expectEvent(ch, CmEventType.DEVICE_REMOVAL);
      assert.equal(e.id, on1);
      await on1.destroy();
      await on0.destroy();
      await ch.destroy();
    } finally {
      await d.stop();
    }
  });
});

describe('RDMA CM: a slow acceptor', () => {
  test('a request not answered within the retry interval gets an MRA when it is sent again, and the connection still opens', async () => {
    const pcap = join(mkdtempSync(join(tmpdir(), 'sv-cm-')), 'cm.pcap');
    const d = await startDaemon(['--device', `rxe0=${A3}`, '--device', `rxe1=${A4}`, '--pcap', pcap]);
    try {
      const { sch, cch, listen } = await listening(d.root, d.root, A4, undefined, 7990);
      const cid = await dial(cch, A4, 7990, A3);
      await cid.connect();
      const req = await expectEvent(sch, CmEventType.CONNECT_REQUEST);
      // the consumer takes its time: the REQ is sent again after a second, and answered with an MRA
      await new Promise((r) => setTimeout(r, 2500));
      await req.id.createQp(null, { cap: { maxSendWr: 1, maxRecvWr: 1 } });
      await req.id.accept();
      await expectEvent(cch, CmEventType.ESTABLISHED);
      await expectEvent(sch, CmEventType.ESTABLISHED);
      for (const id of [cid, req.id]) {
        await id.destroyQp();
        await id.destroy();
      }
      await listen.destroy();
      await sch.destroy();
      await cch.destroy();
      await d.stop();
      // the capture: every CM MAD is a UD SEND to QP1 (IPv4: 20 + 8 + BTH 12 + DETH 8, then the MAD; attribute at 16)
      const b = readFileSync(pcap);
      const attrs: number[] = [];
      for (let o = 24; o + 16 <= b.length; ) {
        const n = b.readUInt32LE(o + 8);
        const f = b.subarray(o + 16, o + 16 + n);
        o += 16 + n;
        if (f[28] === 0x64 && f.readUIntBE(28 + 5, 3) === 1) attrs.push(f.readUInt16BE(48 + 16));
      }
      assert.ok(attrs.filter((a) => a === 0x10).length >= 2, `the REQ went out again (${attrs.map((a) => a.toString(16))})`);
      assert.ok(attrs.includes(0x11), `an MRA answered the repeated REQ (${attrs.map((a) => a.toString(16))})`);
      assert.deepEqual(attrs.filter((a) => a === 0x13 || a === 0x14), [0x13, 0x14], 'then one REP and one RTU');
    } finally {
      await d.stop();
    }
  });
});
