/**
 * Our perftest tools against perftest 4.5-0.17 on Linux rxe in the lab VM
 * (run by `npm run test:interop`), each side as server and as client. They
 * only meet if the out-of-band exchange (version, system data, MTU, key
 * messages, barriers, reports, "done") is the same byte for byte; then each
 * side's "remote address" lines must be the other's "local address" lines,
 * and both must print a result row.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { DIST, meet, runProcess, startDaemon, type Run, type RunningDaemon } from '../helpers.js';

const PEER = process.env.LAB_PEER ?? '';
const HOST = process.env.LAB_HOST ?? '10.77.0.1';
const LAB = process.env.LAB_DIR ?? '';
const skip = PEER && LAB ? false : 'LAB_PEER/LAB_DIR are not set: run through `npm run test:interop`';

const run = (cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<Run> => runProcess(cmd, args, env, 150_000);

/** "local address: ..." and its GID line, as one string per QP */
const addrs = (out: string, which: 'local' | 'remote') => [...out.matchAll(new RegExp(`^ ${which} address: (.*)\\n GID: (.*)$`, 'gm'))].map((m) => `${m[1]} ${m[2]}`);
const BW_ROW = /^ \d+\s+\d+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s*$/m;
const LAT_ROW = /^ \d+\s+\d+\s+([\d.]+\s+){6}[\d.]+\s*$/m;

interface Case { tool: string; args: string; /** who prints a result row */ rows: 'both' | 'client'; lat?: boolean; name?: string; /** also with perftest's own C tool on softverbsd */ c?: boolean }
const CASES: Case[] = [
  { tool: 'ib_write_bw', args: '-n 64 -s 3072', rows: 'both', c: true },
  { tool: 'ib_read_bw', args: '-n 64 -s 3072', rows: 'both', c: true },
  { tool: 'ib_atomic_bw', args: '-n 64 -A CMP_AND_SWAP', rows: 'both', c: true },
  { tool: 'ib_send_bw', args: '-n 64 -s 3072', rows: 'both', c: true },
  { tool: 'ib_send_bw', args: '-n 64 -s 1024 -c UD', rows: 'both', name: 'UD', c: true },
  { tool: 'ib_send_bw', args: '-n 64 -s 3072 -c UC', rows: 'both', name: 'UC' },
  { tool: 'ib_write_bw', args: '-n 32 -s 4096 -q 2', rows: 'both', name: '2 QPs' },
  { tool: 'ib_write_bw', args: '-n 32 -s 4096 -q 3 --report_gbits', rows: 'both', name: '3 QPs, Gb/s', c: true },
  // --output: the one number, nothing else on stdout (no address lines to compare: the run's success says they met)
  { tool: 'ib_send_bw', args: '-n 64 -s 3072 -q 2 --output=message_rate', rows: 'both', name: '--output', c: true },
  { tool: 'ib_read_lat', args: '-n 50 -s 64 --output=latency', rows: 'client', lat: true, name: '--output', c: true },
  { tool: 'ib_write_lat', args: '-n 50 -s 64', rows: 'both', lat: true, c: true },
  { tool: 'ib_send_lat', args: '-n 50 -s 64', rows: 'both', lat: true, c: true },
  { tool: 'ib_read_lat', args: '-n 50 -s 64', rows: 'client', lat: true, c: true },
  { tool: 'ib_atomic_lat', args: '-n 50', rows: 'client', lat: true, c: true },
  { tool: 'ib_write_bw', args: '-n 32 -s 4096 -b', rows: 'both', name: 'bidirectional' },
  { tool: 'ib_send_bw', args: '-n 5 -b -a', rows: 'both', name: 'bidirectional, all sizes' },
  { tool: 'ib_send_bw', args: '-n 64 -s 2048 -e', rows: 'both', name: 'events' },
  { tool: 'ib_read_bw', args: '-a -n 5', rows: 'both', name: 'all sizes' },
  { tool: 'ib_send_lat', args: '-n 50 -s 512 -c UD', rows: 'both', lat: true, name: 'UD' },
  { tool: 'ib_write_bw', args: '-D 3 -s 4096', rows: 'both', name: 'duration' },
  // -R: the exchange and the test QPs through the RDMA CM
  { tool: 'ib_send_bw', args: '-R -n 64 -s 3072', rows: 'both', name: 'rdma_cm' },
  { tool: 'ib_write_bw', args: '-R -n 64 -s 3072', rows: 'both', name: 'rdma_cm' },
  { tool: 'ib_read_lat', args: '-R -n 50 -s 64', rows: 'client', lat: true, name: 'rdma_cm' },
];

describe('perftest: softverbs <-> perftest 4.5-0.17 on Linux rxe', { skip }, () => {
  let d: RunningDaemon;
  before(async () => {
    d = await startDaemon(['--device', `rxe0=${HOST}`]);
  });
  after(async () => d?.stop());
  for (const c of CASES) {
    for (const [oursServes, cTool] of [[true, false], [false, false], ...(c.c ? [[true, true], [false, true]] : [])] as Array<[boolean, boolean]>) {
      const who = cTool ? 'perftest on softverbsd' : 'softverbs';
      test(`${c.tool}${c.name ? ` (${c.name})` : ''}: ${who} ${oursServes ? 'server' : 'client'}, perftest on Linux rxe ${oursServes ? 'client' : 'server'}`, async () => {
        const args = c.args.split(' ');
        const mine = (server: boolean) => ['-d', 'rxe0', '-F', ...args, ...(server ? [] : [PEER])];
        // perftest's own tool says -x 0 (our device's RoCEv2 GID), as ours takes by default
        const ours = (server: boolean) => cTool
          ? run(process.execPath, [join(DIST, 'src', 'bin', 'softverbs.js'), 'exec', '--', `/usr/bin/${c.tool}`, '-x', '0', ...mine(server)], { ...process.env, SOFTVERBS_ROOT: d.root })
          : run(process.execPath, [join(DIST, 'src', 'bin', `${c.tool}.js`), ...mine(server)], { ...process.env, SOFTVERBS_ROOT: d.root });
        const theirs = (server: boolean) => run(join(LAB, 'vm-exec.sh'), ['1', `timeout 120 ${c.tool} -d rxe0 -x 1 -F ${c.args} ${server ? '' : HOST}`]);
        const [a, b] = await meet(oursServes, ours, theirs);
        assert.equal(a.code, 0, `softverbs:\n${a.out}\nperftest:\n${b.out}`);
        assert.equal(b.code, 0, `perftest:\n${b.out}\nsoftverbs:\n${a.out}`);
        const client = oursServes ? b : a;
        const server = oursServes ? a : b;
        if (c.args.includes('--output=')) {
          for (const [r, who, prints] of [[client, 'client', true], [server, 'server', c.rows === 'both']] as const) {
            assert.doesNotMatch(r.out, /address:|#bytes/, `${who}: nothing but the number\n${r.out}`);
            if (prints) assert.match(r.out, /^\d+\.\d{6}$/m, `${who}: the number\n${r.out}`);
          }
          return;
        }
        const nq = Number(/-q (\d+)/.exec(c.args)?.[1] ?? 1);
        assert.equal(addrs(a.out, 'local').length, nq);
        assert.deepEqual(addrs(a.out, 'remote'), addrs(b.out, 'local'), 'we saw what they sent');
        assert.deepEqual(addrs(b.out, 'remote'), addrs(a.out, 'local'), 'they saw what we sent');
        const row = c.lat ? LAT_ROW : BW_ROW;
        if (c.args.includes('--report_gbits')) for (const r of [a, b]) assert.match(r.out, /BW average\[Gb\/sec\]/);
        assert.match(client.out, row, `client result row:\n${client.out}`);
        if (c.name === 'all sizes') assert.equal(client.out.match(new RegExp(row.source, 'gm'))?.length, 23, 'every size from 2 to 2^23');
        if (c.rows === 'both') assert.match(server.out, row, `server result row:\n${server.out}`);
      });
    }
  }
});
