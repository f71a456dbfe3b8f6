/** An address handle (struct ibv_ah), for UD sends. */
import * as U from '../abi/uverbs.js';
import type { ProtectionDomain } from './pd.js';

export class AddressHandle {
  /** @internal */
  constructor(readonly pd: ProtectionDomain, /** @internal */ readonly handle: number) {}
  /** ibv_destroy_ah */
  async destroyAh(): Promise<void> {
    await this.pd.context.command('ibv_destroy_ah', U.Spec.DESTROY_AH, { ah_handle: this.handle });
  }
  async [Symbol.asyncDispose](): Promise<void> {
    await this.destroyAh();
  }
}
