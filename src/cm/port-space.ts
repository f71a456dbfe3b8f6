/**
 * rdma_cm's port spaces (the kernel's cma_ps tables and bind lists): which
 * ids hold which port of RDMA_PS_TCP, _UDP, _IB and _IPOIB, the ports an
 * unbound id gets, and the listener a request's service and address name.
 */
import { randomInt } from 'node:crypto';
import { CmdError, E } from '../common/errno.js';
import type { SoftDevice } from '../hca/device.js';
import { isWildcard } from './addr.js';
import { CmState, type CmId } from './cma-id.js';

/** Ports an unbound id gets (the kernel's ip_local_port_range default). */
const EPHEMERAL_LOW = 32768;
const EPHEMERAL_HIGH = 60999;

export class PortSpaces {
  /** port space → port → ids holding it */
  private readonly spaces = new Map<number, Map<number, CmId[]>>();

  /** Binds the id's address to `want` (a free port for 0): EADDRINUSE if an id holds it for an overlapping address. */
  take(id: CmId, want: number): void {
    const a = id.local!;
    let space = this.spaces.get(id.ps);
    if (!space) this.spaces.set(id.ps, (space = new Map()));
    const conflicts = (port: number) =>
      (space.get(port) ?? []).some((o) => o !== id && o.local && (isWildcard(o.local) || isWildcard(a) || o.local.address === a.address));
    let port = want;
    if (!port) {
      const range = EPHEMERAL_HIGH - EPHEMERAL_LOW + 1;
      const start = randomInt(range);
      for (let i = 0; i < range; i++) {
        const p = EPHEMERAL_LOW + ((start + i) % range);
        if (!conflicts(p)) {
          port = p;
          break;
        }
      }
      if (!port) throw new CmdError(E.EADDRNOTAVAIL, 'no free port in the port space');
    } else if (conflicts(port)) throw new CmdError(E.EADDRINUSE, `port ${port} of port space 0x${id.ps.toString(16)} is in use`);
    const list = space.get(port) ?? [];
    list.push(id);
    space.set(port, list);
    a.port = port;
    id.bound = true;
  }

  release(id: CmId): void {
    if (!id.bound || !id.local) return;
    const space = this.spaces.get(id.ps);
    const list = space?.get(id.local.port);
    if (list) {
      const k = list.indexOf(id);
      if (k >= 0) list.splice(k, 1);
      if (list.length === 0) space!.delete(id.local.port);
    }
    id.bound = false;
  }

  /** The id listening on `port` of `ps` that takes a request to `dst` on `dev`: one bound to `dst` first, else a wildcard. */
  findListener(ps: number, port: number, dev: SoftDevice, v: 4 | 6, dst: string): CmId | null {
    const holders = this.spaces.get(ps)?.get(port) ?? [];
    let wild: CmId | null = null;
    for (const l of holders) {
      if (l.state !== CmState.LISTEN || !l.local) continue;
      if (l.dev && l.dev !== dev) continue;
      if (!isWildcard(l.local)) {
        if (l.local.address === dst) return l;
        continue;
      }
      // 0.0.0.0 takes IPv4; :: takes both (Linux's default, bindv6only off)
      if (l.local.family === v || l.local.family === 6) wild ??= l;
    }
    return wild;
  }
}
