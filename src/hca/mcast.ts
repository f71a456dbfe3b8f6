/**
 * UD multicast (rxe_mcast.c's job): per device, the groups its QPs are attached to (rxe's mcg, by MGID) and
 * the QPs of each (rxe's mca list). A UD SEND whose BTH names QPN 0xFFFFFF is delivered to every QP attached
 * to the group its destination GID names, on every device of the daemon; a group's first attach joins the
 * group's IP address on the device's wire, its last detach leaves it.
 */
import { E, fail } from '../common/errno.js';
import { gidToAddr, isV4Gid } from './gid.js';
import type { Qp } from './qp.js';

/** The multicast QPN (IBA 9.6.1.1: the BTH's destination QP of a multicast packet). */
export const MCAST_QPN = 0xffffff;
/** The permissive LID, which a multicast LID may not be on IB (ignored on RoCE, IBA A17.5.6). */
export const LID_PERMISSIVE = 0xffff;

/** rxe_param.h: what QUERY_DEVICE reports and attach enforces. */
export const McastLimits = {
  /** RXE_MAX_MCAST_GRP: groups per device */
  maxMcastGrp: 8192,
  /** RXE_MAX_MCAST_QP_ATTACH: QPs per group */
  maxMcastQpAttach: 56,
  /** RXE_MAX_TOT_MCAST_QP_ATTACH: attachments per device */
  maxTotalMcastQpAttach: 0x70000,
} as const;

/** rdma_is_multicast_addr(): an IPv6 multicast GID (ff00::/8) or an IPv4-mapped one in 224.0.0.0/4. */
export function isMcastGid(g: Uint8Array): boolean {
  if (g[0] === 0xff) return true;
  return isV4Gid(g) && (g[12]! & 0xf0) === 0xe0;
}

/** The group's wire membership: joined with its first QP, left with its last (the transport's, when it has one). */
export interface McastWire {
  join(gid: Uint8Array): void;
  leave(gid: Uint8Array): void;
}

/** One group (rxe's mcg): its MGID and the QPs attached, in attach order. */
export interface Mcg {
  readonly gid: Uint8Array;
  readonly key: string;
  readonly qps: Qp[];
}

const keyOf = (g: Uint8Array): string => gidToAddr(g);

export class McastTable {
  private readonly groups = new Map<string, Mcg>();
  /** attachments on the device (rxe's mcg_attach) */
  private attached = 0;
  /** where a group's IP membership goes (null: no wire, delivery inside the daemon only) */
  wire: McastWire | null = null;

  get size(): number {
    return this.groups.size;
  }

  /**
   * The group `gid` names on this device, if any of its QPs is attached to it. Every multicast packet asks, with
   * the GID object of its sender's AH: the last answer is kept for that object (no key built per packet) until
   * an attach or detach changes the table.
   */
  lookup(gid: Uint8Array): Mcg | undefined {
    if (this.groups.size === 0) return undefined;
    if (gid === this.lastGid) return this.lastMcg;
    this.lastGid = gid;
    return (this.lastMcg = this.groups.get(keyOf(gid)));
  }
  private lastGid: Uint8Array | null = null;
  private lastMcg: Mcg | undefined = undefined;
  private forget(): void {
    this.lastGid = null;
    this.lastMcg = undefined;
  }

  /**
   * rxe_attach_mcast: a QP already in the group is not an error; the group is made on its first QP (ENOMEM past
   * max_mcast_grp); past max_total_mcast_qp_attach or max_mcast_qp_attach, EINVAL as rxe's.
   */
  attach(qp: Qp, gid: Uint8Array): void {
    const key = keyOf(gid);
    let g = this.groups.get(key);
    if (g?.qps.includes(qp)) return;
    if (!g) {
      if (this.groups.size >= McastLimits.maxMcastGrp) fail(E.ENOMEM, `ATTACH_MCAST: the device has ${McastLimits.maxMcastGrp} multicast groups (max_mcast_grp)`);
      g = { gid: gid.slice(), key, qps: [] };
    }
    if (this.attached >= McastLimits.maxTotalMcastQpAttach) fail(E.EINVAL, `ATTACH_MCAST: the device has ${McastLimits.maxTotalMcastQpAttach} attachments (max_total_mcast_qp_attach)`);
    if (g.qps.length >= McastLimits.maxMcastQpAttach) fail(E.EINVAL, `ATTACH_MCAST: group ${key} has ${McastLimits.maxMcastQpAttach} QPs (max_mcast_qp_attach)`);
    if (!this.groups.has(key)) {
      this.groups.set(key, g);
      this.wire?.join(g.gid);
    }
    g.qps.push(qp);
    this.attached++;
    this.forget();
  }

  /** rxe_detach_mcast: EINVAL when the group does not exist or the QP is not in it; the last QP out ends the group. */
  detach(qp: Qp, gid: Uint8Array): void {
    const key = keyOf(gid);
    const g = this.groups.get(key);
    const at = g ? g.qps.indexOf(qp) : -1;
    if (!g || at < 0) fail(E.EINVAL, `DETACH_MCAST: QP ${qp.qpn} is not attached to ${key}`);
    g.qps.splice(at, 1);
    this.attached--;
    this.forget();
    if (g.qps.length === 0) {
      this.groups.delete(key);
      this.wire?.leave(g.gid);
    }
  }

  /** The groups a QP is in (the wire's rejoin after a restart of the transport, the tracker). */
  groupsOf(qp: Qp): Mcg[] {
    return [...this.groups.values()].filter((g) => g.qps.includes(qp));
  }

  /** Every group's GID (the wire joins them when it starts after QPs attached). */
  gids(): Uint8Array[] {
    return [...this.groups.values()].map((g) => g.gid);
  }
}
