/**
 * A port's GID and P_Key tables in the discovery tree, as Linux sysfs shows
 * them for an rxe port (libibverbs reads them through SYSFS_PATH): gids/I
 * for every index of the table, the zero GID where it is empty (rdma-core
 * reads all gid_tbl_len of them and fails on a missing one);
 * gid_attrs/types/I and gid_attrs/ndevs/I for the entries in use (ndevs
 * names the network interface, which libibverbs resolves with
 * if_nametoindex); pkeys/I for the P_Key table. The empty entries are hard
 * links to the first one: creating a thousand inodes per device took most of
 * a second on an ext4 root, a link a few microseconds. So an entry that gets
 * a GID must be replaced (unlinked, then written), never written through.
 */
import { linkSync } from 'node:fs';
import { join } from 'node:path';
import { gidString } from '../common/format.js';
import { ensureDirUnder, writeNoFollow } from './tree.js';

/** what QUERY_PORT reports: rxe's table sizes */
export const GID_TBL_LEN = 1024;
export const PKEY_TBL_LEN = 1;
/** the default P_Key, full membership: rxe's only one */
const DEFAULT_PKEY = '0xffff';
const ZERO_GID = new Uint8Array(16);

/** Writes port `port` (a directory under `root`) of a device with these GIDs, carried by `netdev` (null: no interface has the address). */
export function writePortTables(root: string, port: string, gids: readonly Uint8Array[], netdev: string | null): void {
  for (const d of ['gids', 'gid_attrs/types', 'gid_attrs/ndevs', 'pkeys']) ensureDirUnder(root, join(port, d));
  let empty: string | null = null;
  for (let i = 0; i < GID_TBL_LEN; i++) {
    const g = gids[i];
    const path = join(port, 'gids', String(i));
    if (!g) {
      if (empty) linkSync(empty, path);
      else writeNoFollow((empty = path), `${gidString(ZERO_GID)}\n`);
      continue;
    }
    writeNoFollow(path, `${gidString(g)}\n`);
    writeNoFollow(join(port, 'gid_attrs', 'types', String(i)), 'RoCE v2\n');
    if (netdev) writeNoFollow(join(port, 'gid_attrs', 'ndevs', String(i)), `${netdev}\n`);
  }
  for (let i = 0; i < PKEY_TBL_LEN; i++) writeNoFollow(join(port, 'pkeys', String(i)), `${i === 0 ? DEFAULT_PKEY : '0x0000'}\n`);
}
