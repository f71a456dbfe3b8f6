/**
 * The one way work reaches a QP's engines from outside a packet (what
 * rxe's tasks are: `rxe_run_task` and `rxe_sched_task`): a doorbell, a
 * timer, work deferred to the next turn of the event loop. It runs each
 * task guarded (a bug of ours costs that QP, not the daemon), lets the
 * packets it made go out before it returns, and hands out the per-turn
 * packet budget so one QP cannot hold the event loop.
 */

/** What the scheduler needs of a QP: whether it still exists, and which of its tasks wait for the next turn. */
export interface Schedulable {
  readonly destroyed: boolean;
  /** bits of Task scheduled and not yet run */
  scheduled: number;
}

/** The tasks of a QP. */
export const Task = {
  /** walk the send queue (rxe's req task) */
  REQUESTER: 1,
  /** go back to the oldest unacknowledged WQE and send again (a NAK, an RNR wait that ended) */
  RETRY: 2,
  /** the retransmit timer expired (rxe's retrans_timer → comp task) */
  TIMEOUT: 4,
  /** send the next burst of queued responses (a long READ's) */
  RESPOND: 8,
  /** the RNR NAK's wait is over: send again from the refused packet */
  RNR_RETRY: 16,
  /** a completion was lost to a full send CQ: the QP goes to ERR once the WQEs being retired are done */
  CQ_OVERRUN: 32,
} as const;
export type Task = (typeof Task)[keyof typeof Task];

export interface SchedulerHooks<Q extends Schedulable> {
  /** runs one task of one QP */
  run(qp: Q, task: Task): void;
  /** after a task: deliver the packets it made */
  settle(): void;
  /** a task threw: the QP goes to ERR (QP_FATAL), the error is reported */
  fatal(qp: Q, e: unknown): void;
  /** room for this many packets in this turn (at most `want`) */
  room(want: number): number;
}

export class Scheduler<Q extends Schedulable> {
  constructor(private readonly hooks: SchedulerHooks<Q>) {}

  /** Runs the task now (rxe_run_task): guarded, and its packets delivered before this returns. A destroyed QP is left alone. */
  run(qp: Q, task: Task): void {
    if (qp.destroyed) return;
    try {
      this.hooks.run(qp, task);
      this.hooks.settle();
    } catch (e) {
      this.hooks.fatal(qp, e);
    }
  }

  /** Runs the task on the next turn of the event loop (rxe_sched_task), once however often it is asked for meanwhile. */
  schedule(qp: Q, task: Task): void {
    if (qp.scheduled & task) return;
    qp.scheduled |= task;
    setImmediate(() => {
      qp.scheduled &= ~task;
      this.run(qp, task);
    });
  }

  /** Runs the task after `ms` milliseconds (a timer of the QP's); the caller keeps the handle to cancel it. */
  after(qp: Q, task: Task, ms: number): NodeJS.Timeout {
    return setTimeout(() => this.run(qp, task), ms);
  }

  /** How many packets a task may send in this turn: what the fabric's queue has room for, at most `want`. */
  budget(want: number): number {
    return this.hooks.room(want);
  }
}
