/**
 * What perftest does not do: write an -a sweep as data (CSV, JSON) and as an
 * SVG chart of bandwidth or latency against message size, because people
 * read curves, not columns. The SVG is self-contained (no script, no fonts
 * beyond the generic family) and log2-scaled on the size axis.
 */
import { writeFileSync } from 'node:fs';
import { TESTS_STR, Verb, type Params } from './params.js';
import { messageOf } from '../../common/errors.js';

export type SweepRow =
  | { size: number; bwPeak: number; bwAvg: number; msgRate: number }
  | { size: number; tMin: number; tTypical: number; tAvg: number; p99: number; tMax: number };

export interface Series {
  name: string;
  color: string;
  points: [number, number][];
}

const isBw = (r: SweepRow): r is Extract<SweepRow, { bwAvg: number }> => 'bwAvg' in r;

export function title(p: Params): string {
  return `${p.tool}: ${TESTS_STR[p.verb]}${p.verb === Verb.ATOMIC ? ` ${p.atomicType}` : ''} ${p.tst === 'BW' ? (p.duplex ? 'bidirectional bandwidth' : 'bandwidth') : 'latency'}, ${p.conn}, ${p.numQps} QP${p.numQps > 1 ? 's' : ''}`;
}

export function toCsv(p: Params, rows: SweepRow[]): string {
  if (rows.length && isBw(rows[0]!)) {
    const unit = p.reportGbits ? 'Gb/sec' : 'MB/sec';
    return [`bytes,bw_peak_${unit.replace('/', '_per_')},bw_avg_${unit.replace('/', '_per_')},msg_rate_mpps`, ...rows.map((r) => {
      const b = r as Extract<SweepRow, { bwAvg: number }>;
      return `${b.size},${b.bwPeak.toFixed(2)},${b.bwAvg.toFixed(2)},${b.msgRate.toFixed(6)}`;
    })].join('\n') + '\n';
  }
  return ['bytes,t_min_usec,t_typical_usec,t_avg_usec,p99_usec,t_max_usec', ...rows.map((r) => {
    const l = r as Extract<SweepRow, { tAvg: number }>;
    return `${l.size},${l.tMin.toFixed(2)},${l.tTypical.toFixed(2)},${l.tAvg.toFixed(2)},${l.p99.toFixed(2)},${l.tMax.toFixed(2)}`;
  })].join('\n') + '\n';
}

export function toJson(p: Params, rows: SweepRow[]): string {
  const units = p.tst === 'BW' ? { bw: p.reportGbits ? 'Gb/sec' : 'MB/sec', msgRate: 'Mpps' } : { latency: p.cycles ? 'cycles' : 'usec' };
  return `${JSON.stringify({ test: title(p), tool: p.tool, connection: p.conn, qps: p.numQps, iterations: p.iters, units, results: rows }, null, 2)}\n`;
}

/** The series a chart shows for these rows. */
export function series(rows: SweepRow[]): { yLabel: string; series: Series[] } {
  if (rows.length && isBw(rows[0]!)) {
    const b = rows as Extract<SweepRow, { bwAvg: number }>[];
    return {
      yLabel: 'bandwidth',
      series: [
        { name: 'BW average', color: '#1f77b4', points: b.map((r) => [r.size, r.bwAvg]) },
        { name: 'BW peak', color: '#ff7f0e', points: b.map((r) => [r.size, r.bwPeak]) },
      ],
    };
  }
  const l = rows as Extract<SweepRow, { tAvg: number }>[];
  return {
    yLabel: 'latency',
    series: [
      { name: 't_typical', color: '#1f77b4', points: l.map((r) => [r.size, r.tTypical]) },
      { name: 't_avg', color: '#2ca02c', points: l.map((r) => [r.size, r.tAvg]) },
      { name: '99% percentile', color: '#d62728', points: l.map((r) => [r.size, r.p99]) },
    ],
  };
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

function sizeLabel(n: number): string {
  if (n >= 1 << 20 && n % (1 << 20) === 0) return `${n / (1 << 20)}M`;
  if (n >= 1024 && n % 1024 === 0) return `${n / 1024}K`;
  return String(n);
}

/** A "nice" step for about `n` ticks up to `max`. */
function niceStep(max: number, n = 5): number {
  const raw = max / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const f = raw / mag;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
}

/** logY: latency spans decades from 2 B to 8 MB, so its axis is logarithmic; bandwidth's is linear. */
export function toSvg(chartTitle: string, yLabel: string, unit: string, ss: Series[], logY = false): string {
  const W = 800;
  const H = 480;
  const m = { l: 80, r: 170, t: 50, b: 60 };
  const pw = W - m.l - m.r;
  const ph = H - m.t - m.b;
  const xs = ss.flatMap((s) => s.points.map((p) => p[0]));
  const ys = ss.flatMap((s) => s.points.map((p) => p[1])).filter(Number.isFinite);
  const lx0 = Math.log2(Math.min(...xs));
  const lx1 = Math.max(Math.log2(Math.max(...xs)), lx0 + 1);
  const step = niceStep(Math.max(...ys, 1e-9));
  const yMax = Math.ceil(Math.max(...ys, 1e-9) / step) * step;
  const pos = ys.filter((v) => v > 0);
  const d0 = Math.floor(Math.log10(Math.min(...pos, 1)));
  const d1 = Math.max(Math.ceil(Math.log10(Math.max(...pos, 1))), d0 + 1);
  const X = (v: number) => m.l + ((Math.log2(v) - lx0) / (lx1 - lx0)) * pw;
  const Y = logY
    ? (v: number) => m.t + ph - ((Math.log10(Math.max(v, 10 ** d0)) - d0) / (d1 - d0)) * ph
    : (v: number) => m.t + ph - (Math.min(v, yMax) / yMax) * ph;
  const o: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<title>${esc(chartTitle)}</title>`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="24" text-anchor="middle" font-size="15">${esc(chartTitle)}</text>`,
  ];
  const yTicks: number[] = [];
  if (logY) for (let e = d0; e <= d1; e++) yTicks.push(10 ** e);
  else for (let v = 0; v <= yMax + step / 2; v += step) yTicks.push(v);
  for (const v of yTicks) {
    const y = Y(v).toFixed(1);
    o.push(`<line x1="${m.l}" y1="${y}" x2="${m.l + pw}" y2="${y}" stroke="#ddd"/>`, `<text x="${m.l - 8}" y="${y}" text-anchor="end" dominant-baseline="middle">${+v.toPrecision(6)}</text>`);
  }
  const every = Math.max(1, Math.ceil((lx1 - lx0 + 1) / 12));
  for (let e = Math.ceil(lx0); e <= lx1; e += every) {
    const x = X(2 ** e).toFixed(1);
    o.push(`<line x1="${x}" y1="${m.t}" x2="${x}" y2="${m.t + ph}" stroke="#eee"/>`, `<text x="${x}" y="${m.t + ph + 18}" text-anchor="middle">${sizeLabel(2 ** e)}</text>`);
  }
  o.push(
    `<rect x="${m.l}" y="${m.t}" width="${pw}" height="${ph}" fill="none" stroke="#333"/>`,
    `<text x="${m.l + pw / 2}" y="${H - 14}" text-anchor="middle">message size [bytes]</text>`,
    `<text transform="translate(20 ${m.t + ph / 2}) rotate(-90)" text-anchor="middle">${esc(`${yLabel} [${unit}]`)}</text>`,
  );
  ss.forEach((s, i) => {
    const pts = s.points.filter((p) => Number.isFinite(p[1]));
    o.push(`<polyline fill="none" stroke="${s.color}" stroke-width="2" points="${pts.map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(' ')}"/>`);
    for (const p of pts) o.push(`<circle cx="${X(p[0]).toFixed(1)}" cy="${Y(p[1]).toFixed(1)}" r="3" fill="${s.color}"><title>${sizeLabel(p[0])} B: ${p[1].toFixed(2)} ${esc(unit)}</title></circle>`);
    const ly = m.t + 10 + i * 22;
    o.push(`<line x1="${m.l + pw + 16}" y1="${ly}" x2="${m.l + pw + 40}" y2="${ly}" stroke="${s.color}" stroke-width="2"/>`, `<text x="${m.l + pw + 46}" y="${ly}" dominant-baseline="middle">${esc(s.name)}</text>`);
  });
  o.push('</svg>', '');
  return o.join('\n');
}

/** Writes whichever of --results_csv, --results_json and --chart were asked for. */
export function writeSweep(p: Params, rows: SweepRow[]): void {
  const put = (file: string, text: string) => {
    try {
      writeFileSync(file, text);
    } catch (e) {
      process.stderr.write(` Couldn't write ${file}: ${messageOf(e)}\n`);
    }
  };
  if (p.resultsCsv) put(p.resultsCsv, toCsv(p, rows));
  if (p.resultsJson) put(p.resultsJson, toJson(p, rows));
  if (p.chart) {
    const { yLabel, series: ss } = series(rows);
    const unit = p.tst === 'BW' ? (p.reportGbits ? 'Gb/sec' : 'MB/sec') : p.cycles ? 'cycles' : 'usec';
    put(p.chart, toSvg(title(p), yLabel, unit, ss, p.tst === 'LAT'));
  }
}
