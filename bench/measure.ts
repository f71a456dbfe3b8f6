/** What the bench scripts measure with: a process's CPU time, percentiles. */
import { readFileSync } from 'node:fs';

/** CPU time (user + system) a process has used so far, in ms, from /proc (10 ms ticks). */
export function cpuMs(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(f[11]) + Number(f[12])) * 10;
}

/** The p-quantile (0..1) of the values, by rank. */
export function pct(v: readonly number[], p: number): number {
  return [...v].sort((a, b) => a - b)[Math.floor(v.length * p)] ?? 0;
}

export const median = (v: readonly number[]): number => pct(v, 0.5);

/** Round trips in µs: median and 99th percentile. */
export interface Lat {
  med: number;
  p99: number;
}
export function lat(v: number[]): Lat {
  return { med: median(v), p99: pct(v, 0.99) };
}

export const tick = () => new Promise((r) => setImmediate(r));

/** This run's own loopback /24 (127.a.b): daemons bound there cannot collide with one left on 127.0.0.1 or another run's. */
export const runNet = (): string => `127.${10 + Math.floor(Math.random() * 240)}.${1 + Math.floor(Math.random() * 254)}`;
