/**
 * perftest's text: the test-information block (ctx_print_test_info), the
 * address lines (ctx_print_pingpong_data), the result headers and rows
 * (print_report_bw / print_full_bw_report / print_report_lat), and the
 * --out_json file, character for character with perftest 4.5-0.17. The
 * arithmetic is perftest's too, with nanoseconds for its CPU cycles.
 */
import { RESULT_LINE, TESTS_STR, Verb, type Params } from './params.js';
import type { BwReport, PerfDest } from './exchange.js';

/** timestamps are in ns: "cycles" per second, and per microsecond */
export const CYCLES_PER_SEC = 1e9;
export const CYCLES_PER_USEC = 1e3;

export const RESULT_FMT = ' #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]';
export const RESULT_FMT_G = ' #bytes     #iterations    BW peak[Gb/sec]    BW average[Gb/sec]   MsgRate[Mpps]';
export const RESULT_FMT_LAT = ' #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]    t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec] ';
export const RESULT_FMT_LAT_DUR = ' #bytes        #iterations       t_avg[usec]    tps average';

/** printf's %f (toFixed rounds the exact binary value as glibc does; nan/inf spelled as C spells them) */
function f(x: number, prec: number): string {
  if (Number.isNaN(x)) return '-nan';
  if (!Number.isFinite(x)) return x > 0 ? 'inf' : '-inf';
  return x.toFixed(prec);
}
const left = (s: string | number | bigint, w: number) => String(s).padEnd(w);

/** C's "%#0Nx": zero-padded to N with the 0x inside the width; plain zeros for 0. */
export function altHex(n: number | bigint, w: number): string {
  if (n === 0 || n === 0n) return '0'.padStart(w, '0');
  return `0x${n.toString(16).padStart(w - 2, '0')}`;
}

export function bannerWaiting(): string {
  return '\n************************************\n* Waiting for client to connect... *\n************************************\n';
}

export interface InfoCtx {
  devName: string;
  /** the MTU in use, in bytes */
  mtuBytes: number;
  gidIndex: number;
  inlineSize: number;
  outReads: number;
}

/** A full report's frame (--output prints the one number alone): a RESULT_LINE, or nothing. */
export const resultLine = (p: Params): string => (p.output === 'FULL' ? RESULT_LINE : '');

export function testInfo(p: Params, c: InfoCtx): string {
  if (p.output !== 'FULL') return '';
  let title = `${TESTS_STR[p.verb]} `;
  if (p.verb === Verb.ATOMIC) title += `${p.atomicType} `;
  if (p.tst === 'BW') title += `${p.duplex ? 'Bidirectional ' : ''}${p.postList > 1 ? 'Post List ' : ''}BW `;
  else title += 'Latency ';
  const o: string[] = [RESULT_LINE, `                    ${title}Test\n`];
  if (p.useEvent) o.push(` Test with events. Using ${c.devName}_comp0\n`);
  o.push(` Dual-port       : OFF\t\tDevice         : ${c.devName}\n`);
  o.push(` Number of qps   : ${p.numQps}\t\tTransport type : IB\n`);
  o.push(` Connection type : ${p.conn}\t\tUsing SRQ      : OFF\n`);
  o.push(` PCIe relax order: ${p.disablePcir ? 'OFF' : 'ON'}\n`);
  o.push(' ibv_wr* API     : OFF\n');
  if (p.machine === 'CLIENT' || p.duplex) o.push(` TX depth        : ${p.txDepth}\n`);
  if (p.postList > 1) o.push(` Post List       : ${p.postList}\n`);
  if (p.verb === Verb.SEND && (p.machine === 'SERVER' || p.duplex)) o.push(` RX depth        : ${p.rxDepth}\n`);
  if (p.tst === 'BW') o.push(` CQ Moderation   : ${p.cqMod}\n`);
  o.push(` Mtu             : ${c.mtuBytes}[B]\n`);
  o.push(' Link type       : Ethernet\n');
  if (c.gidIndex !== -1) o.push(` GID index       : ${c.gidIndex}\n`);
  if (p.verb !== Verb.READ && p.verb !== Verb.ATOMIC) o.push(` Max inline data : ${c.inlineSize}[B]\n`);
  else o.push(` Outstand reads  : ${c.outReads}\n`);
  o.push(` rdma_cm QPs\t : ${p.rdmaCm ? 'ON' : 'OFF'}\n`);
  o.push(` Data ex. method : ${p.rdmaCm ? 'rdma_cm' : 'Ethernet'}\n`);
  if (p.rdmaCm && p.machine === 'SERVER') o.push(RESULT_LINE, ' Waiting for client rdma_cm QP to connect\n', ' Please run the same command with the IB/RoCE interface IP\n');
  o.push(RESULT_LINE);
  return o.join('');
}

/** ctx_print_pingpong_data: the address line and the GID line. */
export function addrLines(side: 'local' | 'remote', d: PerfDest, verb: Verb): string {
  let s = ` ${side} address: LID ${altHex(d.lid, 4)} QPN ${altHex(d.qpn, 6)} PSN ${altHex(d.psn, 6)}`;
  if (verb === Verb.READ) s += ` OUT ${altHex(d.outReads, 4)}`;
  if (verb === Verb.READ || verb === Verb.WRITE) s += ` RKey ${altHex(d.rkey >>> 0, 8)} VAddr ${altHex(d.vaddr, 16)}`;
  s += '\n';
  s += ` GID: ${Array.from(d.gid, (x) => String(x).padStart(2, '0')).join(':')}\n`;
  return s;
}

export function bwHeader(p: Params): string {
  if (p.output !== 'FULL') return '';
  return `${RESULT_LINE}${p.reportGbits ? RESULT_FMT_G : RESULT_FMT}\n`;
}

export function latHeader(p: Params): string {
  if (p.output !== 'FULL') return '';
  return `${RESULT_LINE}${p.testType === 'ITERATIONS' ? RESULT_FMT_LAT : RESULT_FMT_LAT_DUR}\n`;
}

/** What a BW run measured: per-WR post and completion times (ns), or, without peak, the first post and last completion. */
export interface BwSamples {
  size: number;
  /** total iterations over all QPs (in duration mode: those completed while sampling) */
  iters: number;
  tposted: Float64Array;
  tcompleted: Float64Array;
  noPeak: boolean;
  cqMod: number;
  postList: number;
}

/** print_report_bw's arithmetic. */
export function computeBw(p: Params, s: BwSamples): BwReport {
  const n = s.iters;
  // cycles_t is unsigned in perftest: a completion time never taken (0) makes this huge, not negative
  let optDelta = s.tcompleted[0]! >= s.tposted[0]! ? Math.floor(s.tcompleted[0]! - s.tposted[0]!) : Infinity;
  if (!s.noPeak) {
    for (let i = 0; i < n; i += s.postList) {
      const first = Math.ceil((i + 1) / s.cqMod) * s.cqMod - 1;
      for (let j = first; j < n; j += s.cqMod) {
        const t = Math.floor((s.tcompleted[j]! - s.tposted[i]!) / (j - i + 1));
        if (t < optDelta) optDelta = t;
      }
      if (n % s.cqMod) {
        const j = n - 1;
        const t = Math.floor((s.tcompleted[j]! - s.tposted[i]!) / (j - i + 1));
        if (t < optDelta) optDelta = t;
      }
    }
  }
  const formatFactor = p.reportGbits ? 125000000 : 0x100000;
  const loc = s.noPeak ? 0 : n - 1;
  const sum = s.tcompleted[loc]! - s.tposted[0]!;
  const bwAvg = (s.size * n * CYCLES_PER_SEC) / (sum * formatFactor);
  const msgRate = (n * CYCLES_PER_SEC) / (sum * 1000000);
  const peakUp = s.noPeak ? 0 : s.size * CYCLES_PER_SEC;
  const peakDown = optDelta * formatFactor;
  return { size: BigInt(s.size), iters: BigInt(n), bwPeak: peakUp / peakDown, bwAvg, msgRate };
}

/** print_full_bw_report's row (with another side's report added for bidirectional runs). */
export function bwRow(p: Params, mine: BwReport, rem: BwReport | null = null): string {
  let peak = mine.bwPeak;
  let avg = mine.bwAvg;
  let rate = mine.msgRate;
  if (rem) {
    peak += rem.bwPeak;
    avg += rem.bwAvg;
    rate += rem.msgRate;
  }
  if (p.output === 'bandwidth') return `${f(avg, 6)}\n`;
  if (p.output === 'message_rate') return `${f(rate, 6)}\n`;
  const incAccuracy = avg < 0.1 && p.reportGbits;
  if (incAccuracy) return ` ${left(mine.size, 7)}    ${mine.iters}           ${left(f(peak, 6), 7)}            ${left(f(avg, 6), 7)}            ${left(f(rate, 6), 7)}\n`;
  return ` ${left(mine.size, 7)}    ${left(mine.iters, 10)}       ${left(f(peak, 2), 7)}            ${left(f(avg, 2), 7)}\t\t   ${left(f(rate, 6), 7)}\n`;
}

/** The --out_json file of a BW report: perftest's own (not quite JSON) text. */
export function bwJson(p: Params, c: InfoCtx, mine: BwReport, rem: BwReport | null = null): string {
  const peak = mine.bwPeak + (rem?.bwPeak ?? 0);
  const avg = mine.bwAvg + (rem?.bwAvg ?? 0);
  const rate = mine.msgRate + (rem?.msgRate ?? 0);
  const inc = avg < 0.1 && p.reportGbits;
  const prec = inc ? 6 : 2;
  if (p.output === 'bandwidth') return `{\n${jsonTestInfo(p, c)}results: {\nbw_avg: ${f(avg, 6)},\n},\n}\n`;
  if (p.output === 'message_rate') return `{\n${jsonTestInfo(p, c)}results: {\nmsgRate_avg: ${f(rate, 6)},\n},\n}\n`;
  return `{\n${jsonTestInfo(p, c)}results: {\nMsgSize: ${mine.size},\nn_iterations: ${mine.iters},\nBW_peak: ${f(peak, prec)},\nBW_average: ${f(avg, prec)},\nMsgRate: ${f(rate, 6)},\n},\n}\n`;
}

function jsonTestInfo(p: Params, c: InfoCtx): string {
  let test = `${TESTS_STR[p.verb]}_`;
  if (p.verb === Verb.ATOMIC) test += `${p.atomicType}_`;
  if (p.tst === 'BW') test += `${p.duplex ? 'Bidirectional_' : ''}${p.postList > 1 ? 'Post_List_' : ''}BW_`;
  else test += 'Latency_';
  const o = ['test_info: {\n', `test: ${test}Test,\n`];
  if (p.useEvent) o.push(`Test with events: Using_${c.devName}_comp0,\n`);
  o.push(`Dual_port: OFF,\nDevice: "${c.devName}",\n`, `Number_of_qps: ${p.numQps},\nTransport_type: IB,\n`, `Connection_type: ${p.conn},\nUsing_SRQ: OFF,\n`);
  o.push(`PCIe_relax_order: ${p.disablePcir ? 'OFF' : 'ON'},\n`, 'ibv_wr_API: OFF,\n');
  if (p.machine === 'CLIENT' || p.duplex) o.push(`TX_depth : ${p.txDepth},\n`);
  if (p.postList > 1) o.push(`Post_List: ${p.postList},\n`);
  if (p.verb === Verb.SEND && (p.machine === 'SERVER' || p.duplex)) o.push(`RX_depth: ${p.rxDepth},\n`);
  if (p.tst === 'BW') o.push(`CQ_Moderation: ${p.cqMod},\n`);
  o.push(`Mtu: ${c.mtuBytes},\n`, 'Link_type: Ethernet,\n');
  if (c.gidIndex !== -1) o.push(`GID_index: ${c.gidIndex},\n`);
  if (p.verb !== Verb.READ && p.verb !== Verb.ATOMIC) o.push(`Max_inline_data: ${c.inlineSize},\n`);
  else o.push(`Outstand_reads: ${c.outReads},\n`);
  o.push(`rdma_cm_QPs: ${p.rdmaCm ? 'ON' : 'OFF'},\n`, `Data_ex_method: ${p.rdmaCm ? 'rdma_cm' : 'Ethernet'},\n`, '},\n');
  return o.join('');
}

export interface LatResult {
  size: number;
  iters: number;
  tMin: number;
  tMax: number;
  tTypical: number;
  tAvg: number;
  tStdev: number;
  p99: number;
  p999: number;
  /** the -U / -H listings, if asked for */
  listing: string;
}

/** print_report_lat's arithmetic: tposted[] are the ns at which each iteration began. */
export function computeLat(p: Params, size: number, tposted: Float64Array, iters: number): LatResult {
  const rtt = p.verb === Verb.READ || p.verb === Verb.ATOMIC ? 1 : 2;
  const toUnits = p.cycles ? 1 : CYCLES_PER_USEC;
  const q = toUnits * rtt;
  let measure = iters - 1;
  const delta = new Float64Array(measure);
  for (let i = 0; i < measure; i++) delta[i] = Math.round(tposted[i + 1]! - tposted[i]!);
  const units = p.cycles ? 'cycles' : 'usec';
  let listing = '';
  const list = () => {
    let s = `#, ${units}\n`;
    for (let i = 0; i < measure; i++) s += `${i + 1}, ${g(delta[i]! / q)}\n`;
    return s;
  };
  if (p.unsorted) listing += list();
  delta.sort();
  measure -= 2;
  const median = (measure - 1) % 2 ? Math.floor((delta[Math.floor(measure / 2)]! + delta[Math.floor(measure / 2) - 1]!) / 2) : delta[Math.floor(measure / 2)]!;
  let sum = 0;
  for (let i = 0; i < measure; i++) sum += delta[i]! / q;
  const avg = sum / measure;
  let stdevSum = 0;
  for (let i = 0; i < measure; i++) {
    const v = Math.trunc(avg - delta[i]! / q); // perftest squares an int here
    stdevSum += Math.trunc(v * v);
  }
  if (p.histogram) listing += list();
  if (p.unsorted || p.histogram) listing += `${latHeader(p)}`;
  const i99 = Math.ceil(measure * 0.99);
  const i999 = Math.ceil(measure * 0.999);
  return {
    size, iters, tMin: delta[0]! / q, tMax: delta[measure]! / q, tTypical: median / q, tAvg: avg, tStdev: Math.sqrt(stdevSum / measure),
    p99: delta[i99]! / q, p999: delta[i999]! / q, listing,
  };
}

/** C's %g, enough for the listings. */
function g(x: number): string {
  if (x === 0) return '0';
  const e = Math.floor(Math.log10(Math.abs(x)));
  if (e < -4 || e >= 6) return x.toExponential(5).replace(/\.?0+e/, 'e').replace(/e([+-])(\d)$/, 'e$10$2');
  return String(Number(x.toPrecision(6)));
}

export function latRow(p: Params, r: LatResult): string {
  if (p.output === 'latency') return `${f(r.tAvg, 6)}\n`;
  return ` ${left(r.size, 7)} ${r.iters}          ${left(f(r.tMin, 2), 7)}        ${left(f(r.tMax, 2), 7)}      ${left(f(r.tTypical, 2), 7)}  \t       ${left(f(r.tAvg, 2), 7)}     \t${left(f(r.tStdev, 2), 7)}\t\t${left(f(r.p99, 2), 7)} \t\t${left(f(r.p999, 2), 7)}\n`;
}

export function latJson(p: Params, c: InfoCtx, r: LatResult): string {
  if (p.output === 'latency') return `{\n${jsonTestInfo(p, c)}results: {\navg_lat: ${f(r.tAvg, 6)},\n},\n}\n`;
  return `{\n${jsonTestInfo(p, c)}results: {\nMsgSize: ${r.size},\nn_iterations: ${r.iters},\nt_min: ${f(r.tMin, 2)},\nt_max: ${f(r.tMax, 2)},\nt_typical: ${f(r.tTypical, 2)},\nt_avg: ${f(r.tAvg, 2)},\nt_stdev: ${f(r.tStdev, 2)},\npercentile_99: ${f(r.p99, 2)},\npercentile_99.9: ${f(r.p999, 2)},\n},\n}\n`;
}

/** print_report_lat_duration: the sampled span and how many round trips fell in it. */
export function latDuration(p: Params, size: number, iters: number, spanNs: number): { row: string; json: (c: InfoCtx) => string; tAvg: number } {
  const rtt = p.verb === Verb.READ || p.verb === Verb.ATOMIC ? 1 : 2;
  const latency = spanNs / CYCLES_PER_USEC / rtt / iters;
  const tps = iters / (spanNs / (CYCLES_PER_USEC * 1000000));
  // perftest's --output=latency JSON line has no comma here, unlike its other results
  if (p.output === 'latency') return { row: `${f(latency, 6)}\n`, json: (c) => `{\n${jsonTestInfo(p, c)}results: {\nt_avg: ${f(latency, 6)}\n},\n}\n`, tAvg: latency };
  return {
    row: ` ${left(size, 7)}       ${iters}            ${left(f(latency, 2), 7)}        ${left(f(tps, 2), 7)}\n`,
    json: (c) => `{\n${jsonTestInfo(p, c)}results: {\nMsgSize: ${size},\nn_iterations: ${iters},\nt_avg: ${f(latency, 2)},\ntps_average: ${f(tps, 2)},\n},\n}\n`,
    tAvg: latency,
  };
}
