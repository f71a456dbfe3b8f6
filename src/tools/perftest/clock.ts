/** Time and progress in perftest's loops: the cycle counter, the duration-mode clock, and the turns the event loop is given. */
import { schedYield } from '../../native/libc.js';
import { Verb, type Params } from './params.js';
import { fail, now, type Session } from './session.js';

/**
 * Gives the event loop a turn every `every` calls (sockets, the TTY,
 * completion channels). A loop that still waits for its peer a second after
 * the peer closed the out-of-band connection stops with an error: perftest
 * (and rxe, where retry_cnt 7 retries forever) would wait for ever.
 */
export function spinner(s: Session, every = 1024): () => Promise<void> | null {
  let n = 0;
  return () => {
    // on 2 cores, two spinning tools and the daemons: a spin that never yields starves the HCA itself
    // (ib_send_bw 4 KiB: 0.05 -> 0.15-0.20 Mpps, ib_send_lat p99 630 -> 45 us on this machine); yielding on
    // every empty poll rather than every 64th: ib_send_bw 4 KiB 271-282 -> 308-320 MB/s, ib_send_lat the same
    schedYield();
    if (++n % every !== 0) return null;
    const gone = s.oob.peerGoneAt;
    if (gone && Date.now() - gone > 1000 && s.p.testType === 'ITERATIONS') {
      fail(' The peer closed the out-of-band connection in the middle of the test (did it exit?)\n');
    }
    return new Promise<void>((r) => setImmediate(r));
  };
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
