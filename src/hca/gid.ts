/**
 * GIDs: the 16-byte addresses RoCEv2 names ports with (an IPv4 address as
 * ::ffff:a.b.c.d, an IPv6 address as itself), and their IP addresses.
 */
import { isIPv4 } from 'node:net';

/** The IPv4-mapped or IPv6 GID of an address. */
export function gidOf(addr: string): Uint8Array {
  const g = new Uint8Array(16);
  if (isIPv4(addr)) {
    g[10] = g[11] = 0xff;
    addr.split('.').forEach((p, i) => (g[12 + i] = Number(p)));
    return g;
  }
  // expand :: and write 8 groups
  const [head, tail] = addr.includes('::') ? addr.split('::') : [addr, ''];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = [...h, ...new Array(8 - h.length - t.length).fill('0'), ...t];
  groups.forEach((x, i) => {
    const v = parseInt(x || '0', 16);
    g[2 * i] = v >> 8;
    g[2 * i + 1] = v & 0xff;
  });
  return g;
}

/** GID equality; runs for every packet, so a plain loop from the end, where GIDs differ. */
export function sameGid(a: Uint8Array, b: Uint8Array): boolean {
  if (a === b) return true;
  if (a.length !== 16 || b.length !== 16) return false;
  for (let i = 15; i >= 0; i--) if (a[i] !== b[i]) return false;
  return true;
}

/** The address a GID stands for: a dotted quad for IPv4-mapped GIDs, else IPv6 text. */
export function gidToAddr(g: Uint8Array): string {
  if (isV4Gid(g)) return `${g[12]}.${g[13]}.${g[14]}.${g[15]}`;
  const parts: string[] = [];
  for (let i = 0; i < 16; i += 2) parts.push(((g[i]! << 8) | g[i + 1]!).toString(16));
  return parts.join(':');
}

export function isV4Gid(g: Uint8Array): boolean {
  return g[10] === 0xff && g[11] === 0xff && g[0] === 0 && g[1] === 0 && g[2] === 0 && g[3] === 0 && g[4] === 0 && g[5] === 0 && g[6] === 0 && g[7] === 0 && g[8] === 0 && g[9] === 0;
}

/** The IP address bytes a GID stands for (4 for IPv4-mapped, else the 16). */
export function gidIp(g: Uint8Array): Uint8Array {
  return isV4Gid(g) ? g.subarray(12, 16) : g;
}

