/**
 * Adaptive polling of send queues: for a short window after a QP was busy
 * (its requester ran, or a receive completed on it, the moment a reply is
 * usually posted), the daemon keeps its send queue marked awake and looks
 * at the producer index itself on every turn of the event loop, so the
 * client's postSend rings no doorbell (no socket write, no daemon wake-up).
 * When a queue's window passes with nothing new it is marked idle again
 * (and looked at once more, for WQEs written as it went idle); an idle
 * daemon does not poll at all.
 *
 * Every polling turn yields the CPU (sched_yield): with as many busy
 * processes as cores, a process that is runnable (a client about to post,
 * the peer a READ waits on) gets the core instead of waiting out the
 * daemon's time slice. Yielding only on turns without work was tried: with
 * a Linux peer in a VM on the same 2 cores, perftest's ib_read_bw -a then
 * outlasted its 150 s (three runs) against 41 s with every turn yielding.
 */
import { schedYield } from '../native/libc.js';
import { spinGate } from '../native/spin-gate.js';

/** What the poller needs of a QP: its send ring's producer index and idle flag, and what the requester last saw. */
export interface Pollable {
  readonly destroyed: boolean;
  readonly sq: { produced(): number; wake(): boolean; idle(before: number): boolean };
  readonly req: { seen: number };
}

/** A hold whose window the next tick starts. */
const UNDATED = -1;

export class Linger<Qp extends Pollable> {
  /** the QPs polled, and until when (performance.now() ms; UNDATED: held since the last tick) */
  private readonly held = new Map<Qp, number>();
  private ticking = false;

  /** `windowUs`: how long a quiet queue is still polled (0: never, every post rings). `kick` runs a QP's requester. */
  constructor(readonly windowUs: number, private readonly kick: (qp: Qp) => void) {}

  get enabled(): boolean {
    return this.windowUs > 0;
  }

  /**
   * Keeps qp's send queue awake (postSend rings no doorbell) and polled until its window passes. Called for
   * every message a busy QP moves, so it stays cheap: the window is dated by the next tick's clock (it can
   * only come out a tick longer), and a queue already held is not woken again (that is a compare-and-swap
   * on the cache line the client reads on every post). False if it is not held: the client rings (a queue
   * that always rings, or no core to spin on: the spin gate, src/native/spin-gate.ts).
   */
  hold(qp: Qp): boolean {
    // no core to spin on: the queue goes idle and its client rings, as with polling off (asked again here, or a
    // daemon that once stopped would never poll again: no tick runs to read the run queue)
    if (!spinGate.open && !spinGate.mayPoll(performance.now())) return false;
    const until = this.held.get(qp);
    // a client that already claimed the wake-up has its doorbell on the way: polled as well, harmless
    if (until === undefined) qp.sq.wake();
    if (until !== UNDATED) this.held.set(qp, UNDATED);
    if (!this.ticking) {
      this.ticking = true;
      spinGate.enter();
      setImmediate(this.tick);
    }
    return true;
  }

  private readonly tick = (): void => {
    const now = performance.now();
    if (!spinGate.mayPoll(now)) return this.letGo();
    for (const [qp, until] of this.held) {
      if (qp.destroyed) this.held.delete(qp);
      else if (qp.sq.produced() !== qp.req.seen) this.kick(qp);
      else if (until === UNDATED) this.held.set(qp, now + this.windowUs / 1000);
      else if (now >= until) {
        this.held.delete(qp);
        // the client rings from here on; what it wrote as we let go is ours to see
        if (qp.sq.idle(qp.req.seen)) this.kick(qp);
      }
    }
    if (this.held.size === 0) {
      this.ticking = false;
      spinGate.leave();
      return;
    }
    schedYield();
    setImmediate(this.tick);
  };

  /** Stops polling every held queue: their clients ring from here on (what they wrote as we let go is kicked). */
  private letGo(): void {
    // stopped first: a kick below runs the requester, whose hold() must find no tick under way
    this.ticking = false;
    spinGate.leave();
    const held = [...this.held.keys()];
    this.held.clear();
    for (const qp of held) if (!qp.destroyed && qp.sq.idle(qp.req.seen)) this.kick(qp);
  }
}
