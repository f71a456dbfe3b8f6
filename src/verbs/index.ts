/**
 * softverbs: Linux-style userspace RDMA verbs for Node.js.
 *
 * ```ts
 * import { getDeviceList, openDevice, Access, QpType } from 'softverbs';
 * await using ctx = await openDevice(getDeviceList()[0]!);
 * await using pd = await ctx.allocPd();
 * await using mr = await pd.allocMr(4096, Access.LOCAL_WRITE | Access.REMOTE_WRITE);
 * ```
 */
export * from '../abi/enums.js';
export { VerbsError } from './errors.js';
export { getDeviceList, openDevice } from './device.js';
export { Context } from './context.js';
export { ProtectionDomain } from './pd.js';
export { MemoryRegion } from './mr.js';
export { MemoryWindow, incRkey } from './mw.js';
export type { MwBind, MwBindInfo } from './mw.js';
export { AddressHandle } from './ah.js';
export { CompletionChannel, CompletionQueue, CompletionQueueEx, nextCompletion } from './cq.js';
export type { WorkCompletionEx } from './cq.js';
export { SharedReceiveQueue } from './srq.js';
export { QueuePair } from './qp.js';
export { WrBuilder } from './wr.js';
export { EventChannel, CmId, CmEventType, cmEventStr, PortSpace, RdmaOption, getAddrInfo, createEp } from './cm.js';
export type { CmEvent, ConnParam, EventParam, RdmaAddrInfo } from './cm.js';
export { RejReason, SidrStatus } from '../cm/mad.js';
export { WorkCompletion } from './types.js';
export type { Device, DeviceAttr, DeviceAttrEx, PortAttr, Sge, SendWr, RecvWr, QpAttr, QpInitAttr, SrqAttr, AhAttr, GlobalRoute, AsyncEvent, QpCaps } from './types.js';
export { gidString, parseGidString } from '../common/format.js';
export { defaultRoot } from '../common/paths.js';
