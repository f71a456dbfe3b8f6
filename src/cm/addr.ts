/**
 * IP addresses for rdma_cm (what the kernel's drivers/infiniband/core/addr.c
 * does for cma.c): which device has an address, which one the host's routing
 * table sends a destination from, and the spellings addresses take in
 * sockaddrs, GIDs and the IP CM header.
 */
import { createSocket } from 'node:dgram';
import { isIPv4, isIPv6, SocketAddress } from 'node:net';
import type { SockAddr } from '../abi/ucma.js';
import { CmdError, E } from '../common/errno.js';
import { codeOf } from '../common/errors.js';
import type { SoftDevice } from '../hca/device.js';
import { gidOf, gidToAddr, isV4Gid, sameGid } from '../hca/gid.js';

export const isWildcard = (a: SockAddr) => a.address === '0.0.0.0' || a.address === '::';

/** One spelling per address (fd00::2, never fd00:0:0:0:0:0:0:2), so addresses compare as strings. */
export function canonical(addr: string, family: 4 | 6): string {
  return family === 6 ? new SocketAddress({ address: addr, family: 'ipv6' }).address : addr;
}

/** A consumer's address must be of its family; it is respelled canonically in place. */
export function checkAddr(a: SockAddr, verb: string): void {
  if ((a.family === 4 && !isIPv4(a.address)) || (a.family === 6 && !isIPv6(a.address))) throw new CmdError(E.EAFNOSUPPORT, `${verb}: not an IPv4 or IPv6 socket address`);
  a.address = canonical(a.address, a.family);
}

/** The 16-byte address the IP CM header carries: an IPv6 address whole, an IPv4 one in the last 4 bytes. */
export function ipCmAddr(a: SockAddr): Uint8Array {
  if (a.family === 6) return gidOf(a.address);
  const b = new Uint8Array(16);
  b.set(gidOf(a.address).subarray(12), 12);
  return b;
}

export function addrOfIpCm(b: Uint8Array, v: 4 | 6): string {
  return v === 4 ? `${b[12]}.${b[13]}.${b[14]}.${b[15]}` : canonical(gidToAddr(b), 6);
}

/** The device with `addr` among its GIDs (rdma_translate_ip). */
export function deviceOf(devices: readonly SoftDevice[], addr: string): SoftDevice | null {
  if (!addr) return null;
  const g = gidOf(addr);
  return devices.find((d) => d.gids.some((x) => sameGid(x, g))) ?? null;
}

/**
 * The device a datagram to `dst` leaves from, as the host's routing table picks its source address
 * (rdma_resolve_ip); `done` gets it, or null with an errno and why.
 */
export function routeToDevice(devices: () => readonly SoftDevice[], dst: SockAddr, timeoutMs: number, done: (dev: SoftDevice | null, err: number, why: string) => void): void {
  const s = createSocket(dst.family === 4 ? 'udp4' : 'udp6');
  const timer = setTimeout(() => {
    s.close();
    done(null, E.ETIMEDOUT, 'timed out');
  }, Math.max(1, Math.min(timeoutMs || 2000, 60_000)));
  s.on('error', (e: unknown) => {
    clearTimeout(timer);
    s.close();
    const code = codeOf(e);
    // a daemon out of descriptors has no socket to ask the routing table with: that is no answer about the route
    const errno = code === 'ENETUNREACH' || code === 'EHOSTUNREACH' ? E.ENETUNREACH : code === 'EMFILE' || code === 'ENFILE' ? E[code] : E.EADDRNOTAVAIL;
    done(null, errno, `no route (${code})`);
  });
  s.connect(4791, dst.address, () => {
    clearTimeout(timer);
    let src = '';
    try {
      src = s.address().address;
    } catch {
      /* closed meanwhile */
    }
    s.close();
    const devs = devices();
    // a destination that is one of our own devices is reached from it (loopback), as rxe on the same netdev
    const dev = deviceOf(devs, src) ?? deviceOf(devs, dst.address) ?? (isLocalRoute(src, dst.address) ? nearest(devs, dst) : null);
    done(dev, E.ENODEV, dev ? '' : `the route to ${dst.address} leaves from ${src}, which no RDMA device has`);
  });
}

/** The kernel chose a source for `dst` on the loopback interface: the destination is this host. */
function isLocalRoute(src: string, dst: string): boolean {
  return src === dst || src.startsWith('127.') || src === '::1';
}

/**
 * For a destination on this host (a loopback route), any of our devices reaches it, as rdma_cm binds a
 * loopback destination to the first active port: the one whose address shares the longest prefix with it.
 */
function nearest(devices: readonly SoftDevice[], dst: SockAddr): SoftDevice | null {
  const g = gidOf(dst.address);
  let best: SoftDevice | null = null;
  let bestLen = -1;
  for (const d of devices) {
    const a = d.gids[0]!;
    if (isV4Gid(a) !== (dst.family === 4)) continue;
    let n = 0;
    while (n < 16 && a[n] === g[n]) n++;
    if (n > bestLen) {
      best = d;
      bestLen = n;
    }
  }
  return best;
}
