/** What the RDMA CM specs share: an event waited for, fresh ports, an id resolved as a program does it, a refused connect, a listener. */
import assert from 'node:assert/strict';
import { CmEventType, cmEventStr, EventChannel, PortSpace, type CmEvent, type CmId } from '../../src/verbs/index.js';

/** The next event on a channel, which must be `want` (its name in the failure otherwise). */
export async function expectEvent(ch: EventChannel, want: CmEventType, ms = 10_000): Promise<CmEvent> {
  const e = await Promise.race([ch.getCmEvent(), new Promise<null>((_, rej) => setTimeout(() => rej(new Error(`no ${cmEventStr(want)} within ${ms} ms`)), ms).unref())]);
  assert.ok(e, 'channel closed');
  assert.equal(cmEventStr(e.event), cmEventStr(want), `status ${e.status}`);
  return e;
}

let port = 20000 + Math.floor(Math.random() * 20000);
/** A port no other test of this process has used. */
export const nextPort = () => port++;

/** `id` resolved to addr:port (from `src`), as a program does it: resolveAddr, ADDR_RESOLVED, resolveRoute, ROUTE_RESOLVED on `ch`. */
export async function resolve(ch: EventChannel, id: CmId, addr: string, port: number, src: string | undefined): Promise<void> {
  await id.resolveAddr(addr, port, { src });
  await expectEvent(ch, CmEventType.ADDR_RESOLVED);
  await id.resolveRoute();
  await expectEvent(ch, CmEventType.ROUTE_RESOLVED);
}

/** An id on `ch` resolved to addr:port (from `src`), with a small QP of the port space's type on its device: ready to connect. */
export async function dial(ch: EventChannel, addr: string, port: number, src: string, ps: PortSpace = PortSpace.TCP): Promise<CmId> {
  const id = await ch.createId(ps);
  await resolve(ch, id, addr, port, src);
  await id.createQp(null, { cap: { maxSendWr: 1, maxRecvWr: 1 } });
  return id;
}

/**
 * A connect from `src` to a port of `addr` that nothing listens on, through a new id on `ch` (with a QP of the
 * port space's type): the event it ends in, which must be `want`. The id and its QP are gone again.
 */
export async function connectToNobody(ch: EventChannel, addr: string, src: string, want: CmEventType, ps: PortSpace = PortSpace.TCP): Promise<CmEvent> {
  const id = await dial(ch, addr, nextPort(), src, ps);
  await id.connect();
  const e = await expectEvent(ch, want);
  await id.destroyQp();
  await id.destroy();
  return e;
}

/** An id on `ch` bound to addr:port and listening. */
export async function listenOn(ch: EventChannel, addr: string, port: number, backlog?: number): Promise<CmId> {
  const id = await ch.createId(PortSpace.TCP);
  await id.bindAddr(addr, port);
  await id.listen(backlog);
  return id;
}
