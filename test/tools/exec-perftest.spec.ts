/**
 * perftest's C programs (Debian's perftest, /usr/bin), unmodified, through `softverbs exec`
 * as the unprivileged user svtest-alice against a root daemon, on two devices of one daemon:
 * each of ib_{send,write,read,atomic}_{bw,lat} between two of them, and some against our
 * TypeScript ports both ways. The -R (rdma_cm) runs are written and skipped until librdmacm
 * works through the preload library.
 */
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { A1, A2, startDaemon, type Run, type RunningDaemon } from '../helpers.js';
import { buildPreload, execSkip, launchers, pair } from './exec-harness.js';

const TOOLS = ['ib_send_bw', 'ib_write_bw', 'ib_read_bw', 'ib_atomic_bw', 'ib_send_lat', 'ib_write_lat', 'ib_read_lat', 'ib_atomic_lat'] as const;
type Tool = (typeof TOOLS)[number];
const N = 100;
/** each test's default message size */
const SIZE: Record<Tool, number> = {
  ib_send_bw: 65536, ib_write_bw: 65536, ib_read_bw: 65536, ib_atomic_bw: 8, ib_send_lat: 2, ib_write_lat: 2, ib_read_lat: 2, ib_atomic_lat: 8,
};
/** where perftest prints the result row: both sides for the BW tests (the server gets the client's report) and for send/write latency, the client alone for read/atomic latency */
const serverRow = (t: Tool) => t.endsWith('_bw') || t === 'ib_send_lat' || t === 'ib_write_lat';
const skip = execSkip([...TOOLS]);
/** librdmacm through the preload library: not there yet (its /dev/infiniband/rdma_cm is not served as a device file: rdma_create_id fails) */
const RDMA_CM = 'librdmacm through the preload library is not done yet: rdma_create_id fails (/dev/infiniband/rdma_cm is not served as a device file); being made to work elsewhere';

/** The result header and row: the size and iteration count asked for, then numbers. */
function row(t: Tool, out: string): RegExpMatchArray | null {
  const header = t.endsWith('_bw') ? / #bytes {5}#iterations {4}BW peak\[MB\/sec\] {4}BW average\[MB\/sec\] {3}MsgRate\[Mpps\]/ : / #bytes #iterations {4}t_min\[usec\] {4}t_max\[usec\] {2}t_typical\[usec\]/;
  return new RegExp(`${header.source}.*\\n ${SIZE[t]} +${N} +\\d+\\.\\d+ +\\d+\\.\\d+`).exec(out);
}
/** "local address: ... QPN 0x.. PSN 0x.." of one side, "remote address" of the other */
const qp = (out: string, which: string) => /address: LID \S+ QPN (\S+) PSN (\S+)/.exec(out.split('\n').find((l) => l.startsWith(` ${which} address:`)) ?? '')?.slice(1);

/**
 * What two programs given the same flags must print alike: every line, with what differs from run to run
 * masked (hex QPNs, PSNs, keys and addresses; measured numbers, with the padding that follows them).
 */
const shape = (text: string): string[] => text.replace(/0x[0-9a-f]+/g, '0x#').replace(/-?\d+\.\d+ */g, '#.# ').split('\n');

/** perftest users' flags: several QPs, Gb/s, a single number (--output), the JSON file. */
const FLAGGED: Array<[Tool, string[]]> = [
  ['ib_write_bw', ['-q', '2', '--report_gbits']],
  ['ib_send_bw', ['-q', '3', '--output=message_rate']],
  ['ib_read_bw', ['-q', '2', '--output=bandwidth', '--report_gbits', '--out_json']],
  ['ib_write_bw', ['-q', '2', '-b', '--out_json']],
  ['ib_send_lat', ['--output=latency', '--out_json']],
  ['ib_read_lat', ['--out_json']],
  // duration runs' averages (no -a here: its 8 MiB buffers pass the unprivileged user's RLIMIT_MEMLOCK)
  ['ib_write_bw', ['-D', '2', '--output=bandwidth']],
  ['ib_send_lat', ['-D', '2', '--output=latency']],
];

function assertPerftest(t: Tool, [s, c]: Run[], what: string): void {
  assert.equal(s!.code, 0, `${what}: server\n${s!.out}`);
  assert.equal(c!.code, 0, `${what}: client\n${c!.out}`);
  assert.ok(row(t, c!.out), `${what}: the client's result\n${c!.out}`);
  if (serverRow(t)) assert.ok(row(t, s!.out), `${what}: the server's result\n${s!.out}`);
  for (const r of [s!, c!]) assert.doesNotMatch(r.out, /Completion with error|Couldn't|Failed|Unable/, what);
  assert.ok(qp(s!.out, 'local'), `${what}: the server's address`);
  assert.deepEqual(qp(c!.out, 'remote'), qp(s!.out, 'local'), `${what}: the client heard the server's QPN and PSN`);
  assert.deepEqual(qp(s!.out, 'remote'), qp(c!.out, 'local'), `${what}: the server heard the client's`);
}

describe('perftest through softverbs exec', { skip }, () => {
  let d: RunningDaemon;
  const { env, c, ours } = launchers(() => d.root);
  const args = (dev: string, port: string) => ['-d', dev, '-x', '0', '-p', port, '-n', String(N)];

  before(async () => {
    buildPreload();
    d = await startDaemon(['--device', `rxe0=${A1}`, '--device', `rxe1=${A2}`]);
    chmodSync(d.root, 0o755);
  });
  after(async () => {
    await d?.stop();
  });

  for (const t of TOOLS) {
    test(`${t}: perftest's on rxe0 and rxe1, -n ${N}`, async () => {
      const r = await pair((p) => c(t, ...args('rxe0', p)), (p) => c(t, ...args('rxe1', p), '127.0.0.1'), env());
      assertPerftest(t, r, t);
    });
  }

  // our TypeScript ports speak perftest's out-of-band exchange (test/tools/perftest.spec.ts checks it against captures)
  const mixed: Array<[Tool, boolean]> = [['ib_write_bw', false], ['ib_read_bw', true], ['ib_send_lat', true], ['ib_atomic_lat', false]];
  for (const [t, oursServes] of mixed) {
    test(`${t}: ${oursServes ? 'our server, perftest\'s client' : 'perftest\'s server, our client'}`, async () => {
      const r = await pair((p) => (oursServes ? ours : c)(t, ...args('rxe0', p)), (p) => (oursServes ? c : ours)(t, ...args('rxe1', p), '127.0.0.1'), env());
      assertPerftest(t, r, `${t} ${oursServes ? 'TS↔C' : 'C↔TS'}`);
    });
  }

  describe('the flags perftest users pass: the same lines from perftest\'s tools and ours, each side', () => {
    let tmp = '';
    before(() => {
      tmp = mkdtempSync(join(tmpdir(), 'sv-perftest-flags-'));
      chmodSync(tmp, 0o777);
    });
    after(() => rmSync(tmp, { recursive: true, force: true }));

    for (const [t, flags] of FLAGGED) {
      test(`${t} ${flags.join(' ')}: C with C, our server with C's client, C's server with our client`, async () => {
        const json = flags.includes('--out_json');
        const tag = `${t}${flags.join('')}`.replace(/[^\w]/g, '_');
        const runs: Array<{ who: string; s: string; c: string; sJson: string; cJson: string }> = [];
        for (const [sv, cl, who] of [[c, c, 'C/C'], [ours, c, 'TS/C'], [c, ours, 'C/TS']] as const) {
          const file = (side: string) => join(tmp, `${tag}-${who.replace('/', '')}-${side}.json`);
          const j = (side: string) => (json ? [`--out_json_file=${file(side)}`] : []);
          const [s, cr] = await pair((p) => sv(t, ...args('rxe0', p), ...flags, ...j('s')), (p) => cl(t, ...args('rxe1', p), ...flags, ...j('c'), '127.0.0.1'), env());
          assert.equal(s.code, 0, `${who} server\n${s.out}`);
          assert.equal(cr.code, 0, `${who} client\n${cr.out}`);
          const read = (side: string) => (json && existsSync(file(side)) ? readFileSync(file(side), 'utf8') : '');
          runs.push({ who, s: s.stdout, c: cr.stdout, sJson: read('s'), cJson: read('c') });
        }
        const base = runs[0]!;
        // perftest's own pair shows the flags took: the number alone, one address line per QP, Gb/s, the file
        const q = flags.includes('-q') ? Number(flags[flags.indexOf('-q') + 1]) : 1;
        const output = flags.find((f) => f.startsWith('--output='));
        // (a READ test's client first says, above a line, that it turned inline data off)
        const lines = base.c.split('\n').filter(Boolean);
        if (output) assert.ok(lines.some((l) => /^\d+\.\d{6}$/.test(l)) && lines.every((l) => /^\d+\.\d{6}$|^-+$/.test(l)), `C's client with ${output}\n${base.c}`);
        else assert.equal(base.c.split('\n').filter((l) => l.startsWith(' local address:')).length, q, `C's client: one address per QP\n${base.c}`);
        if (flags.includes('--report_gbits') && !output) assert.match(base.c, /BW average\[Gb\/sec\]/);
        if (json) {
          assert.match(base.cJson, new RegExp(`^\\{\\ntest_info: \\{\\n[^]*Number_of_qps: ${q},\\n[^]*\\},\\nresults: \\{\\n[^]*\\},\\n\\}\\n$`), `C's client's JSON\n${base.cJson}`);
          if (output === '--output=bandwidth') assert.match(base.cJson, /\nresults: \{\nbw_avg: \d+\.\d{6},\n\},/);
          if (output === '--output=latency') assert.match(base.cJson, /\nresults: \{\navg_lat: \d+\.\d{6},\n\},/);
        }
        for (const r of runs.slice(1)) {
          assert.deepEqual(shape(r.s), shape(base.s), `${r.who}: the server's lines as perftest's server prints them\n${r.s}\n--- perftest's:\n${base.s}`);
          assert.deepEqual(shape(r.c), shape(base.c), `${r.who}: the client's lines as perftest's client prints them\n${r.c}\n--- perftest's:\n${base.c}`);
          assert.deepEqual(shape(r.sJson), shape(base.sJson), `${r.who}: the server's JSON file`);
          assert.deepEqual(shape(r.cJson), shape(base.cJson), `${r.who}: the client's JSON file`);
        }
      });
    }
  });

  for (const t of ['ib_send_bw', 'ib_write_lat'] as const) {
    test(`${t} -R (connected through rdma_cm): perftest's on rxe0 and rxe1`, { skip: RDMA_CM }, async () => {
      // with -R the client names the server's device address, not the TCP loopback
      const r = await pair((p) => c(t, '-R', ...args('rxe0', p)), (p) => c(t, '-R', ...args('rxe1', p), A1), env());
      assertPerftest(t, r, `${t} -R`);
      assert.match(r[1].out, /rdma_cm QPs\t : ON/);
    });
  }
});
