/**
 * A context's provider ABI: what differs between the softverbs library
 * and rdma-core's rxe provider (a C program through the preload library).
 * The core commands are the kernel's for both; the provider decides where
 * a queue's memory comes from, its ring layout, what udata a command
 * carries and answers, and how the daemon reaches registered memory. The
 * command handlers (cmd/) ask the context's provider and stay one code
 * path; the engines see only the ring interfaces of abi/wqe.ts.
 */
import type { StructDef } from '../../abi/layout.js';
import type { QpCaps } from '../../abi/queue.js';
import type * as U from '../../abi/uverbs.js';
import type { CompletionProducer, RecvQueueConsumer, SendQueueConsumer } from '../../abi/wqe.js';
import type { MrMemory } from '../../hca/mr-memory.js';
import type { Mapping } from '../../native/libc.js';
import type { Context } from '../context.js';

/** The provider ABI a command connection speaks: the softverbs library's, or rdma-core's rxe provider's. */
export type ProviderAbi = 'softverbs' | 'rxe';

/** A CQ's ring, made for CREATE_CQ or RESIZE_CQ. */
export interface CqQueue {
  mapping: Mapping;
  /** the ring, fresh; null on resize (the CQ's ring moves into `mapping`) */
  ring: CompletionProducer | null;
  slots: number;
  /** the cqe the command answers (what the ring holds) */
  cqe: number;
  /** the provider's response udata */
  udata: Buffer;
}

/** A QP's rings. */
export interface QpQueues {
  mapping: Mapping;
  sq: SendQueueConsumer;
  rq: RecvQueueConsumer | null;
  caps: QpCaps;
  udata: Buffer;
}

export interface SrqQueue {
  mapping: Mapping;
  ring: RecvQueueConsumer;
  maxWr: number;
  maxSge: number;
  /** the udata, once the SRQ has its number */
  udata(srqn: number): Buffer;
}

/** Registered memory as the HCA reaches it, and what it costs. */
export interface MrPages {
  mem: MrMemory;
  /** the daemon's mapping of it, when it maps it */
  mapping: Mapping | null;
  pages: number;
}

export interface Provider {
  readonly name: ProviderAbi;
  /**
   * The least response udata its driver writes for a CQ and a QP: rxe's create_cq / create_qp refuse (EINVAL)
   * an answer with less room than their mminfo(s), before making anything. The extended commands check it.
   */
  readonly createRespUdata: { readonly cq: number; readonly qp: number };
  /** The request udata a command carries for this provider (decoded before its handler runs), if any. */
  reqUdata(spec: U.CmdSpec): StructDef | undefined;
  cq(ctx: Context, cqe: number, u: U.Udata<'CREATE_CQ'> | null): CqQueue;
  /** RESIZE_CQ's new ring, for a CQ with `used` completions waiting. */
  resizeCq(ctx: Context, cqe: number, u: U.Udata<'RESIZE_CQ'> | null): CqQueue;
  qp(ctx: Context, want: QpCaps, srq: boolean, u: U.Udata<'CREATE_QP'> | null): QpQueues;
  srq(ctx: Context, maxWr: number, maxSge: number, u: U.Udata<'CREATE_SRQ'> | null): SrqQueue;
  /**
   * The memory [start, start+length) of the client for REG_MR / REREG_MR (after the common checks; pinned pages are
   * charged by the caller). `access` says whether the HCA will write it.
   */
  mr(ctx: Context, start: bigint, length: bigint, access: number, u: U.Udata<'REG_MR'> | null): Omit<MrPages, 'pages'>;
  /** CREATE_AH's udata for the AH behind `handle`. */
  ahUdata(handle: number): Buffer;
  /** A mapping the provider made is going (its queue was destroyed). */
  unmapped?(ctx: Context, m: Mapping): void;
  /** The held memfd (PUT_MEMFD id) a command's decoded udata names, which the command consumes whatever its outcome; 0: none. */
  memfdOf?(udata: object): number;
}
