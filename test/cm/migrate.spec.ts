/**
 * rdma_migrate_id in the TypeScript library (cmId.migrate): an id's unread events move with it, ahead of its new
 * ones; a listening id's waiting connection requests take their ids along (accepting one works on the new
 * channel); events_reported counts what getCmEvent returned; the old channel can go afterwards without taking
 * the id; and the kernel's errnos for ids and channels that are not there.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CmEventType, EventChannel, type CmId } from '../../src/verbs/index.js';
import { A1, A2, suiteDaemon } from '../helpers.js';
import { dial, expectEvent, listenOn, nextPort } from './helpers.js';
import * as C from '../../src/abi/ucma.js';

/** Resolves once `n` event records have arrived on the channel and wait unread (its stream's queue). */
async function unread(ch: EventChannel, n: number, ms = 10_000): Promise<void> {
  const q = () => (ch.stream as unknown as { queued: Buffer[] }).queued.length;
  for (const end = Date.now() + ms; q() < n;) {
    if (Date.now() > end) throw new Error(`${q()} of ${n} events arrived`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const code = (e: unknown) => (e as { code?: string }).code;

describe('cmId.migrate (rdma_migrate_id)', { timeout: 60_000 }, () => {
  const d = suiteDaemon(['--device', `rxe0=${A1}`, '--device', `rxe1=${A2}`]);

  test('a listening id with a request waiting: the request (and its id) arrive on the new channel, the old one can go', async () => {
    const sch = await EventChannel.create(d.root);
    const sch2 = await EventChannel.create(d.root);
    const cch = await EventChannel.create(d.root);
    const port = nextPort();
    const listen = await listenOn(sch, A1, port);
    const cid = await dial(cch, A1, port, A2);
    await cid.connect();
    await unread(sch, 1);
    assert.equal(await listen.migrate(sch2), 0, 'no event reported on the listening id yet');
    assert.equal(listen.channel, sch2);
    // the old channel's end destroys the ids still in its file: the listener and the request's id are not
    await sch.destroy();
    const req = await expectEvent(sch2, CmEventType.CONNECT_REQUEST);
    assert.equal(req.listenId, listen);
    assert.equal(req.id.channel, sch2);
    assert.equal(listen.eventsReported, 1);
    await req.id.createQp(null, { cap: { maxSendWr: 1, maxRecvWr: 1 } });
    await req.id.accept();
    await expectEvent(cch, CmEventType.ESTABLISHED);
    await expectEvent(sch2, CmEventType.ESTABLISHED);
    await cid.disconnect();
    const dis = await expectEvent(sch2, CmEventType.DISCONNECTED);
    assert.equal(dis.id, req.id);
    for (const id of [cid, req.id]) {
      await id.destroyQp();
      await id.destroy();
    }
    await listen.destroy();
    await Promise.all([sch2.destroy(), cch.destroy()]);
  });

  test('a connected id: its unread DISCONNECTED moves, ahead of what comes later, and the old channel keeps the rest', async () => {
    const sch = await EventChannel.create(d.root);
    const cch = await EventChannel.create(d.root);
    const cch2 = await EventChannel.create(d.root);
    const port = nextPort();
    const listen = await listenOn(sch, A1, port);
    const cid = await dial(cch, A1, port, A2);
    await cid.connect();
    const req = await expectEvent(sch, CmEventType.CONNECT_REQUEST);
    await req.id.createQp(null, { cap: { maxSendWr: 1, maxRecvWr: 1 } });
    await req.id.accept();
    await expectEvent(cch, CmEventType.ESTABLISHED);
    await expectEvent(sch, CmEventType.ESTABLISHED);
    // another id's event on the old channel, then the server's disconnect: both unread
    const other: CmId = await cch.createId();
    await other.resolveAddr(A1, nextPort(), { src: A2 });
    await unread(cch, 1);
    await req.id.disconnect();
    await unread(cch, 2);
    // ADDR_RESOLVED, ROUTE_RESOLVED and ESTABLISHED were returned for it
    assert.equal(await cid.migrate(cch2), 3);
    const dis = await expectEvent(cch2, CmEventType.DISCONNECTED);
    assert.equal(dis.id, cid);
    const ar = await expectEvent(cch, CmEventType.ADDR_RESOLVED);
    assert.equal(ar.id, other);
    // commands go through the new channel: the DREP, and the server sees its disconnect complete
    await cid.disconnect();
    await expectEvent(sch, CmEventType.DISCONNECTED);
    assert.equal(cid.eventsReported, 4);
    for (const id of [cid, req.id]) {
      await id.destroyQp();
      await id.destroy();
    }
    await other.destroy();
    await listen.destroy();
    await Promise.all([sch.destroy(), cch.destroy(), cch2.destroy()]);
  });

  test('to its own channel: its unread events go behind the others', async () => {
    const ch = await EventChannel.create(d.root);
    const a = await ch.createId();
    const b = await ch.createId();
    await a.resolveAddr(A1, nextPort(), { src: A2 });
    await unread(ch, 1);
    await b.resolveAddr(A1, nextPort(), { src: A2 });
    await unread(ch, 2);
    assert.equal(await a.migrate(ch), 0);
    assert.equal((await expectEvent(ch, CmEventType.ADDR_RESOLVED)).id, b);
    assert.equal((await expectEvent(ch, CmEventType.ADDR_RESOLVED)).id, a);
    assert.equal(a.eventsReported, 1);
    await a.destroy();
    await b.destroy();
    await ch.destroy();
  });

  test('errnos: a destroyed id ENOENT, another file\'s id EINVAL, a closed channel ENOENT or EBADF, a token of nothing EINVAL', async () => {
    const ch = await EventChannel.create(d.root);
    const ch2 = await EventChannel.create(d.root);
    const gone = await ch.createId();
    await gone.destroy();
    await assert.rejects(gone.migrate(ch2), (e) => code(e) === 'ENOENT');
    const theirs = await ch2.createId();
    // the daemon's own checks, through the command as the library sends it
    const raw = (id: number, fd: number) => ch2.call('rdma_migrate_id', C.UcmaSpecs.MIGRATE_ID, { id, fd });
    await assert.rejects(raw(theirs.handle, ch.token), (e) => code(e) === 'EINVAL');
    await assert.rejects(raw(0x7ffffff0, ch.token), (e) => code(e) === 'ENOENT');
    await assert.rejects(raw(theirs.handle, 0), (e) => code(e) === 'EINVAL');
    const mine = await ch.createId();
    const ch3 = await EventChannel.create(d.root);
    await ch3.destroy();
    await assert.rejects(mine.migrate(ch3), (e) => code(e) === 'EBADF');
    await ch.destroy();
    await assert.rejects(mine.migrate(ch2), (e) => code(e) === 'ENOENT');
    await theirs.destroy();
    await ch2.destroy();
  });
});
