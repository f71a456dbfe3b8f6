/** The memory of a CQ, QP or SRQ ring: a memfd the daemon maps, mapped here too. */
import { closeSync, ftruncateSync } from 'node:fs';
import { mapShared, memfdCreate, unmap, type Mapping } from '../native/libc.js';
import { VerbsError } from './errors.js';
import { errnoOf, messageOf } from '../common/errors.js';
import type { MemfdSink } from './fd-exchange.js';

export interface QueueMemory {
  /** the id the daemon holds the memfd under (PUT_MEMFD), for the command's udata */
  readonly id: number;
  readonly mapping: Mapping;
  free(): void;
}

/**
 * Creates queue memory, hands its memfd to the daemon (`owner`'s PUT_MEMFD), gives it to `use` (which names it
 * in the command that creates the queue), and closes the fd afterwards: the mapping stays and the daemon holds
 * its own. If handing it over or `use` fails, the mapping goes too.
 */
export async function withQueueMemory<T>(owner: MemfdSink, bytes: number, verb: string, use: (mem: QueueMemory) => Promise<T>): Promise<T> {
  let fd = -1;
  let mapping: Mapping;
  try {
    fd = memfdCreate(verb);
    ftruncateSync(fd, bytes);
    mapping = mapShared(fd, bytes, 0);
  } catch (e) {
    if (fd >= 0) closeSync(fd);
    throw new VerbsError(verb, errnoOf(e) ?? 'ENOMEM', messageOf(e));
  }
  try {
    const id = await owner.putMemfd(fd, verb);
    return await use({ id, mapping, free: () => unmap(mapping) });
  } catch (e) {
    unmap(mapping);
    throw e;
  } finally {
    closeSync(fd);
  }
}
