/**
 * Adaptive polling of send queues: for a short window after a QP was busy
 * (its requester ran, or a receive completed on it, the moment a reply is
 * usually posted), the daemon keeps its send queue marked awake and looks
 * at the producer index itself on every turn of the event loop, so the
 * client's postSend rings no doorbell (no socket write, no daemon wake-up).
 * When the window passes with nothing new, the queue is marked idle again
 * (and looked at once more, for WQEs written as it went idle): an idle
 * daemon does not poll at all.
 *
 * While it polls, the daemon yields its CPU on every turn (sched_yield):
 * on a machine with as many busy processes as cores, a client that is
 * runnable gets the core instead of waiting for the daemon's time slice.
 */
import { schedYield } from '../native/libc.js';

/** What the poller needs of a QP: its send ring's producer index and idle flag, and what the requester last saw. */
export interface Pollable {
  readonly destroyed: boolean;
  readonly sq: { produced(): number; wake(): boolean; idle(before: number): boolean };
  readonly req: { seen: number };
}

export class Linger<Qp extends Pollable> {
  private readonly held = new Set<Qp>();
  private until = 0;
  private ticking = false;

  /** `windowUs`: how long a quiet queue is still polled (0: never, every post rings). `kick` runs a QP's requester. */
  constructor(readonly windowUs: number, private readonly kick: (qp: Qp) => void) {}

  get enabled(): boolean {
    return this.windowUs > 0;
  }

  /** Keeps qp's send queue awake (postSend rings no doorbell) and polled until the window passes. */
  hold(qp: Qp): void {
    // a client that already claimed the wake-up has its doorbell on the way: polled as well, harmless
    qp.sq.wake();
    this.held.add(qp);
    this.until = performance.now() + this.windowUs / 1000;
    if (!this.ticking) {
      this.ticking = true;
      setImmediate(this.tick);
    }
  }

  private readonly tick = (): void => {
    for (const qp of this.held) {
      if (qp.destroyed) this.held.delete(qp);
      else if (qp.sq.produced() !== qp.req.seen) this.kick(qp);
    }
    if (this.held.size > 0 && performance.now() < this.until) {
      schedYield();
      setImmediate(this.tick);
      return;
    }
    this.ticking = false;
    const held = [...this.held];
    this.held.clear();
    for (const qp of held) {
      // the client rings from here on; what it wrote as we let go is ours to see
      if (!qp.destroyed && qp.sq.idle(qp.req.seen)) this.kick(qp);
    }
  };
}
