/** Byte-order and text forms of GIDs and GUIDs, as sysfs and rdma-core write them. */

/** Reverses the bytes of a u64 (a __be64 read as little-endian, or back). */
export function bswap64(v: bigint): bigint {
  let r = 0n;
  for (let i = 0; i < 8; i++) {
    r = (r << 8n) | (v & 0xffn);
    v >>= 8n;
  }
  return r;
}

/** "xxxx:xxxx:xxxx:xxxx" from a GUID in host order (sysfs node_guid, ibv_devices). */
export function guidString(g: bigint): string {
  const h = g.toString(16).padStart(16, '0');
  return `${h.slice(0, 4)}:${h.slice(4, 8)}:${h.slice(8, 12)}:${h.slice(12, 16)}`;
}

/** A GID as sysfs writes it: eight groups of four hex digits ("fe80:0000:…"). */
export function gidString(g: Uint8Array): string {
  const parts: string[] = [];
  for (let i = 0; i < 16; i += 2) parts.push((((g[i] ?? 0) << 8) | (g[i + 1] ?? 0)).toString(16).padStart(4, '0'));
  return parts.join(':');
}

/** A GID from its sysfs text (eight groups of hex digits); null if the text is not one. */
export function parseGidString(s: string): Uint8Array | null {
  const parts = s.trim().split(':');
  if (parts.length !== 8 || parts.some((p) => !/^[0-9a-fA-F]{1,4}$/.test(p))) return null;
  const g = new Uint8Array(16);
  parts.forEach((h, i) => {
    const v = parseInt(h, 16);
    g[2 * i] = v >> 8;
    g[2 * i + 1] = v & 0xff;
  });
  return g;
}

/** Names as a sentence lists them: "a", "a and b", "a, b and c". */
export function listWords(names: readonly string[]): string {
  return names.length > 1 ? `${names.slice(0, -1).join(', ')} and ${names.at(-1)}` : (names[0] ?? '');
}
