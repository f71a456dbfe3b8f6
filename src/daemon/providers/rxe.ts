/**
 * rdma-core's rxe provider ABI (rdma_user_rxe.h), for unmodified C
 * programs through the preload library: the daemon makes each queue's
 * memory (a sealed memfd, as rxe's vmalloc'ed queue) in the layouts of
 * abi/rxe.ts, answers the create commands with its `mminfo`, and hands
 * the memfd over when the client mmap()s the device file at that offset
 * (fd-exchange.ts). Registered memory is the program's own, reached
 * through the /proc/self/mem it hands over (its /proc/self/maps with it).
 */
import { ftruncateSync } from 'node:fs';
import { Access } from '../../abi/enums.js';
import { layout, pack } from '../../abi/layout.js';
import { MMINFO, RXE_CREATE_AH_RESP, RXE_CREATE_CQ_RESP, RXE_CREATE_QP_RESP, RXE_MODIFY_SRQ_CMD, rxeAhNum, rxeCqLayout, rxeQpLayout, rxeSrqLayout } from '../../abi/rxe.js';
import { RxeCompletionQueue, RxeRecvQueue, RxeSendQueue } from '../../abi/rxe-rings.js';
import { E, fail } from '../../common/errno.js';
import { ProcMemory } from '../../hca/mr-memory.js';
import { addSeals, closeFd, F_SEAL_GROW, F_SEAL_SEAL, F_SEAL_SHRINK, mapShared, memfdCreate, type Mapping } from '../../native/libc.js';
import type { Context } from '../context.js';
import { checkMapped } from '../proc-maps.js';
import type { Provider } from './provider.js';

const PAGE = 4096;

/** One queue of a memfd: the daemon's mapping of it, and the mminfo that names it to the client. */
interface Queue {
  mapping: Mapping;
  mi: Buffer;
}

/**
 * Queue memory of the daemon's own, shared with the client: one memfd holding the queues of `bytes` (page
 * multiples) end to end, sealed so that the client, once it holds it, can neither shrink it under the daemon's
 * mappings nor grow it. Each queue is mapped on its own (every layout's queue starts at its buffer's 0) and
 * offered for mmap at an offset of its own; a queue after the first goes with the first (ctx.unmapClient).
 */
function queueMemory(ctx: Context, bytes: readonly number[], what: string): Queue[] {
  const ex = ctx.host.fdExchange;
  if (!ex) fail(E.EOPNOTSUPP, `${what}: the daemon has no descriptor exchange`);
  const out: Queue[] = [];
  let fd = -1;
  try {
    fd = memfdCreate(`softverbs ${what}`);
    ftruncateSync(fd, bytes.reduce((a, b) => a + b, 0));
    addSeals(fd, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
    let at = 0;
    for (const n of bytes) {
      if (n % PAGE) throw new RangeError(`softverbs: a ${what} queue of ${n} bytes is not a page multiple`);
      ctx.host.quotas.charge(ctx.uid, 'mappings');
      let mapping: Mapping;
      try {
        mapping = mapShared(fd, n, at);
      } catch (e) {
        ctx.host.quotas.release(ctx.uid, 'mappings');
        throw e;
      }
      out.push({ mapping, mi: Buffer.alloc(0) });
      if (out.length > 1) ctx.linkMapping(out[0]!.mapping, mapping);
      out[out.length - 1]!.mi = pack(MMINFO, { offset: BigInt(ex.offer(ctx, mapping, fd, at, n)), size: n, pad: 0 });
      at += n;
    }
    return out;
  } catch (e) {
    if (out.length) ctx.unmapClient(out[0]!.mapping);
    throw e;
  } finally {
    // each offer holds a duplicate of its own
    if (fd >= 0) closeFd(fd);
  }
}

export const rxeProvider: Provider = {
  name: 'rxe',
  createRespUdata: { cq: layout(RXE_CREATE_CQ_RESP).size, qp: layout(RXE_CREATE_QP_RESP).size },
  // rxe's commands carry no request udata but MODIFY_SRQ's
  reqUdata: (spec) => (spec.name === 'MODIFY_SRQ' ? RXE_MODIFY_SRQ_CMD : undefined),
  cq(ctx, cqe) {
    const l = rxeCqLayout(cqe) ?? fail(E.EINVAL, `CREATE_CQ: cqe ${cqe} is out of range`);
    const [q] = queueMemory(ctx, [l.bytes], 'CQ');
    return { mapping: q!.mapping, ring: new RxeCompletionQueue(q!.mapping.buffer, l), slots: l.slots, cqe: l.cqe, udata: q!.mi };
  },
  resizeCq(ctx, cqe) {
    const l = rxeCqLayout(cqe) ?? fail(E.EINVAL, `RESIZE_CQ: cqe ${cqe} is out of range`);
    const [q] = queueMemory(ctx, [l.bytes], 'CQ');
    return { mapping: q!.mapping, ring: null, slots: l.slots, cqe: l.cqe, udata: q!.mi };
  },
  qp(ctx, want, srq) {
    const l = rxeQpLayout(want, srq) ?? fail(E.EINVAL, 'CREATE_QP: a capability is over the device limit');
    // the SQ first, so that the QP's mapping is the SQ's; rxe_create_qp_resp names rq_mi, then sq_mi
    const [sq, rq] = queueMemory(ctx, l.rq ? [l.sq.bytes, l.rq.bytes] : [l.sq.bytes], 'QP');
    return {
      mapping: sq!.mapping,
      sq: new RxeSendQueue(sq!.mapping.buffer, l.sq, l.caps),
      rq: rq && l.rq ? new RxeRecvQueue(rq.mapping.buffer, l.rq, l.caps.maxRecvSge) : null,
      caps: l.caps,
      udata: Buffer.concat([rq?.mi ?? Buffer.alloc(layout(MMINFO).size), sq!.mi]),
    };
  },
  srq(ctx, maxWr, maxSge) {
    const l = rxeSrqLayout(maxWr, maxSge) ?? fail(E.EINVAL, `CREATE_SRQ: max_wr ${maxWr} / max_sge ${maxSge} out of range`);
    const [q] = queueMemory(ctx, [l.bytes], 'SRQ');
    return {
      mapping: q!.mapping, ring: new RxeRecvQueue(q!.mapping.buffer, l, l.maxSge), maxWr: l.maxWr, maxSge: l.maxSge,
      // rxe_create_srq_resp: mi, then srq_num and a reserved word
      udata: (srqn) => {
        const tail = Buffer.alloc(8);
        tail.writeUInt32LE(srqn, 0);
        return Buffer.concat([q!.mi, tail]);
      },
    };
  },
  mr(ctx, start, length, access) {
    if (ctx.memFd < 0) fail(E.EFAULT, 'REG_MR: the program has not handed its memory to the daemon (is the preload library loaded?)');
    checkMapped(ctx.mapsFd, ctx.pid, start, length, (access & (Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_ATOMIC)) !== 0);
    return { mem: new ProcMemory(ctx.memFd, Number(start)), mapping: null };
  },
  // the kernel's rxe hands out a nonzero AH index that UD WQEs carry (rxe-rings.ts reads it back to the handle)
  ahUdata: (handle) => pack(RXE_CREATE_AH_RESP, { ah_num: rxeAhNum(handle), reserved: 0 }),
  unmapped(ctx, m) {
    ctx.host.fdExchange?.withdrawAll(m);
  },
};
