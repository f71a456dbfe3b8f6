/**
 * A device's QP1, the General Services Interface (IBA 13.5.1), as the
 * kernel's MAD layer keeps it per port: management datagrams in and out,
 * the checks a MAD passes before anyone sees it, and what was dropped and
 * why. The CM (`ib-cm.ts`) registers with it as its agent, as ib_cm calls
 * ib_register_mad_agent for class 0x07; the GSI knows nothing of
 * connections.
 */
import type { SoftDevice } from '../hca/device.js';
import { OPCODES, Op, Transport } from '../hca/opcodes.js';
import type { Pkt } from '../hca/packet.js';
import { GSI_QKEY, GSI_QPN, MAD_SIZE, parseMad, type CmMad } from './mad.js';
import { ErrnoError } from '../common/errors.js';

/** A MAD that passed the GSI's checks: its header, attribute and message bytes (copies, ours to keep). */
export type RecvMad = Exclude<CmMad, { error: string }>;

/** Who takes the CM class's MADs on a port. */
export interface GsiAgent {
  /** `src` is the sender's GID; both it and the MAD are copies. */
  recv(port: GsiPort, mad: RecvMad, src: Uint8Array): void;
}

export class GsiPort {
  private agent: GsiAgent | null = null;
  /** QP1's send PSN: each MAD a UD SEND with the next one */
  private psn = 0;
  /** MADs that reached no agent or that the agent would not take, by reason */
  readonly drops = new Map<string, number>();

  constructor(readonly dev: SoftDevice) {}

  /** As ib_register_mad_agent: one agent takes the CM class on this port; a second is refused. */
  register(agent: GsiAgent): void {
    if (this.agent && this.agent !== agent) throw new ErrnoError('EBUSY', `${this.dev.name}: QP1 already has a CM agent`);
    this.agent = agent;
  }

  unregister(agent: GsiAgent): void {
    if (this.agent === agent) this.agent = null;
  }

  drop(why: string): void {
    this.drops.set(why, (this.drops.get(why) ?? 0) + 1);
  }

  /** A packet for QP1. Its payload is a window on a receive buffer that lives until we return: the MAD is copied. */
  receive(p: Pkt): void {
    if (p.opcode !== (Transport.UD | Op.SEND_ONLY)) return this.drop('not a UD SEND_ONLY');
    if (p.qkey !== GSI_QKEY) return this.drop('wrong Q_Key for QP1');
    if (p.payLen < MAD_SIZE) return this.drop('short MAD');
    const m = parseMad(p.payload.slice(p.payOff, p.payOff + MAD_SIZE));
    if ('error' in m) return this.drop(m.error);
    if (!this.agent) return this.drop('no agent for the CM class');
    this.agent.recv(this, m, p.srcGid.slice());
  }

  /** A MAD to the QP1 of the port with GID `dst`, delivered (or put on the wire) before this returns. */
  send(dst: Uint8Array, mad: Uint8Array): void {
    const dev = this.dev;
    const p = dev.newPkt();
    p.opcode = Transport.UD | Op.SEND_ONLY;
    p.mask = OPCODES[p.opcode]!.mask;
    p.destQpn = GSI_QPN;
    p.srcQpn = GSI_QPN;
    p.qkey = GSI_QKEY;
    p.psn = this.psn;
    this.psn = (this.psn + 1) & 0xffffff;
    p.ackReq = true;
    p.srcGid = dev.gids[0]!;
    p.dstGid = dst;
    p.payload = mad;
    p.payOff = 0;
    p.payLen = MAD_SIZE;
    dev.xmit(p);
    dev.fabric.drain();
  }
}
