/**
 * What librdmacm's UD examples (udaddy, mckey) keep per connection and post the same way: a node's
 * resources, its receives of message_size + the GRH, and its SEND_WITH_IMMs carrying its QPN, each
 * failure said in the examples' words on stdout.
 */
import { SendFlags, WrOpcode } from '../abi/enums.js';
import type { AddressHandle } from '../verbs/ah.js';
import type { CmId } from '../verbs/cm.js';
import type { CompletionQueue } from '../verbs/cq.js';
import type { MemoryRegion } from '../verbs/mr.js';
import type { ProtectionDomain } from '../verbs/pd.js';
import { errnoOf } from '../common/errors.js';

/** the bytes of a UD receive's GRH, ahead of the message */
export const GRH = 40;

export interface UdNode {
  id: number;
  cmId: CmId | null;
  connected: boolean;
  pd?: ProtectionDomain;
  cq?: CompletionQueue;
  mr?: MemoryRegion;
  ah?: AddressHandle;
  remoteQpn: number;
  remoteQkey: number;
}

const out = (s: string) => process.stdout.write(s);

/** post_recvs: `count` receives of `size` bytes behind the GRH; 0, or -1 once one failed. */
export function postRecvs(n: UdNode, count: number, size: number): number {
  if (!count) return 0;
  try {
    for (let i = 0; i < count; i++) n.cmId!.qp!.postRecv({ wrId: BigInt(n.id), sgList: [n.mr!.sge(0, size + GRH)] });
  } catch (e) {
    out(`failed to post receives: ${errnoOf(e) ?? -1}\n`);
    return -1;
  }
  return 0;
}

/** post_sends: `count` SEND_WITH_IMMs of `size` bytes to the node's remote QP, the immediate its own QPN. */
export function postSends(n: UdNode, count: number, size: number, signaled: boolean): number {
  if (!n.connected || !count) return 0;
  const qp = n.cmId!.qp!;
  try {
    for (let i = 0; i < count; i++) {
      qp.postSend({
        wrId: BigInt(n.id), opcode: WrOpcode.SEND_WITH_IMM, sendFlags: signaled ? SendFlags.SIGNALED : (0 as SendFlags), imm: qp.qpNum,
        sgList: [n.mr!.sge(0, size)], ud: { ah: n.ah!, remoteQpn: n.remoteQpn, remoteQkey: n.remoteQkey },
      });
    }
  } catch (e) {
    out(`failed to post sends: ${errnoOf(e) ?? -1}\n`);
    return -1;
  }
  return 0;
}

/** destroy_nodes: each node's AH, QP, CQ, MR, PD and id, a failure of one not stopping the rest (as the examples). */
export async function destroyNodes(nodes: UdNode[]): Promise<void> {
  for (const n of nodes) {
    if (!n.cmId) continue;
    await n.ah?.destroyAh().catch(() => {});
    await n.cmId.destroyQp().catch(() => {});
    await n.cq?.destroyCq().catch(() => {});
    await n.mr?.deregMr().catch(() => {});
    await n.pd?.deallocPd().catch(() => {});
    await n.cmId.destroy().catch(() => {});
  }
}

/** verify_test_params: a message must fit the port's active MTU (-EINVAL, said in the tool's words, if not). */
export async function checkMtu(tool: string, n: UdNode, count: number, size: number): Promise<number> {
  const port = await n.cmId!.verbs!.queryPort(n.cmId!.portNum || 1);
  const mtu = 1 << (port.activeMtu + 7);
  if (count && size > mtu) {
    out(`${tool}: message_size ${size} is larger than active mtu ${mtu}\n`);
    return -22;
  }
  return 0;
}
