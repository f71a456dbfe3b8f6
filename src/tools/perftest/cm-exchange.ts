/**
 * perftest's -R: its exchange over an RDMA CM connection (rdma_client_connect
 * / rdma_server_connect: one RC QP, one 56-byte receive buffer, each message
 * a SEND the peer's posted receive takes), and the test QPs connected through
 * the RDMA CM (create_rdma_cm_connection: one cm_id per QP on the same port,
 * between two barriers), as perftest 4.5-0.17 does both.
 */
import { Fail } from '../../common/errors.js';
import { QpAttrMask as A, QpType, SendFlags, WcStatus, WrOpcode } from '../../abi/enums.js';
import { CmEventType, cmEventStr, EventChannel, nextCompletion, PortSpace, type CmEvent, type CmId } from '../../verbs/cm.js';
import type { Context } from '../../verbs/context.js';
import type { CompletionQueue } from '../../verbs/cq.js';
import type { MemoryRegion } from '../../verbs/mr.js';
import type { QueuePair } from '../../verbs/qp.js';
import { decodeDest, DEST_SIZE, encodeDest, Exchange, type PerfDest } from './exchange.js';
import { DEF, Verb, type Params } from './params.js';

/** What perftest's connect and accept ask for: read resources for READ and ATOMIC only, its retry count, RNR retries 7. */
function connParam(p: Params, outReads: number) {
  const rd = p.verb === Verb.READ || p.verb === Verb.ATOMIC;
  return { responderResources: rd ? outReads : 0, initiatorDepth: rd ? outReads : 0, retryCount: 7, rnrRetryCount: 7 };
}

/** An event's status with its meaning ("status 8 = invalid service ID: nothing listens on that port"). */
function statusStr(e: CmEvent): string {
  return `status ${e.status}${e.reason ? ` = ${e.reason}` : ''}`;
}

async function next(ch: EventChannel, want: CmEventType, what: string): Promise<CmEvent> {
  const e = await ch.getCmEvent();
  if (!e) throw new Fail(`${what}: the RDMA CM event channel closed\n`);
  if (e.event !== want) throw new Fail(`${what}: unexpected CM event ${cmEventStr(e.event)} (${statusStr(e)})\n`);
  return e;
}

/** The exchange over its own RC connection. */
export class CmOob extends Exchange {
  private constructor(
    readonly isClient: boolean,
    private readonly ch: EventChannel,
    private readonly id: CmId,
    private readonly qp: QueuePair,
    private readonly cq: CompletionQueue,
    private readonly mr: MemoryRegion,
  ) {
    super();
  }

  /** The device the connection came over: perftest runs its test there (ctx->context = cm_id->verbs). */
  get verbs(): Context {
    return this.id.verbs!;
  }

  private static async resources(id: CmId): Promise<{ qp: QueuePair; cq: CompletionQueue; mr: MemoryRegion }> {
    const ctx = id.verbs!;
    const pd = await ctx.allocPd();
    const chan = await ctx.createCompChannel();
    const cq = await ctx.createCq(2, chan);
    const qp = await id.createQp(pd, { sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxSendWr: 1, maxRecvWr: 1, maxSendSge: 1, maxRecvSge: 1 } });
    const mr = await pd.allocMr(DEST_SIZE, 1);
    return { qp, cq, mr };
  }

  /** rdma_client_connect: resolve (ADDR_ERROR is retried, as perftest does), route, one receive, connect. */
  static async connect(host: string, port: number, p: Params, outReads: number, src?: string): Promise<CmOob> {
    const ch = await EventChannel.create();
    try {
      const id = await ch.createId(PortSpace.TCP);
      for (let tries = 10; ; tries--) {
        if (tries === 0) throw new Fail('Received 10 times ADDR_ERROR\n Unable to perform rdma_client function\n Unable to init the socket connection\n');
        await id.resolveAddr(host, port, { src, timeoutMs: 2000 });
        const e = await ch.getCmEvent();
        if (e?.event === CmEventType.ADDR_RESOLVED) break;
        if (e?.event !== CmEventType.ADDR_ERROR) throw new Fail(`unexpected CM event ${e?.event}\n Unable to perform rdma_client function\n Unable to init the socket connection\n`);
      }
      await id.resolveRoute(2000);
      await next(ch, CmEventType.ROUTE_RESOLVED, 'rdma_resolve_route');
      const r = await CmOob.resources(id);
      r.qp.postRecv({ wrId: 0n, sgList: [r.mr.sge(0, DEST_SIZE)] });
      await id.connect(connParam(p, outReads));
      const e = await ch.getCmEvent();
      if (e?.event !== CmEventType.ESTABLISHED) {
        throw new Fail(`Unexpected CM event bl blka ${e?.event}${e?.event === CmEventType.REJECTED ? ` (${cmEventStr(e.event)}, ${statusStr(e)}; is a perftest server listening with -R?)` : ''}\n Unable to perform rdma_client function\n Unable to init the socket connection\n`);
      }
      return new CmOob(true, ch, id, r.qp, r.cq, r.mr);
    } catch (e) {
      await ch.destroy();
      throw e;
    }
  }

  /** rdma_server_connect: listen, take one request, one receive, accept, stop listening (it does not wait for ESTABLISHED). */
  static async accept(port: number, p: Params, outReads: number, src?: string): Promise<CmOob> {
    const ch = await EventChannel.create();
    try {
      const listen = await ch.createId(PortSpace.TCP);
      await listen.bindAddr(src ?? '0.0.0.0', port).catch(() => {
        throw new Fail(' rdma_bind_addr failed\n Unable to perform rdma_server function\n Unable to init the socket connection\n');
      });
      await listen.listen(p.numQps);
      const req = await next(ch, CmEventType.CONNECT_REQUEST, 'bad event waiting for connect request');
      const r = await CmOob.resources(req.id);
      r.qp.postRecv({ wrId: 0n, sgList: [r.mr.sge(0, DEST_SIZE)] });
      await req.id.accept(connParam(p, outReads));
      await listen.destroy();
      return new CmOob(false, ch, req.id, r.qp, r.cq, r.mr);
    } catch (e) {
      await ch.destroy();
      throw e;
    }
  }

  /** rdma_write_data: a signaled SEND of the message, and its completion. */
  private async write(mine: Buffer, what: string): Promise<void> {
    mine.copy(this.mr.buf, 0);
    this.qp.postSend({ wrId: 0n, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED, sgList: [this.mr.sge(0, mine.length)] });
    const wc = await nextCompletion(this.cq);
    if (wc.status !== WcStatus.SUCCESS) this.gone(what, wc.status);
  }

  /** rdma_read_data: the peer's message, then the receive posted again. */
  private async read(n: number, what: string): Promise<Buffer> {
    const wc = await nextCompletion(this.cq);
    if (wc.status !== WcStatus.SUCCESS) this.gone(what, wc.status);
    const got = Buffer.from(this.mr.buf.subarray(0, n));
    this.qp.postRecv({ wrId: 0n, sgList: [this.mr.sge(0, DEST_SIZE)] });
    return got;
  }

  private gone(what: string, status: number): never {
    if (!this.peerGoneAt) this.peerGoneAt = Date.now();
    throw new Fail(` Failed to exchange data between server and clients (${what}: completion status ${status})\n`);
  }

  async xchg(mine: Buffer, what: string): Promise<Buffer> {
    if (this.isClient) {
      await this.write(mine, what);
      return this.read(mine.length, what);
    }
    const got = await this.read(mine.length, what);
    await this.write(mine, what);
    return got;
  }

  async handShake(mine: PerfDest): Promise<PerfDest> {
    return decodeDest(await this.xchg(encodeDest(mine), 'key message'));
  }

  /** With rdma_cm there is no "done": the connection simply ends with the process. */
  async close(): Promise<void> {}

  destroy(): void {
    void this.ch.destroy();
  }
}

/** The test QPs' CM side (perftest's cma_master): their ids on one channel, connected, and at the end disconnected. */
export class CmQps {
  private constructor(
    private readonly ch: EventChannel,
    readonly ids: CmId[],
  ) {}

  /**
   * Client: an id per QP, resolved to the server's port; `setup` makes the test's resources on the device the
   * routes leave from and each QP on its id; then each connects and must be ESTABLISHED. A refusal (the server
   * not listening yet: it starts to after the same barrier) is tried again, up to 10 times 100 ms apart, with
   * new ids and QPs (`remake`), as perftest's rdma_cm_client_connection does.
   */
  static async connect(
    host: string, port: number, p: Params, outReads: number, src: string | undefined,
    setup: (ctx: Context, ids: CmId[]) => Promise<QueuePair[]>, remake: (id: CmId, i: number) => Promise<QueuePair>,
  ): Promise<CmQps> {
    const ch = await EventChannel.create();
    let qps: QueuePair[] | null = null;
    try {
      for (let attempt = 1; ; attempt++) {
        const ids: CmId[] = [];
        for (let i = 0; i < p.numQps; i++) {
          const id = await ch.createId(PortSpace.TCP);
          ids.push(id);
          await id.resolveAddr(host, port, { src, timeoutMs: 2000 });
          await next(ch, CmEventType.ADDR_RESOLVED, 'Failed to resolve RDMA CM address.');
          await id.resolveRoute(2000);
          await next(ch, CmEventType.ROUTE_RESOLVED, 'Failed to resolve RDMA CM route.');
        }
        if (!qps) qps = await setup(ids[0]!.verbs!, ids);
        else for (const [i, id] of ids.entries()) qps[i] = await remake(id, i);
        let refused: CmEvent | null = null;
        for (const id of ids) {
          await id.connect(connParam(p, outReads));
          const e = await ch.getCmEvent();
          if (e?.event === CmEventType.ESTABLISHED) continue;
          if (e?.event !== CmEventType.REJECTED) throw new Fail(`Failed to connect RDMA CM events.: unexpected CM event ${e ? `${cmEventStr(e.event)} (${statusStr(e)})` : 'none'}\n`);
          refused = e;
          break;
        }
        if (!refused) return new CmQps(ch, ids);
        for (const id of ids) {
          await id.destroyQp().catch(() => {});
          await id.destroy().catch(() => {});
        }
        if (attempt === 10) throw new Fail(`Failed to connect RDMA CM client, tried 10 times (${cmEventStr(refused.event)}, ${statusStr(refused)}).\n`);
        await new Promise((r) => setTimeout(r, 100));
      }
    } catch (e) {
      await ch.destroy();
      throw e;
    }
  }

  /**
   * Server: a listener on the port for as many requests as QPs. It listens before the barrier that lets the client
   * connect (perftest listens just after it; a client that is quicker than we are would be refused).
   */
  static async listen(port: number, p: Params, src?: string): Promise<{ accept: (outReads: number, setup: (ctx: Context, ids: CmId[]) => Promise<QueuePair[]>) => Promise<CmQps>; close: () => Promise<void> }> {
    const ch = await EventChannel.create();
    try {
      const listen = await ch.createId(PortSpace.TCP);
      await listen.bindAddr(src ?? '0.0.0.0', port);
      await listen.listen(p.numQps);
      const accept = async (outReads: number, setup: (ctx: Context, ids: CmId[]) => Promise<QueuePair[]>): Promise<CmQps> => {
        try {
          const reqs: CmEvent[] = [];
          for (let i = 0; i < p.numQps; i++) reqs.push(await next(ch, CmEventType.CONNECT_REQUEST, 'Failed to handle RDMA CM event.'));
          const ids = reqs.map((r) => r.id);
          const qps = await setup(ids[0]!.verbs!, ids);
          const rd = p.verb === Verb.READ || p.verb === Verb.ATOMIC;
          for (const [i, req] of reqs.entries()) {
            await req.id.accept({
              ...connParam(p, outReads),
              // clamped to what the peer offers
              responderResources: rd ? Math.min(outReads, req.param.initiatorDepth) : 0,
              initiatorDepth: rd ? Math.min(outReads, req.param.responderResources) : 0,
            });
            await qps[i]!.modifyQp({ minRnrTimer: DEF.minRnrTimer }, A.MIN_RNR_TIMER).catch(() => {});
          }
          await listen.destroy();
          return new CmQps(ch, ids);
        } catch (e) {
          await ch.destroy();
          throw e;
        }
      };
      return { accept, close: () => ch.destroy() };
    } catch (e) {
      await ch.destroy();
      throw e;
    }
  }

  /** rdma_cm_disconnect_nodes: every connection closed, and each DISCONNECTED seen (a second at most each). */
  async disconnect(): Promise<void> {
    for (const id of this.ids) await id.disconnect().catch(() => {});
    let left = this.ids.length;
    while (left > 0) {
      const e = await Promise.race([this.ch.getCmEvent(), new Promise<null>((r) => setTimeout(() => r(null), 2000).unref())]);
      if (!e) break;
      if (e.event === CmEventType.DISCONNECTED) left--;
    }
    for (const id of this.ids) {
      await id.destroyQp().catch(() => {});
      await id.destroy().catch(() => {});
    }
    await this.ch.destroy();
  }
}
