/** Time and progress in perftest's loops: the cycle counter, the duration-mode clock, and the turns the event loop is given. */
import { schedYield } from '../../native/libc.js';
import { type CompletionChannel, type CompletionQueue } from '../../verbs/index.js';
import { Verb, type Params } from './params.js';
import { fail, notifyCqs, now, type Session } from './session.js';

/**
 * Gives the event loop a turn every `every` calls (sockets, the TTY,
 * completion channels). A loop that still waits for its peer a second after
 * the peer closed the out-of-band connection stops with an error: perftest
 * (and rxe, where retry_cnt 7 retries forever) would wait for ever.
 */
export function spinner(s: Session, every = 1024): () => Promise<void> | null {
  let n = 0;
  return () => {
    // the HCA is the daemons, on the same cores as the spinning tools: a spin that does not yield on every
    // empty poll starves the HCA it waits for
    schedYield();
    if (++n % every !== 0) return null;
    checkPeer(s);
    return new Promise<void>((r) => setImmediate(r));
  };
}

function checkPeer(s: Session): void {
  const gone = s.oob.peerGoneAt;
  if (gone && Date.now() - gone > 1000 && s.p.testType === 'ITERATIONS') {
    fail(' The peer closed the out-of-band connection in the middle of the test (did it exit?)\n');
  }
}

/**
 * How long a bandwidth loop without -e polls in vain before it sleeps on its CQs' channel, in ns. Spin-then-block:
 * a shorter spin sleeps through the short waits of small messages, paying an event and a scheduling round each
 * time; a wait for a signaled completion of large messages (milliseconds) is still slept through for the most part.
 */
export const NAP_AFTER_NS = 1e6;
/** The longest nap: then the loop looks at its clock (-D) and at its peer, and naps again if nothing came. */
const NAP_MS = 50;

/**
 * How a bandwidth loop without -e waits once nothing is left to post: it polls, as perftest does, but after
 * NAP_AFTER_NS of empty polls it arms its CQs, polls once more, and sleeps on a completion channel of its
 * own until the next completion. perftest spins through the whole run because a NIC does not need the host's
 * CPU; here the HCA is two daemons on the same cores, and a tool that spins takes the CPU they need to move
 * its data (ib_write_bw 64 KiB across the wire on this 2-core machine: the client tool spent 1.0 of every
 * 1.1 CPU-seconds of the run in sched_yield).
 */
export class Napper {
  /** when the polls began to find nothing (0: the last one found something) */
  private since = 0;
  private armed = false;
  /** the channel read that is still waiting (a nap that timed out leaves it for the next) */
  private pending: Promise<CompletionQueue | null> | null = null;
  constructor(private readonly s: Session, private readonly until = Infinity) {}

  /** the loop posted or reaped something */
  busy(): void {
    this.since = 0;
  }

  /**
   * The loop found nothing to do. Returns null to go on polling, or a promise to await: the CQs were just
   * armed (the loop polls once more, since a completion that came before the arming raises no event), or
   * a nap until the next completion event or NAP_MS.
   */
  idle(): Promise<void> | null {
    const ch = this.s.res.nap;
    if (!ch) return null;
    const t = now();
    if (!this.since) this.since = t;
    if (t - this.since < NAP_AFTER_NS) return null;
    if (!this.armed) {
      notifyCqs(this.s.res);
      this.armed = true;
      return Promise.resolve();
    }
    return this.nap(ch);
  }

  private async nap(ch: CompletionChannel): Promise<void> {
    this.pending ??= ch.getCqEvent();
    const ms = Math.max(0, Math.min(NAP_MS, (this.until - now()) / 1e6));
    let timer: NodeJS.Timeout | undefined;
    const cq = await Promise.race([this.pending, new Promise<'late'>((r) => (timer = setTimeout(r, ms, 'late')))]);
    clearTimeout(timer);
    if (cq === 'late') {
      checkPeer(this.s);
      return;
    }
    this.pending = null;
    cq?.ackCqEvents(1);
    this.armed = false;
    this.since = 0;
  }
}

/** -D: perftest's alarm states (warm-up margin, sample, cool-down margin), by clock. */
export class Clock {
  readonly t0 = now();
  readonly sampleFrom: number;
  readonly sampleTo: number;
  readonly end: number;
  constructor(p: Params) {
    this.sampleFrom = this.t0 + p.margin * 1e9;
    this.sampleTo = this.t0 + (p.duration - p.margin) * 1e9;
    this.end = this.t0 + p.duration * 1e9;
  }
}

/** Live progress for -D runs on a terminal: one line, rewritten every second. */
export class Progress {
  private next = 0;
  private lastT = 0;
  private lastN = 0;
  readonly on: boolean;
  constructor(private p: Params, private size: number, private clock: Clock | null) {
    this.on = !!clock && !!process.stderr.isTTY;
    this.lastT = clock?.t0 ?? 0;
    this.next = this.lastT + 1e9;
  }
  tick(t: number, n: number): void {
    if (!this.on || t < this.next) return;
    const dt = (t - this.lastT) / 1e9;
    const rate = (n - this.lastN) / dt;
    const el = (t - this.clock!.t0) / 1e9;
    const phase = t < this.clock!.sampleFrom ? 'warm-up' : t < this.clock!.sampleTo ? 'sampling' : 'cool-down';
    const what = this.p.tst === 'BW'
      ? `${((rate * this.size) / (this.p.reportGbits ? 125000000 : 0x100000)).toFixed(2)} ${this.p.reportGbits ? 'Gb/sec' : 'MB/sec'}  ${(rate / 1e6).toFixed(6)} Mpps`
      : `${rate.toFixed(0)} iters/sec  ${(1e6 / rate / (this.p.verb === Verb.READ || this.p.verb === Verb.ATOMIC ? 1 : 2)).toFixed(2)} usec`;
    process.stderr.write(`\r\x1b[K ${el.toFixed(0)}/${this.p.duration} s  ${phase}  ${what}`);
    this.lastT = t;
    this.lastN = n;
    this.next = t + 1e9;
  }
  done(): void {
    if (this.on) process.stderr.write('\r\x1b[K');
  }
}
