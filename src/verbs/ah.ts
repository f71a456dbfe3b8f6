/** An address handle (struct ibv_ah), for UD sends. */
import * as U from '../abi/uverbs.js';
import type { ProtectionDomain } from './pd.js';

export class AddressHandle {
  private destroyed = false;
  /** @internal */
  constructor(readonly pd: ProtectionDomain, /** @internal */ readonly handle: number) {}
  /** @internal */
  get label(): string {
    return `AH ${this.handle}`;
  }
  /** ibv_destroy_ah (once the daemon is gone: only here) */
  async destroyAh(): Promise<void> {
    if (this.destroyed) return;
    await this.pd.context.release('ibv_destroy_ah', U.Spec.DESTROY_AH, { ah_handle: this.handle });
    this.destroyed = true;
    this.pd.dependents.delete(this);
  }
  async [Symbol.asyncDispose](): Promise<void> {
    await this.destroyAh();
  }
}
