/**
 * What holds an object alive: the objects created on it that still exist (a PD's MRs, AHs, QPs and SRQs, a
 * CQ's and an SRQ's QPs, a channel's CQs). An explicit destroy keeps libibverbs' rule (EBUSY while they
 * exist), and its error names them; disposal releases them first, newest first, as pyverbs' close() does, so
 * `await using` releases everything whatever order the objects were declared in.
 */
import { listWords } from '../common/format.js';
import { VerbsError } from './errors.js';

export interface Dependent {
  /** how messages name it: "QP 17", "MR lkey 0x1234" */
  readonly label: string;
  [Symbol.asyncDispose](): Promise<void>;
}

export class Dependents {
  private readonly live = new Set<Dependent>();

  add(o: Dependent): void {
    this.live.add(o);
  }

  delete(o: Dependent): void {
    this.live.delete(o);
  }

  get size(): number {
    return this.live.size;
  }

  /**
   * Releases every dependent, the newest first (`first`: those to release before all others). The first
   * failure ends it and is thrown: the owner's own destroy could then only fail with EBUSY, and that error
   * would bury this one.
   */
  async dispose(first?: (o: Dependent) => boolean): Promise<void> {
    const all = [...this.live].reverse();
    // those `first` picks go before the rest, newest first among them too
    const order = first ? [...all.filter(first), ...all.filter((o) => !first(o))] : all;
    for (const o of order) await o[Symbol.asyncDispose]();
  }

  /** "QP 17", "QP 17 and QP 18", "QP 17, MR lkey 0x5 and 3 more" */
  describe(): string {
    const labels = [...this.live].map((o) => o.label);
    const shown = labels.length > 4 ? [...labels.slice(0, 3), `${labels.length - 3} more`] : labels;
    return listWords(shown);
  }

  /** The EBUSY of destroying `what` while these exist, naming them. */
  busy(verb: string, what: string): VerbsError {
    const them = this.live.size === 1 ? 'it' : 'them';
    return new VerbsError(verb, 'EBUSY', `${what} is still used by ${this.describe()}: destroy ${them} first (disposing ${what} releases ${them} for you)`);
  }

  /** A destroy's error: the daemon's EBUSY as `busy` says it (with the hint that disposal releases them); any other as it was. */
  explain(e: unknown, verb: string, what: string): unknown {
    return e instanceof VerbsError && e.code === 'EBUSY' && this.live.size > 0 ? this.busy(verb, what) : e;
  }
}
