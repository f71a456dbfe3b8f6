/** The memory of a CQ, QP or SRQ ring: a memfd the daemon maps, mapped here too. */
import { closeSync, ftruncateSync } from 'node:fs';
import { mapShared, memfdCreate, unmap, type Mapping } from '../native/libc.js';
import { VerbsError } from './errors.js';
import { errnoOf, messageOf } from '../common/errors.js';

export interface QueueMemory {
  readonly fd: number;
  readonly mapping: Mapping;
  free(): void;
}

/**
 * Creates queue memory, hands it to `use` (which registers it with the
 * daemon), and closes the fd afterwards: the mapping stays and the daemon
 * holds its own reference. If `use` fails, the mapping goes too.
 */
export async function withQueueMemory<T>(bytes: number, verb: string, use: (mem: QueueMemory) => Promise<T>): Promise<T> {
  let fd = -1;
  let mem: QueueMemory;
  try {
    fd = memfdCreate(verb);
    ftruncateSync(fd, bytes);
    const mapping = mapShared(fd, bytes, 0);
    mem = { fd, mapping, free: () => unmap(mapping) };
  } catch (e) {
    if (fd >= 0) closeSync(fd);
    throw new VerbsError(verb, errnoOf(e) ?? 'ENOMEM', messageOf(e));
  }
  try {
    return await use(mem);
  } catch (e) {
    mem.free();
    throw e;
  } finally {
    closeSync(fd);
  }
}
