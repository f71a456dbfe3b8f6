/**
 * rdma_set_option through a real daemon (the TypeScript API; the C path is test/tools/exec-pyverbs.spec.ts):
 * ACK_TIMEOUT is the QP's timeout at RTS on each side that set it (the path's 19 elsewhere), TOS the traffic
 * class of the route resolved after it, and every option's size and state are checked as the kernel's ucma does.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CmEventType, EventChannel, PortSpace, QpState, RdmaOption } from '../../src/verbs/index.js';
import { A1, A2, suiteDaemon } from '../helpers.js';
import { expectEvent, listenOn, nextPort, resolve } from './helpers.js';

// errno 95 is EOPNOTSUPP to the kernel, ENOTSUP to Node (one number, two names)
const errno = (p: Promise<unknown>) => p.then(() => 'ok', (e: { code?: string; errno?: number }) => (Math.abs(e.errno ?? 0) === 95 ? 'EOPNOTSUPP' : e.code ?? String(e)));

describe('rdma_set_option', () => {
  const d = suiteDaemon(['--device', `rxe0=${A1}`, '--device', `rxe1=${A2}`]);

  test('ACK_TIMEOUT is the QP\'s timeout at RTS on the side that set it; the other keeps the path\'s', async () => {
    for (const [client, server] of [[21, 17], [null, 22], [null, null]] as const) {
      const sch = await EventChannel.create(d.root);
      const cch = await EventChannel.create(d.root);
      const port = nextPort();
      const listen = await listenOn(sch, A2, port);
      const cid = await cch.createId(PortSpace.TCP);
      await resolve(cch, cid, A2, port, A1);
      await cid.createQp(null, { cap: { maxSendWr: 1, maxRecvWr: 1 } });
      if (client !== null) await cid.setAckTimeout(client);
      await cid.connect();
      const req = await expectEvent(sch, CmEventType.CONNECT_REQUEST);
      const sid = req.id;
      await sid.createQp(null, { cap: { maxSendWr: 1, maxRecvWr: 1 } });
      if (server !== null) await sid.setAckTimeout(server);
      await sid.accept();
      await expectEvent(cch, CmEventType.ESTABLISHED);
      await expectEvent(sch, CmEventType.ESTABLISHED);
      assert.equal((await cid.qp!.queryQp()).qpState, QpState.RTS);
      assert.equal((await cid.qp!.queryQp()).timeout, client ?? 19, `client ${client}`);
      assert.equal((await sid.qp!.queryQp()).timeout, server ?? 19, `server ${server}`);
      assert.equal((await cid.initQpAttr(QpState.RTS)).attr.timeout, client ?? 19);
      for (const id of [cid, sid]) {
        await id.destroyQp();
        await id.destroy();
      }
      await listen.destroy();
      await sch.destroy();
      await cch.destroy();
    }
  });

  test('TOS is the traffic class of the route resolved after it: the QP\'s GRH at RTR', async () => {
    const sch = await EventChannel.create(d.root);
    const cch = await EventChannel.create(d.root);
    const port = nextPort();
    const listen = await listenOn(sch, A2, port);
    const cid = await cch.createId(PortSpace.TCP);
    await cid.setTos(0x68);
    await resolve(cch, cid, A2, port, A1);
    await cid.createQp(null, { cap: { maxSendWr: 1, maxRecvWr: 1 } });
    await cid.connect();
    const req = await expectEvent(sch, CmEventType.CONNECT_REQUEST);
    await req.id.createQp(null, { cap: { maxSendWr: 1, maxRecvWr: 1 } });
    await req.id.accept();
    await expectEvent(cch, CmEventType.ESTABLISHED);
    assert.equal((await cid.qp!.queryQp()).ahAttr!.grh!.trafficClass, 0x68);
    for (const id of [cid, req.id]) {
      await id.disconnect();
      await id.destroyQp();
      await id.destroy();
    }
    await listen.destroy();
    await sch.destroy();
    await cch.destroy();
  });

  test('sizes, states and names are checked as the kernel\'s ucma checks them', async () => {
    const ch = await EventChannel.create(d.root);
    const rc = await ch.createId(PortSpace.TCP);
    const ud = await ch.createId(PortSpace.UDP);
    const int = (v: number) => new Uint8Array(new Int32Array([v]).buffer);
    assert.equal(await errno(rc.setOption(RdmaOption.ID, RdmaOption.ID_ACK_TIMEOUT, int(21))), 'EINVAL');
    assert.equal(await errno(ud.setAckTimeout(21)), 'EINVAL');
    assert.equal(await errno(rc.setOption(RdmaOption.ID, RdmaOption.ID_TOS, new Uint8Array(0))), 'EINVAL');
    assert.equal(await errno(rc.setOption(RdmaOption.ID, RdmaOption.ID_AFONLY, int(1))), 'ok');
    assert.equal(await errno(rc.setOption(RdmaOption.ID, RdmaOption.ID_REUSEADDR, int(1))), 'ok');
    assert.equal(await errno(rc.setOption(RdmaOption.ID, 9, int(1))), 'ENOSYS');
    assert.equal(await errno(rc.setOption(5, 0, int(1))), 'ENOSYS');
    assert.equal(await errno(rc.setOption(RdmaOption.IB, RdmaOption.IB_PATH, new Uint8Array(64))), 'EOPNOTSUPP');
    await rc.bindAddr(A1, nextPort());
    await rc.listen();
    // a listener may not turn reuse on, nor anything past ADDR_BOUND set AFONLY
    assert.equal(await errno(rc.setOption(RdmaOption.ID, RdmaOption.ID_REUSEADDR, int(1))), 'EINVAL');
    assert.equal(await errno(rc.setOption(RdmaOption.ID, RdmaOption.ID_AFONLY, int(1))), 'EINVAL');
    await rc.destroy();
    await ud.destroy();
    await ch.destroy();
  });
});
