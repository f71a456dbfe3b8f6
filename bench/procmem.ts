/**
 * node dist/bench/procmem.js [seconds]: the engines' 64 KiB RDMA WRITE (and READ) streams between MRs of
 * this process's own memory reached through /proc/self/mem (ProcMemory, as an unmodified C program's is),
 * beside the same stream over mapped memory; with what each pread and pwrite moved on average (this
 * process's /proc/self/io: syscr/syscw and rchar/wchar over the run). `per packet`: every MTU packet a
 * descriptor of its own, as on the wire (no spans; read responses are never spans).
 */
import { readFileSync } from 'node:fs';
import { engineStreamBw, type MemKind } from './engines.js';

const SECONDS = Number(process.argv[2] ?? 2);
const ADDR = '127.79.0.1';

function io(): Record<string, number> {
  const out: Record<string, number> = {};
  for (const l of readFileSync('/proc/self/io', 'utf8').trim().split('\n')) {
    const [k, v] = l.split(':');
    out[k!.trim()] = Number(v);
  }
  return out;
}

const runs: Array<[string, { kind: MemKind; perPacket?: boolean; op?: 'write' | 'read' | 'send' }]> = [
  ['WRITE mapped -> mapped', { kind: 'mapped' }],
  ['WRITE proc -> proc', { kind: 'proc' }],
  ['WRITE proc -> proc, per packet', { kind: 'proc', perPacket: true }],
  ['SEND proc -> proc', { kind: 'proc', op: 'send' }],
  ['READ proc <- proc', { kind: 'proc', op: 'read' }],
  ['READ mapped <- mapped', { kind: 'mapped', op: 'read' }],
];
for (const [what, o] of runs) {
  const i0 = io();
  const r = await engineStreamBw(ADDR, SECONDS, o);
  const i1 = io();
  const d = (k: string) => i1[k]! - i0[k]!;
  const per = (bytes: string, calls: string) => (d(calls) > 0 ? (d(bytes) / d(calls)).toFixed(0) : '-');
  console.log(`${what.padEnd(34)} ${(r.value / 1e9).toFixed(3).padStart(7)} GB/s  ${String(r.ops).padStart(7)} ops  bytes/pread ${per('rchar', 'syscr').padStart(6)}  bytes/pwrite ${per('wchar', 'syscw').padStart(6)}  (syscr ${d('syscr')}, syscw ${d('syscw')})`);
}
