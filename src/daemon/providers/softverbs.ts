/**
 * The softverbs library's provider ABI: the client makes each queue's
 * memfd and lays its rings out as queue.ts says, and registers memory that
 * lives in a memfd too. It hands each memfd over on the descriptor
 * exchange (PUT_MEMFD) just before the command, whose udata (`sv_queue`,
 * `sv_reg_mr`) names it by the id the exchange gave: the daemon maps it, so
 * the engines work on the same pages as the client.
 */
import { CqRingProducer } from '../../abi/cq-ring.js';
import { cqLayout, qpLayout, srqLayout, type QpCaps } from '../../abi/queue.js';
import { RecvRingConsumer } from '../../abi/recv-ring.js';
import { SendRingConsumer } from '../../abi/send-ring.js';
import type * as U from '../../abi/uverbs.js';
import { CmdError, E, fail } from '../../common/errno.js';
import { MappedMemory } from '../../hca/mr-memory.js';
import type { Context } from '../context.js';
import type { CqQueue, Provider } from './provider.js';

/** The udata a command cannot do without: the memfd behind its ring or its registered memory. */
function need<T>(u: T | null, name: string): T {
  if (!u) throw new CmdError(E.EINVAL, `${name}: the softverbs provider data (memfd_id) is missing`);
  return u;
}

function cqRing(ctx: Context, cqe: number, u: { memfd_id: number } | null, cmd: string, fresh: boolean): CqQueue {
  const l = cqLayout(cqe);
  const m = ctx.mapClient(need(u, cmd).memfd_id, 0n, BigInt(l.bytes));
  return { mapping: m.mapping, ring: fresh ? new CqRingProducer(m.mapping.buffer, l.slots) : null, slots: l.slots, cqe: l.cqe, udata: Buffer.alloc(0) };
}

export const softverbsProvider: Provider = {
  name: 'softverbs',
  createRespUdata: { cq: 0, qp: 0 },
  reqUdata: (spec) => spec.udata,
  cq: (ctx, cqe, u) => cqRing(ctx, cqe, u, 'CREATE_CQ', true),
  resizeCq: (ctx, cqe, u) => cqRing(ctx, cqe, u, 'RESIZE_CQ', false),
  qp(ctx, want: QpCaps, srq, u) {
    const l = qpLayout(want, srq);
    if (!l) fail(E.EINVAL, 'CREATE_QP: a capability is over the device limit');
    const m = ctx.mapClient(need(u, 'CREATE_QP').memfd_id, 0n, BigInt(l.bytes));
    const rq = l.rq ? new RecvRingConsumer(m.mapping.buffer, l.rq.offset, l.rq.slots, l.rq.stride, l.caps.maxRecvSge) : null;
    return { mapping: m.mapping, sq: new SendRingConsumer(m.mapping.buffer, l.sq, l.caps), rq, caps: l.caps, udata: Buffer.alloc(0) };
  },
  srq(ctx, maxWr, maxSge, u) {
    const l = srqLayout(maxWr, maxSge);
    if (!l) fail(E.EINVAL, `CREATE_SRQ: max_wr ${maxWr} / max_sge ${maxSge} out of range`);
    const m = ctx.mapClient(need(u, 'CREATE_SRQ').memfd_id, 0n, BigInt(l.bytes));
    return { mapping: m.mapping, ring: new RecvRingConsumer(m.mapping.buffer, 0, l.slots, l.stride, maxSge), maxWr: l.slots, maxSge, udata: () => Buffer.alloc(0) };
  },
  mr(ctx, _start, length, _access, u: U.Udata<'REG_MR'> | null) {
    const { memfd_id, memfd_offset } = need(u, 'REG_MR');
    const m = ctx.mapClient(memfd_id, memfd_offset, length);
    return { mem: new MappedMemory(new Uint8Array(m.mapping.buffer, m.delta, Number(length))), mapping: m.mapping };
  },
  ahUdata: () => Buffer.alloc(0),
  memfdOf: (u) => (u as { memfd_id?: number }).memfd_id ?? 0,
};
