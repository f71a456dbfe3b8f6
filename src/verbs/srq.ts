/** A shared receive queue (struct ibv_srq). */
import type { SrqAttrMask } from '../abi/enums.js';
import { RecvRingProducer } from '../abi/recv-ring.js';
import type { RingLayout } from '../abi/queue.js';
import * as U from '../abi/uverbs.js';
import { unmap, type Mapping } from '../native/libc.js';
import { VerbsError } from './errors.js';
import { Dependents } from './lifetime.js';
import type { ProtectionDomain } from './pd.js';
import { postRecvWrs, refused } from './post.js';
import type { RecvWr } from './types.js';

export class SharedReceiveQueue {
  /** @internal */ handle = -1;
  srqNum = 0;
  /** @internal */ readonly userHandle: bigint;
  private readonly ring: RecvRingProducer;
  private destroyed = false;
  /** @internal the QPs that receive through it */
  readonly dependents = new Dependents();
  /** @internal */
  constructor(readonly pd: ProtectionDomain, private readonly mapping: Mapping, l: RingLayout, maxSge: number) {
    this.ring = new RecvRingProducer(mapping.buffer, l, maxSge);
    this.userHandle = pd.context.register(this);
  }
  /** ibv_post_srq_recv: shared memory only. */
  postSrqRecv(wrs: RecvWr | RecvWr[]): void {
    try {
      this.pd.context.cmd.ensureUp('ibv_post_srq_recv');
    } catch (e) {
      throw refused(e, wrs);
    }
    if (this.destroyed) throw refused(new VerbsError('ibv_post_srq_recv', 'EINVAL', 'the SRQ is destroyed'), wrs);
    postRecvWrs(this.ring, 'ibv_post_srq_recv', wrs);
  }
  /** ibv_modify_srq (SrqAttrMask.LIMIT arms the limit event) */
  async modifySrq(attr: { maxWr?: number; srqLimit?: number }, mask: SrqAttrMask): Promise<void> {
    await this.pd.context.command('ibv_modify_srq', U.Spec.MODIFY_SRQ, { srq_handle: this.handle, attr_mask: mask, max_wr: attr.maxWr ?? 0, srq_limit: attr.srqLimit ?? 0 });
  }
  /** ibv_query_srq */
  async querySrq(): Promise<{ maxWr: number; maxSge: number; srqLimit: number }> {
    const r = await this.pd.context.command('ibv_query_srq', U.Spec.QUERY_SRQ, { srq_handle: this.handle });
    return { maxWr: r.max_wr, maxSge: r.max_sge, srqLimit: r.srq_limit };
  }
  /** @internal */
  get label(): string {
    return `SRQ ${this.srqNum}`;
  }
  /** ibv_destroy_srq (EBUSY while QPs use it, naming them). Once the daemon is gone it only releases the SRQ here. */
  async destroySrq(): Promise<void> {
    if (this.destroyed) return;
    try {
      await this.pd.context.release('ibv_destroy_srq', U.Spec.DESTROY_SRQ, { srq_handle: this.handle });
    } catch (e) {
      throw this.dependents.explain(e, 'ibv_destroy_srq', this.label);
    }
    this.releaseLocal();
  }
  /** @internal forgets the SRQ here: the daemon has destroyed it */
  releaseLocal(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.pd.context.unregister(this.userHandle);
    this.pd.dependents.delete(this);
    unmap(this.mapping);
  }
  /** Destroys the QPs still receiving through it, then the SRQ. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.destroyed) return;
    await this.dependents.dispose();
    await this.destroySrq();
  }
}
