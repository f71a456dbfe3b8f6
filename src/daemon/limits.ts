/**
 * What one user may hold of the daemon, on top of the device limits
 * QUERY_DEVICE advertises: contexts, connections, verbs objects, mappings
 * of client memory (each costs the daemon one of its vm.max_map_count
 * entries), memfds handed over and not yet mapped (each one of the
 * daemon's descriptors) and daemon memory. Root (and the daemon's own uid) are exempt, as
 * CAP_IPC_LOCK and CAP_SYS_RESOURCE are from the kernel's limits. Going past
 * a cap is the errno the kernel gives for the same exhaustion: EMFILE for
 * contexts, connections and memfds (fds), EAGAIN for objects (the rdma cgroup's
 * answer), ENOMEM for mappings and memory.
 */
import { readFileSync } from 'node:fs';
import { CmdError, E } from '../common/errno.js';
import { UsageError } from '../common/errors.js';

export interface UserLimits {
  contexts: number;
  connections: number;
  objects: number;
  mappings: number;
  /** memfds a client handed over (PUT_MEMFD) that no command has mapped yet: each holds a daemon descriptor */
  memfds: number;
  /** bytes of daemon memory charged to the user (QP work-request state, by its capabilities) */
  memory: number;
}
export type Quota = keyof UserLimits;

export const DEFAULT_USER_LIMITS: Readonly<UserLimits> = {
  contexts: 64,
  connections: 256,
  objects: 16_384,
  mappings: 4_096,
  memfds: 256,
  memory: 256 * 1024 * 1024,
};

const ERRNO: Record<Quota, number> = { contexts: E.EMFILE, connections: E.EMFILE, objects: E.EAGAIN, mappings: E.ENOMEM, memfds: E.EMFILE, memory: E.ENOMEM };

/** The daemon's whole budget of mappings: what vm.max_map_count leaves after V8's own needs. */
export function globalMappingBudget(): number {
  let max = 65530;
  try {
    max = Number(readFileSync('/proc/sys/vm/max_map_count', 'utf8').trim()) || max;
  } catch {
    /* not Linux's procfs: the default */
  }
  return Math.max(1024, max - 16_384);
}

export class Quotas {
  private byUid = new Map<number, Record<Quota, number>>();
  private mappingsAll = 0;
  private readonly mappingBudget = globalMappingBudget();

  constructor(
    public limits: UserLimits = { ...DEFAULT_USER_LIMITS },
    private readonly exempt: (uid: number) => boolean,
    private readonly onHit: (uid: number, what: string, msg: string) => void,
  ) {}

  private of(uid: number): Record<Quota, number> {
    let u = this.byUid.get(uid);
    if (!u) this.byUid.set(uid, (u = { contexts: 0, connections: 0, objects: 0, mappings: 0, memfds: 0, memory: 0 }));
    return u;
  }

  /** What uid holds of `what`. */
  held(uid: number, what: Quota): number {
    return this.byUid.get(uid)?.[what] ?? 0;
  }

  /** Takes n of `what` for uid, or throws the kernel's errno for that exhaustion (nothing taken). */
  charge(uid: number, what: Quota, n = 1): void {
    this.check(uid, what, n);
    this.take(uid, what, n);
  }

  /**
   * Throws what charge() would, taking nothing: a command checks everything it will need first, then
   * takes it once nothing can fail any more (all of it synchronous, so nothing comes in between).
   */
  check(uid: number, what: Quota, n = 1): void {
    const r = this.refusal(uid, what, n);
    if (r) throw new CmdError(r.errno, r.message);
  }

  /** What check() would throw, as a plain answer (a refused connection costs no Error and its stack), or null. */
  refusal(uid: number, what: Quota, n = 1): { errno: number; message: string } | null {
    if (what === 'mappings' && this.mappingsAll + n > this.mappingBudget) {
      const message = `the daemon has ${this.mappingsAll} client mappings, its budget under vm.max_map_count`;
      this.onHit(uid, 'mappings (daemon-wide)', message);
      return { errno: E.ENOMEM, message };
    }
    const has = this.held(uid, what);
    if (!this.exempt(uid) && has + n > this.limits[what]) {
      const message = `uid ${uid} holds ${has} ${what === 'memory' ? 'bytes of daemon memory' : what === 'memfds' ? 'memfds handed to the daemon and not yet mapped' : what} (limit ${this.limits[what]})`;
      this.onHit(uid, what, message);
      return { errno: ERRNO[what], message };
    }
    return null;
  }

  /** Takes n of `what` for uid, unchecked (after check()). */
  take(uid: number, what: Quota, n = 1): void {
    this.of(uid)[what] += n;
    if (what === 'mappings') this.mappingsAll += n;
  }

  release(uid: number, what: Quota, n = 1): void {
    const u = this.of(uid);
    u[what] = Math.max(0, u[what] - n);
    if (what === 'mappings') this.mappingsAll = Math.max(0, this.mappingsAll - n);
    if (Object.values(u).every((v) => v === 0)) this.byUid.delete(uid);
  }
}

/** `--config`'s "limits": known keys, positive integers. */
export function parseLimits(v: unknown): UserLimits {
  const l = { ...DEFAULT_USER_LIMITS };
  if (v === undefined) return l;
  if (typeof v !== 'object' || v === null) throw new UsageError('"limits" must be an object');
  for (const [k, n] of Object.entries(v)) {
    if (!(k in l)) throw new UsageError(`"limits": unknown limit "${k}" (known: ${Object.keys(l).join(', ')})`);
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 1) throw new UsageError(`"limits.${k}": ${JSON.stringify(n)} is not a positive integer`);
    l[k as Quota] = n;
  }
  return l;
}
