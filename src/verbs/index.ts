/**
 * softverbs: Linux-style userspace RDMA verbs for Node.js.
 *
 * ```ts
 * import { getDeviceList, openDevice, Access, QpType } from 'softverbs';
 * const ctx = await openDevice(getDeviceList()[0]!);
 * const pd = await ctx.allocPd();
 * const mr = await pd.allocMr(4096, Access.LOCAL_WRITE | Access.REMOTE_WRITE);
 * ```
 */
export * from '../abi/enums.js';
export { VerbsError } from './errors.js';
export {
  getDeviceList, openDevice, Context, ProtectionDomain, MemoryRegion, AddressHandle, CompletionChannel, CompletionQueue,
  SharedReceiveQueue, QueuePair, WorkCompletion,
} from './verbs.js';
export type { Device, DeviceAttr, PortAttr, Sge, SendWr, RecvWr, QpAttr, QpInitAttr, AhAttr, GlobalRoute, AsyncEvent } from './verbs.js';
export type { QpCaps } from '../abi/queue.js';
export { defaultRoot } from '../common/paths.js';
