/** The measurement loops, as perftest's run_iter_bw, run_iter_bw_server, run_iter_lat_write, run_iter_lat_send and run_iter_lat. */
import { SendFlags, WcStatus, WorkCompletion, type CompletionQueue } from '../../verbs/index.js';
import { Verb, type Params } from './params.js';
import { computeLat, type BwSamples, type LatResult } from './report.js';
import { CTX_POLL_BATCH, fail, now, type Session } from './session.js';
import { spinner, Clock, Napper, Progress } from './clock.js';
import { messageOf } from '../../common/errors.js';

/** What a latency run measured: every round trip, or with -D how many fell between the margins and over what span. */
export type LatOutcome = { lat: LatResult } | { iters: number; spanNs: number };

/**
 * What the latency loops share: per-iteration start times, or with -D the
 * clock (perftest's alarm states) and the round trips that fell between the
 * margins, and the live progress line.
 */
export class LatRun {
  readonly clock: Clock | null;
  readonly iters: number;
  readonly tposted: Float64Array;
  private readonly progress: Progress;
  private sampled = 0;
  private tFrom = 0;
  private tTo = 0;
  constructor(private p: Params, private size: number) {
    this.clock = p.testType === 'DURATION' ? new Clock(p) : null;
    this.progress = new Progress(p, size, this.clock);
    this.iters = this.clock ? Infinity : p.iters;
    this.tposted = new Float64Array(this.clock ? 1 : p.iters);
  }
  /** false once a -D run's time is up */
  running(): boolean {
    const c = this.clock;
    if (!c) return true;
    const t = now();
    if (!this.tFrom && t >= c.sampleFrom) this.tFrom = t;
    if (!this.tTo && t >= c.sampleTo) this.tTo = t;
    if (t >= c.end) return false;
    this.progress.tick(t, this.sampled);
    return true;
  }
  /** iteration i begins */
  post(i: number): void {
    if (!this.clock) this.tposted[i] = now();
  }
  /** a round trip completed */
  count(): void {
    if (this.tFrom && !this.tTo) this.sampled++;
  }
  get until(): number {
    return this.clock ? this.clock.end : Infinity;
  }
  finish(): LatOutcome {
    this.progress.done();
    if (this.clock) return { iters: this.sampled, spanNs: (this.tTo || now()) - this.tFrom };
    return { lat: computeLat(this.p, this.size, this.tposted, this.p.iters) };
  }
}

/**
 * Polls until `cq` yields a completion: spinning (with turns for the event
 * loop), or with -e sleeping on the completion channel between polls. An
 * event may belong to the other CQ: whichever CQ it names is re-armed, and
 * polling first means nothing that already arrived waits for an event.
 */
export async function pollNext(s: Session, cq: CompletionQueue, wcs: WorkCompletion[], spin: () => Promise<void> | null, until = Infinity): Promise<number> {
  for (;;) {
    const ne = cq.pollCq(wcs);
    if (ne) return ne;
    if (s.res.chan) await waitEvent(s);
    else {
      const y = spin();
      if (y) {
        await y;
        if (until !== Infinity && now() >= until) return 0;
      }
    }
  }
}

export async function waitEvent(s: Session): Promise<void> {
  const cq = await s.res.chan!.getCqEvent();
  if (!cq) fail(" Failed to get cq_event\n");
  cq!.ackCqEvents(1);
  cq!.reqNotifyCq();
}

export function wcError(wc: WorkCompletion, side: 'client' | 'server', counts: string): never {
  return fail(` Completion with error at ${side}\n Failed status ${wc.status}: wr_id ${Number(wc.wrId)} syndrom 0x${wc.vendorErr.toString(16)}\n${counts}\n`);
}

/**
 * run_iter_bw (senders, including both sides of -b) and run_iter_bw_server
 * (a SEND test's receiver): returns what print_report_bw needs.
 */
export async function runBw(s: Session, size: number, receiverOnly: boolean): Promise<BwSamples> {
  const { p, res } = s;
  const nq = res.qps.length;
  const durationMode = p.testType === 'DURATION';
  const clock = durationMode ? new Clock(p) : null;
  const progress = new Progress(p, size, clock);
  const spin = spinner(s);
  const napper = new Napper(s, clock ? clock.end : Infinity);
  const wcs = Array.from({ length: CTX_POLL_BATCH }, () => new WorkCompletion());
  const recvs = p.verb === Verb.SEND && (receiverOnly || p.duplex);
  const iters = p.iters;
  const tot = iters * nq;
  const peak = !p.noPeak && !receiverOnly;
  const tposted = new Float64Array(peak ? Math.max(1, tot) : 1);
  const tcompleted = new Float64Array(peak ? Math.max(1, tot) : 1);
  const scnt = new Array<number>(nq).fill(0);
  const ccnt = new Array<number>(nq).fill(0);
  const posted = new Array<number>(nq).fill(p.rxDepth);
  let totscnt = 0;
  let totccnt = 0;
  let rcnt = 0;
  let sampled = 0;
  let firstRx = true;
  let sampling = !durationMode;
  const lists = s.sendWrs;
  const rwrs = s.recvWrs;
  if (!peak && !receiverOnly) tposted[0] = now();
  const sendDone = () => receiverOnly || (totscnt >= tot && totccnt >= tot);
  const recvDone = () => !recvs || rcnt >= tot;
  for (;;) {
    let t = 0;
    if (clock) {
      t = now();
      if (!sampling && t >= clock.sampleFrom && t < clock.sampleTo) {
        sampling = true;
        tposted[0] = t;
      } else if (sampling && t >= clock.sampleTo && t < clock.end && tcompleted[0] === 0) {
        tcompleted[0] = t;
        sampling = false;
      }
      if (t >= clock.end) {
        if (tcompleted[0] === 0) tcompleted[0] = t;
        break;
      }
      progress.tick(t, sampled);
    } else if (sendDone() && recvDone()) break;
    let idle = true;
    if (!receiverOnly) {
      for (let q = 0; q < nq; q++) {
        const list = lists[q]!;
        while ((durationMode || scnt[q]! < iters) && scnt[q]! - ccnt[q]! + p.postList <= p.txDepth) {
          if (p.postList === 1) {
            const k = scnt[q]!;
            const sig = k % p.cqMod === p.cqMod - 1 || (!durationMode && k === iters - 1);
            list[0]!.sendFlags = (list[0]!.sendFlags! & ~SendFlags.SIGNALED) | (sig ? SendFlags.SIGNALED : 0);
          }
          if (peak) tposted[totscnt] = now();
          try {
            res.qps[q]!.postSend(p.postList === 1 ? list[0]! : list);
          } catch (e) {
            fail(`Couldn't post send: qp ${q} scnt=${scnt[q]} (${messageOf(e)})\n Failed to complete run_iter_bw function successfully\n`);
          }
          scnt[q]! += p.postList;
          totscnt += p.postList;
          idle = false;
        }
      }
      if (totccnt < tot || (durationMode && totccnt < totscnt)) {
        const ne = res.sendCq.pollCq(wcs);
        for (let i = 0; i < ne; i++) {
          const wc = wcs[i]!;
          if (wc.status !== WcStatus.SUCCESS) wcError(wc, 'client', `scnt=${totscnt}, ccnt=${totccnt}`);
          const q = Number(wc.wrId);
          ccnt[q]! += p.cqMod;
          totccnt += p.cqMod;
          if (peak) tcompleted[totccnt > tot ? tot - 1 : totccnt - 1] = now();
          if (sampling && durationMode) sampled += p.cqMod;
        }
        if (ne > 0) idle = false;
      }
    }
    if (recvs && (durationMode || rcnt < tot)) {
      const ne = res.recvCq.pollCq(wcs);
      for (let i = 0; i < ne; i++) {
        const wc = wcs[i]!;
        if (wc.status !== WcStatus.SUCCESS) wcError(wc, 'server', ` rcnt=${rcnt}`);
        if (firstRx && receiverOnly && !durationMode) {
          tposted[0] = now();
          firstRx = false;
        }
        const q = Number(wc.wrId);
        rcnt++;
        if (receiverOnly && sampling && durationMode) sampled++;
        if (durationMode || posted[q]! + 1 <= iters) {
          res.qps[q]!.postRecv(rwrs[q]!);
          posted[q]!++;
        }
      }
      if (ne > 0) idle = false;
    }
    if (idle) {
      // nothing to post and nothing completed: sleep on the channel (-e), or poll on (napping when that finds nothing)
      // (a -D run is never done by its counts: they pass -n's default long before its clock runs out)
      const ending = !durationMode && sendDone() && recvDone();
      if (res.chan && !ending) await waitEvent(s);
      else {
        const y = (!ending && napper.idle()) || spin();
        if (y) await y;
      }
    } else napper.busy();
  }
  progress.done();
  if (!durationMode && !peak) tcompleted[0] = now();
  return { size, iters: durationMode ? sampled : tot, tposted, tcompleted, noPeak: !peak, cqMod: p.cqMod, postList: p.postList };
}

/** run_iter_lat_write: each side writes its counter into the last byte of the peer's buffer and spins on its own. */
export async function runLatWrite(s: Session, size: number): Promise<LatOutcome> {
  const { p, res } = s;
  const wr = s.sendWrs[0]![0]!;
  wr.sgList![0]!.length = size;
  wr.sendFlags = SendFlags.SIGNALED | (size <= p.inlineSize ? SendFlags.INLINE : 0);
  const buf = new Uint8Array(res.mr.buf.buffer, res.mr.buf.byteOffset, res.mr.buf.byteLength);
  const postOff = size - 1;
  const pollOff = res.recvBase + size - 1;
  const wcs = [new WorkCompletion()];
  const r = new LatRun(p, size);
  const iters = r.iters;
  const spin = spinner(s, 4096);
  let scnt = 0;
  let ccnt = 0;
  let rcnt = 0;
  while ((scnt < iters || ccnt < iters || rcnt < iters) && r.running()) {
    if (rcnt < iters && !(scnt < 1 && p.machine === 'SERVER')) {
      rcnt++;
      const want = rcnt & 0xff;
      // Atomics.load: a plain read in a loop with no other side effect may be hoisted by the JIT
      while (Atomics.load(buf, pollOff) !== want) {
        const y = spin();
        if (y) await y;
        if (r.clock && now() >= r.until) break;
      }
    }
    if (scnt < iters) {
      r.post(scnt);
      buf[postOff] = ++scnt & 0xff;
      res.qps[0]!.postSend(wr);
    }
    if (ccnt < iters) {
      const ne = await pollNext(s, res.sendCq, wcs, spin, r.until);
      if (!ne) continue; // -D: the time is up
      if (wcs[0]!.status !== WcStatus.SUCCESS) wcError(wcs[0]!, 'client', `scnt=${scnt}, ccnt=${ccnt}`);
      ccnt += ne;
      r.count();
    }
  }
  return r.finish();
}

/** run_iter_lat: post, wait for the completion, repeat (READ and atomics: the client alone). */
export async function runLat(s: Session, size: number): Promise<LatOutcome> {
  const { p, res } = s;
  const wr = s.sendWrs[0]![0]!;
  wr.sgList![0]!.length = size;
  wr.sendFlags = SendFlags.SIGNALED;
  const wcs = [new WorkCompletion()];
  const r = new LatRun(p, size);
  const spin = spinner(s, 4096);
  for (let scnt = 0; scnt < r.iters && r.running(); ) {
    r.post(scnt++);
    res.qps[0]!.postSend(wr);
    const ne = await pollNext(s, res.sendCq, wcs, spin, r.until);
    if (ne > 0 && wcs[0]!.status !== WcStatus.SUCCESS) wcError(wcs[0]!, 'client', `scnt=${scnt}, ccnt=${scnt}`);
    if (ne > 0) r.count();
  }
  return r.finish();
}

/** run_iter_lat_send: the server answers each SEND with one; the client sends first. */
export async function runLatSend(s: Session, size: number): Promise<LatOutcome> {
  const { p, res } = s;
  const wr = s.sendWrs[0]![0]!;
  const rwr = s.recvWrs[0]!;
  wr.sgList![0]!.length = size;
  wr.sendFlags = size <= p.inlineSize ? SendFlags.INLINE : 0;
  const wcs = [new WorkCompletion()];
  const swc = [new WorkCompletion()];
  const r = new LatRun(p, size);
  const iters = r.iters;
  const spin = spinner(s, 4096);
  let scnt = 0;
  let rcnt = 0;
  while ((scnt < iters || rcnt < iters) && r.running()) {
    if (rcnt < iters && !(scnt < 1 && p.machine === 'CLIENT')) {
      const ne = await pollNext(s, res.recvCq, wcs, spin, r.until);
      if (ne > 0) {
        if (wcs[0]!.status !== WcStatus.SUCCESS) wcError(wcs[0]!, 'server', ` rcnt=${rcnt}`);
        rcnt++;
        r.count();
        if (rcnt + p.rxDepth <= iters) res.qps[0]!.postRecv(rwr);
      }
    }
    if (scnt < iters) {
      r.post(scnt);
      scnt++;
      const signal = scnt % p.cqMod === 0 || scnt === iters;
      wr.sendFlags = (wr.sendFlags! & ~SendFlags.SIGNALED) | (signal ? SendFlags.SIGNALED : 0);
      res.qps[0]!.postSend(wr);
      if (signal) {
        if (!(await pollNext(s, res.sendCq, swc, spin, r.until))) continue;
        if (swc[0]!.status !== WcStatus.SUCCESS) wcError(swc[0]!, 'client', `scnt=${scnt}, ccnt=${scnt}`);
      }
    }
  }
  return r.finish();
}
