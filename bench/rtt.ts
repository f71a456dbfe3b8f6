/**
 * npm run bench:rtt: the bench's four ping-pong lines alone (8 B SEND round trips, the client processes busy
 * polling or sleeping on completion events, on one device and across the wire), with what every process
 * spent per round trip, in about a minute instead of the whole bench. For trying a change to how processes
 * meet (polling, wake-ups) under the conditions of one's choice: arguments after `--` go to every daemon
 * (`-- --poll-us 0`), and the run can be put under `taskset` or beside a CPU hog like any command.
 */
import { runNet } from './measure.js';
import { spawnDaemon } from '../src/daemon/spawn.js';
import { udpPingPong, tcpPingPong } from './baselines.js';
import { daemonsLine, machine, PER_PROCESS, rows, syscallGaps } from './procstat.js';
import { sendPingPong } from './rdma.js';

const sep = process.argv.indexOf('--');
const extra = sep < 0 ? [] : process.argv.slice(sep + 1);
const NET = runNet();
const us = (v: { med: number; p99: number }) => `${v.med.toFixed(1)}/${v.p99.toFixed(1)} us`;

const out: string[] = [];
const udp = await udpPingPong();
const tcp = await tcpPingPong();
const d = await spawnDaemon(['--device', `rxe0=${NET}.3`, ...extra]);
try {
  const D = [{ name: 'daemon', pid: d.proc.pid! }];
  for (const ev of [false, true]) {
    const r = await sendPingPong(D, d.root, ev);
    out.push(`same device, ${ev ? 'events' : 'busy-poll'}: half round trip / TCP round trip ${(r.value.med / 2 / tcp.value.med).toFixed(3)} (${us(r.value)} vs TCP ${us(tcp.value)})`, ...rows(r.fig));
  }
} finally {
  await d.stop();
}
const a = await spawnDaemon(['--device', `rxe0=${NET}.1`, ...extra]);
const b = await spawnDaemon(['--device', `rxe0=${NET}.2`, ...extra]);
try {
  const X = [{ name: 'daemon A', pid: a.proc.pid! }, { name: 'daemon B', pid: b.proc.pid! }];
  for (const ev of [false, true]) {
    const r = await sendPingPong(X, a.root, ev, b.root);
    out.push(`across the wire, ${ev ? 'events' : 'busy-poll'}: round trip / UDP round trip ${(r.value.med / udp.value.med).toFixed(2)} (${us(r.value)} vs UDP ${us(udp.value)})`, ...rows(r.fig));
  }
} finally {
  await a.stop();
  await b.stop();
}
out.push('baselines', '  Node UDP round trip', ...rows(udp.fig), '  Node TCP round trip', ...rows(tcp.fig));
process.stdout.write([machine(), daemonsLine(extra), ...PER_PROCESS, ...syscallGaps().map((g) => `syscalls: - (${g})`), '', ...out].join('\n') + '\n');
