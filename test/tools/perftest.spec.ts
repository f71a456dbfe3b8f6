/**
 * The perftest tools. Fixtures: `test/fixtures/captures/{send_bw,write_bw,
 * read_bw,atomic_bw,atomic_cas_bw,write_lat}.{txt,pcap}`, recorded in the
 * lab VMs (perftest 4.5+0.17 on Debian 12, Linux rxe): each run's command
 * lines, both sides' stdout and the TCP exchange byte for byte.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { createConnection, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  decodeBwReport, decodeInt, decodeKey, decodeMtu, decodeVersion, DONE, encodeBwReport, encodeInt, encodeKey, encodeMtu, encodeVersion,
} from '../../src/tools/perftest/exchange.js';
import { parse, Verb, type Params, type Tst } from '../../src/tools/perftest/params.js';
import { addrLines, bwHeader, bwJson, bwRow, latHeader, latJson, latRow, testInfo, type LatResult } from '../../src/tools/perftest/report.js';
import { DIST, mgmt, runProcess, startDaemon, tcpPayloads, type Run, type RunningDaemon , A1, A2 } from '../helpers.js';
import { getDeviceList } from '../../src/verbs/index.js';

const CAPTURES = join(DIST, '..', 'test', 'fixtures', 'captures');
const haveCaptures = existsSync(join(CAPTURES, 'write_bw.pcap'));
const tool = (t: string) => join(DIST, 'src', 'bin', `${t}.js`);
const VERBS: Record<string, Verb> = { send: Verb.SEND, write: Verb.WRITE, read: Verb.READ, atomic: Verb.ATOMIC };
const kindOf = (t: string): [Verb, Tst] => {
  const m = /^ib_(\w+)_(bw|lat)$/.exec(t)!;
  return [VERBS[m[1]!]!, m[2]!.toUpperCase() as Tst];
};

interface Capture {
  name: string;
  cmd: { server: string[]; client: string[] };
  out: { server: string; client: string };
  c2s: Buffer[];
  s2c: Buffer[];
}

/** A capture's command lines, both outputs (the fixture indents them by two spaces) and its TCP messages by direction. */
function capture(name: string): Capture {
  const text = readFileSync(join(CAPTURES, `${name}.txt`), 'utf8');
  const cmd = (role: string) => new RegExp(`^# guest \\d \\([\\d.]+, ${role}\\): (.*?)\\s+-> exit 0$`, 'm').exec(text)![1]!.split(/\s+/);
  const out = (role: string) => {
    const from = text.indexOf('\n', text.indexOf(`(${role}) output ==`)) + 1;
    const to = text.indexOf('\n== ', from);
    return text.slice(from, to < 0 ? undefined : to).split('\n').map((l) => l.replace(/^  /, '')).join('\n');
  };
  const tcp = tcpPayloads(join(CAPTURES, `${name}.pcap`));
  return {
    name, cmd: { server: cmd('server'), client: cmd('client') }, out: { server: out('server'), client: out('client') },
    c2s: tcp.filter((t) => t.dport === 18515).map((t) => t.data), s2c: tcp.filter((t) => t.sport === 18515).map((t) => t.data),
  };
}

function paramsOf(argv: string[]): Params {
  const [t, ...args] = argv;
  const [verb, tst] = kindOf(t!);
  const r = parse(t!, verb, tst, args);
  assert.equal(r.kind, 'run', argv.join(' '));
  return (r as { params: Params }).params;
}

const NAMES = ['send_bw', 'write_bw', 'read_bw', 'atomic_bw', 'atomic_cas_bw', 'write_lat'];

describe('perftest formats against perftest 4.5-0.17 recorded on Linux rxe', { skip: haveCaptures ? false : 'no captures' }, () => {
  for (const name of NAMES) {
    test(`${name}: the test block, address lines and result rows of both sides, character for character`, () => {
      const c = capture(name);
      const keys = { client: c.c2s.filter((b) => b.length === 108), server: c.s2c.filter((b) => b.length === 108) };
      for (const role of ['server', 'client'] as const) {
        const p = paramsOf(c.cmd[role]);
        const out = c.out[role];
        const info = { devName: 'rxe0', mtuBytes: 1024, gidIndex: 1, inlineSize: 0, outReads: 128 };
        assert.ok(out.includes(testInfo(p, info)), `${name} ${role}: test block\n${testInfo(p, info)}\nin\n${out}`);
        const mine = decodeKey(keys[role][0]!)!;
        const theirs = decodeKey(keys[role === 'client' ? 'server' : 'client'][0]!)!;
        assert.ok(out.includes(addrLines('local', mine, p.verb) + addrLines('remote', theirs, p.verb)), `${name} ${role}: address lines`);
        const header = p.tst === 'BW' ? bwHeader(p) : latHeader(p);
        assert.ok(out.includes(header), `${name} ${role}: result header`);
        const row = out.slice(out.indexOf(header) + header.length).split('\n')[0]! + '\n';
        const n = row.trim().split(/\s+/).map(Number);
        if (p.tst === 'BW') {
          assert.equal(bwRow(p, { size: BigInt(n[0]!), iters: BigInt(n[1]!), bwPeak: n[2]!, bwAvg: n[3]!, msgRate: n[4]! }), row, `${name} ${role}: result row`);
        } else {
          const r: LatResult = { size: n[0]!, iters: n[1]!, tMin: n[2]!, tMax: n[3]!, tTypical: n[4]!, tAvg: n[5]!, tStdev: n[6]!, p99: n[7]!, p999: n[8]!, listing: '' };
          assert.equal(latRow(p, r), row, `${name} ${role}: result row`);
        }
      }
      if (name !== 'send_bw' && name !== 'write_lat') {
        // the client's report as it crossed the wire, formatted by us, is the row both sides printed
        const rep = decodeBwReport(c.c2s.filter((b) => b.length === 8));
        const p = paramsOf(c.cmd.client);
        for (const role of ['server', 'client'] as const) assert.ok(c.out[role].includes(bwRow(p, rep)), `${name} ${role}: the report row from the exchanged bytes`);
      }
    });
  }

  test('--out_json: perftest\'s own file for the numbers it printed (test/tools/fixtures/perftest/out_json_*.txt)', () => {
    const dir = join(DIST, '..', 'test', 'tools', 'fixtures', 'perftest');
    for (const t of ['ib_write_bw', 'ib_send_lat', 'ib_read_bw']) {
      const text = readFileSync(join(dir, `out_json_${t}.txt`), 'utf8');
      const cmd = /^=== (.*)$/m.exec(text)![1]!.split(' ');
      const stdout = text.slice(text.indexOf('=== stdout\n') + 11, text.indexOf('=== json\n'));
      const json = text.slice(text.indexOf('=== json\n') + 9);
      const p = paramsOf(cmd);
      const info = { devName: 'rxe0', mtuBytes: 4096, gidIndex: 1, inlineSize: 0, outReads: 128 };
      assert.ok(stdout.includes(testInfo(p, info)), `${t}: test block`);
      const header = p.tst === 'BW' ? bwHeader(p) : latHeader(p);
      const row = stdout.slice(stdout.indexOf(header) + header.length).split('\n')[0]! + '\n';
      const n = row.trim().split(/\s+/).map(Number);
      if (p.tst === 'BW') {
        const rep = { size: BigInt(n[0]!), iters: BigInt(n[1]!), bwPeak: n[2]!, bwAvg: n[3]!, msgRate: n[4]! };
        assert.equal(bwRow(p, rep), row, `${t}: row`);
        assert.equal(bwJson(p, info, rep), json, `${t}: json`);
      } else {
        const r: LatResult = { size: n[0]!, iters: n[1]!, tMin: n[2]!, tMax: n[3]!, tTypical: n[4]!, tAvg: n[5]!, tStdev: n[6]!, p99: n[7]!, p999: n[8]!, listing: '' };
        assert.equal(latRow(p, r), row, `${t}: row`);
        assert.equal(latJson(p, info, r), json, `${t}: json`);
      }
    }
  });

  test('every out-of-band message of the captured runs decodes and encodes back byte for byte', () => {
    for (const name of NAMES) {
      const c = capture(name);
      for (const [dir, msgs] of [['client', c.c2s], ['server', c.s2c]] as const) {
        const reports: Buffer[] = [];
        for (const m of msgs) {
          const what = `${name} ${dir}: ${m.length} bytes`;
          if (m.length === 16) {
            assert.equal(decodeVersion(m).text, '6.06');
            assert.deepEqual(encodeVersion(decodeVersion(m).text), m, what);
          } else if (m.length === 4) assert.deepEqual(encodeInt(decodeInt(m)), m, what);
          else if (m.length === 2) {
            assert.equal(decodeMtu(m), 3, what);
            assert.deepEqual(encodeMtu(decodeMtu(m)), m, what);
          } else if (m.length === 108) assert.deepEqual(encodeKey(decodeKey(m)!), m, what);
          else if (m.length === 8) reports.push(m);
          else assert.deepEqual(m, DONE, what);
        }
        if (reports.length) assert.deepEqual(Buffer.concat(encodeBwReport(decodeBwReport(reports))), Buffer.concat(reports), `${name} ${dir}: report`);
      }
      assert.deepEqual(c.c2s.slice(1, 3).map(decodeInt), [4096, 64], `${name}: page and cache line size`);
    }
  });
});

let nextPort = 21000 + (process.pid % 2000);
const run = (t: string, args: string[], root: string, ms = 60_000): Promise<Run> => runProcess(process.execPath, [tool(t), ...args], { ...process.env, SOFTVERBS_ROOT: root }, ms);
const addrs = (out: string, which: 'local' | 'remote') => [...out.matchAll(new RegExp(`^ ${which} address: (.*)\\n GID: (.*)$`, 'gm'))].map((m) => `${m[1]} ${m[2]}`);
const BW_ROW = /^ \d+\s+\d+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s*$/gm;
const LAT_ROW = /^ \d+\s+\d+\s+([\d.]+\s+){6}[\d.]+\s*$/gm;

/** A TCP relay that keeps what went each way. */
async function recorder(to: number): Promise<{ port: number; c2s: Buffer[]; s2c: Buffer[]; server: Server }> {
  const c2s: Buffer[] = [];
  const s2c: Buffer[] = [];
  const server = createServer((a) => {
    const b = createConnection({ port: to, host: '127.0.0.1' });
    a.on('data', (d) => (c2s.push(d), b.write(d)));
    b.on('data', (d) => (s2c.push(d), a.write(d)));
    a.on('end', () => b.end());
    b.on('end', () => a.end());
    a.on('error', () => b.destroy());
    b.on('error', () => a.destroy());
  });
  const port = nextPort++;
  await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
  return { port, c2s, s2c, server };
}

describe('perftest tools end to end', () => {
  let d: RunningDaemon;
  before(async () => {
    d = await startDaemon(['--device', `rxe0=${A1}`, '--device', `rxe1=${A2}`]);
  });
  after(async () => d?.stop());

  /** Server on `sdev`, client on `cdev`; both must succeed and see each other's addresses. */
  /** A server and a client of tool t; `clientOnly` goes to the client alone (files both sides would otherwise write at once). */
  async function pair(t: string, args: string[], sdev = 'rxe0', cdev = 'rxe1', clientPort?: number, clientOnly: string[] = []): Promise<{ s: Run; c: Run; port: number }> {
    const port = nextPort++;
    const s = run(t, ['-d', sdev, '-p', String(port), ...args], d.root);
    await new Promise((r) => setTimeout(r, 400));
    const c = await run(t, ['-d', cdev, '-p', String(clientPort ?? port), ...args, ...clientOnly, '127.0.0.1'], d.root);
    const sr = await s;
    assert.equal(c.code, 0, `${t} ${args.join(' ')} client:\n${c.out}\nserver:\n${sr.out}`);
    assert.equal(sr.code, 0, `${t} ${args.join(' ')} server:\n${sr.out}\nclient:\n${c.out}`);
    assert.deepEqual(addrs(c.out, 'remote'), addrs(sr.out, 'local'), `${t}: the client saw the server's addresses`);
    assert.deepEqual(addrs(sr.out, 'remote'), addrs(c.out, 'local'), `${t}: the server saw the client's addresses`);
    assert.match(sr.out, /(^|\n)\n\*{36}\n\* Waiting for client to connect\.\.\. \*\n\*{36}\n/);
    return { s: sr, c, port };
  }

  const CASES: { t: string; args: string; rows: 'both' | 'client' }[] = [
    { t: 'ib_write_bw', args: '-n 200 -s 4096', rows: 'both' },
    { t: 'ib_read_bw', args: '-n 200 -s 4096', rows: 'both' },
    { t: 'ib_atomic_bw', args: '-n 200 -A CMP_AND_SWAP', rows: 'both' },
    { t: 'ib_send_bw', args: '-n 200 -s 4096', rows: 'both' },
    { t: 'ib_send_bw', args: '-n 200 -s 1024 -c UD', rows: 'both' },
    { t: 'ib_send_bw', args: '-n 200 -s 4096 -c UC -e', rows: 'both' },
    { t: 'ib_write_bw', args: '-n 200 -s 8192 -q 2 -b -l 2 --report_gbits', rows: 'both' },
    { t: 'ib_write_lat', args: '-n 100 -s 64', rows: 'both' },
    { t: 'ib_send_lat', args: '-n 100 -s 64', rows: 'both' },
    { t: 'ib_send_lat', args: '-n 100 -s 512 -c UD -e', rows: 'both' },
    { t: 'ib_read_lat', args: '-n 100 -s 64 -e', rows: 'client' },
    { t: 'ib_atomic_lat', args: '-n 100', rows: 'client' },
    { t: 'ib_read_bw', args: '-n 200 -s 2048 -t 64 -Q 8 -u 12 -o 4 -m 1024 -N', rows: 'both' },
    { t: 'ib_send_bw', args: '-n 200 -s 2048 -r 256 -t 32 -S 3 --disable_pcie_relaxed', rows: 'both' },
  ];
  for (const c of CASES) {
    for (const same of [true, false]) test(`${c.t} ${c.args}: ${same ? 'one device' : 'across devices (RoCEv2 between rxe0 and rxe1)'}`, async () => {
      const { s, c: cl } = await pair(c.t, c.args.split(' '), 'rxe0', same ? 'rxe0' : 'rxe1');
      const row = c.t.endsWith('_lat') ? LAT_ROW : BW_ROW;
      assert.equal(cl.out.match(row)?.length, 1, `client row:\n${cl.out}`);
      assert.equal(s.out.match(row)?.length ?? 0, c.rows === 'both' ? 1 : 0, `server row:\n${s.out}`);
      if (c.args.includes('-q 2')) assert.equal(addrs(cl.out, 'local').length, 2);
      if (c.args.includes('--report_gbits')) assert.match(cl.out, /BW peak\[Gb\/sec\]/);
      if (c.args.includes(' -e')) assert.match(cl.out, / Test with events\. Using rxe[01]_comp0\n/);
      if (c.args.includes('-o 4')) {
        for (const o of [cl.out, s.out]) assert.match(o, / Outstand reads  : 4\n/);
        assert.match(cl.out, / TX depth        : 64\n CQ Moderation   : 8\n Mtu             : 1024\[B\]\n/);
        assert.match(cl.out, / OUT 0x04 RKey /);
        assert.match(cl.out, /^ 2048 +200 +0\.00 +[\d.]+/m, '-N: no peak');
      }
      if (c.args.includes('-r 256')) {
        assert.match(s.out, / PCIe relax order: OFF\n ibv_wr\* API     : OFF\n RX depth        : 200\n CQ Moderation   : 32\n/, 'rx depth is cut to the iterations, as perftest does');
        assert.match(cl.out, / TX depth        : 32\n CQ Moderation   : 32\n/);
      }
    });
  }

  test('a bandwidth run without -e polls, and through a long wait sleeps on its CQs until the next completion', async () => {
    // 1 MiB WRITEs, a completion every 100: each wait is tens of ms, far past the 1 ms a loop polls before it naps
    const events = async () => Object.fromEntries(((await mgmt(getDeviceList(d.root)[0]!.devPath, 'devices')) as { name: string; compEvents: number }[]).map((x) => [x.name, x.compEvents]));
    const e0 = await events();
    const { c } = await pair('ib_write_bw', ['-n', '300', '-s', '1048576']);
    assert.doesNotMatch(c.out, /Test with events/);
    assert.equal(c.out.match(BW_ROW)?.length, 1, c.out);
    const e1 = await events();
    assert.ok(e1.rxe1! - e0.rxe1! >= 1, `the client (rxe1) slept on a completion event: ${JSON.stringify([e0, e1])}`);
    // a receiver that naps while its sender's clock runs out still ends with its own (-D)
    const t0 = Date.now();
    await pair('ib_send_bw', ['-D', '2', '-s', '1048576']);
    assert.ok(Date.now() - t0 < 10000, 'the -D run ended');
    // -D: still napping long after -n's default 5000 iterations went by (64 KiB, waits of 500 completions)
    const args = ['-D', '3', '-s', '65536', '-t', '512', '-Q', '500'];
    const port = nextPort++;
    const srv = run('ib_write_bw', ['-d', 'rxe0', '-p', String(port), ...args], d.root);
    await new Promise((r) => setTimeout(r, 400));
    const cl = run('ib_write_bw', ['-d', 'rxe1', '-p', String(port), ...args, '127.0.0.1'], d.root);
    await new Promise((r) => setTimeout(r, 2000));
    const mid = await events();
    const [cr, sr] = [await cl, await srv];
    assert.equal(cr.code, 0, cr.out);
    assert.equal(sr.code, 0, sr.out);
    const iters = Number(/^ 65536 +(\d+)/m.exec(cr.out)?.[1]);
    assert.ok(iters > 5000, cr.out);
    const end = await events();
    assert.ok(end.rxe1! - mid.rxe1! >= 1, `the client slept on events in its last second: ${JSON.stringify([mid, end])}`);
  });

  for (const [t, args] of [['ib_write_bw', '-n 200 -s 4096'], ['ib_send_bw', '-n 200 -s 4096'], ['ib_read_lat', '-n 100 -s 64']] as const) {
    test(`${t} -R ${args}: the exchange and the QPs through the RDMA CM (rxe0 <-> rxe1)`, async () => {
      const port = nextPort++;
      const srv = run(t, ['-R', '-d', 'rxe0', '-p', String(port), ...args.split(' ')], d.root);
      await new Promise((r) => setTimeout(r, 400));
      const cl = await run(t, ['-R', '-d', 'rxe1', '-p', String(port), ...args.split(' '), A1], d.root);
      const sr = await srv;
      assert.equal(cl.code, 0, `client:\n${cl.out}\nserver:\n${sr.out}`);
      assert.equal(sr.code, 0, `server:\n${sr.out}`);
      for (const o of [cl.out, sr.out]) assert.match(o, / rdma_cm QPs\t : ON\n Data ex\. method : rdma_cm\n/);
      assert.match(sr.out, / Waiting for client rdma_cm QP to connect\n Please run the same command with the IB\/RoCE interface IP\n/);
      // the address lines are the exchange's (SEND: no RKey or VAddr), and each side saw the other's
      assert.match(cl.out, /^ local address: LID 0000 QPN 0x[0-9a-f]{4,6} PSN 0x[0-9a-f]+\n/m);
      assert.deepEqual(addrs(cl.out, 'remote'), addrs(sr.out, 'local'));
      assert.deepEqual(addrs(sr.out, 'remote'), addrs(cl.out, 'local'));
      assert.equal(cl.out.match(t.endsWith('_lat') ? LAT_ROW : BW_ROW)?.length, 1, cl.out);
    });
  }

  test('-R -d: the test runs on the named device, not on the one the route to the server picks; the header names the device used', async () => {
    const counters = async () => Object.fromEntries(((await mgmt(getDeviceList(d.root)[0]!.devPath, 'counters')) as { name: string; counters: Record<string, number> }[]).map((x) => [x.name, x.counters]));
    const args = ['-n', '1000', '-s', '4096'];
    // the server listens on rxe1's address; the route from this host to it is rxe1's own, but the client asks for rxe0
    let port = nextPort++;
    const c0 = await counters();
    let srv = run('ib_write_bw', ['-R', '-d', 'rxe1', '-p', String(port), ...args], d.root);
    await new Promise((r) => setTimeout(r, 400));
    let cl = await run('ib_write_bw', ['-R', '-d', 'rxe0', '-p', String(port), ...args, A2], d.root);
    let sr = await srv;
    assert.equal(cl.code, 0, `client:\n${cl.out}\nserver:\n${sr.out}`);
    assert.equal(sr.code, 0, sr.out);
    const c1 = await counters();
    assert.ok(c1.rxe0!.sent_pkts! - c0.rxe0!.sent_pkts! >= 1000, `rxe0 sent the WRITEs: ${JSON.stringify([c0, c1])}`);
    assert.ok(c1.rxe1!.rcvd_pkts! - c0.rxe1!.rcvd_pkts! >= 1000, `rxe1 received them: ${JSON.stringify([c0, c1])}`);
    assert.match(cl.out, /\tDevice         : rxe0\n/);
    assert.match(sr.out, /\tDevice         : rxe1\n/);
    assert.match(cl.out, new RegExp(`^ local address: .*\\n GID: 00:00:00:00:00:00:00:00:00:00:255:255:${A1.split('.').map((x) => x.padStart(2, '0')).join(':')}$`, 'm'));
    // no -d on either side: each runs where its connection went (rxe1), and says so rather than naming the first device
    port = nextPort++;
    srv = run('ib_write_bw', ['-R', '-p', String(port), ...args], d.root);
    await new Promise((r) => setTimeout(r, 400));
    cl = await run('ib_write_bw', ['-R', '-p', String(port), ...args, A2], d.root);
    sr = await srv;
    assert.equal(cl.code, 0, `client:\n${cl.out}\nserver:\n${sr.out}`);
    for (const o of [cl.out, sr.out]) assert.match(o, /\tDevice         : rxe1\n/);
  });

  test('the exchange, message by message, is the one perftest had in each captured run', { skip: haveCaptures ? false : 'no captures' }, async () => {
    for (const name of NAMES) {
      const c = capture(name);
      // the captured run's flags, on our devices; -m 1024 so the MTU message matches too
      const args = c.cmd.server.slice(1).filter((a, i, all) => a !== '-d' && all[i - 1] !== '-d' && a !== '-x' && all[i - 1] !== '-x');
      const port = nextPort++;
      const rec = await recorder(port);
      const sv = run(c.cmd.server[0]!, ['-d', 'rxe0', '-p', String(port), '-m', '1024', ...args], d.root);
      await new Promise((r) => setTimeout(r, 400));
      const cl = await run(c.cmd.server[0]!, ['-d', 'rxe1', '-p', String(rec.port), '-m', '1024', ...args, '127.0.0.1'], d.root);
      const sr = await sv;
      rec.server.close();
      assert.equal(cl.code, 0, `${name} client:\n${cl.out}`);
      assert.equal(sr.code, 0, `${name} server:\n${sr.out}`);
      for (const [dir, theirs, ours] of [['client', c.c2s, Buffer.concat(rec.c2s)], ['server', c.s2c, Buffer.concat(rec.s2c)]] as const) {
        assert.equal(ours.length, theirs.reduce((n, m) => n + m.length, 0), `${name} ${dir}: bytes sent`);
        let o = 0;
        for (const m of theirs) {
          const mine = ours.subarray(o, (o += m.length));
          const what = `${name} ${dir}: message at ${o - m.length} (${m.length} bytes)`;
          if (m.length === 16 || m.length === 4 || m.length === 2 || m.length === 5) assert.deepEqual(mine, m, what);
          else if (m.length === 108) assert.ok(decodeKey(mine), what);
        }
      }
    }
  });

  test('-a sweeps: every size, and the results as CSV, JSON and an SVG chart', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sv-sweep-'));
    const files = (k: string) => ['--chart', join(dir, `${k}.svg`), '--results_csv', join(dir, `${k}.csv`), '--results_json', join(dir, `${k}.json`)];
    // the client's files: a server given the same paths wrote them at the same moment (interleaved, or the
    // write server's one row last), which made this test fail now and then
    const bw = await pair('ib_write_bw', ['-a', '-n', '10'], 'rxe0', 'rxe1', undefined, files('bw'));
    const lat = await pair('ib_send_lat', ['-a', '-n', '20'], 'rxe0', 'rxe1', undefined, files('lat'));
    assert.equal(bw.c.out.match(BW_ROW)?.length, 23);
    assert.equal(bw.s.out.match(BW_ROW)?.length, 1, 'the write server prints the last size the client reported');
    assert.equal(lat.c.out.match(LAT_ROW)?.length, 23);
    assert.equal(lat.s.out.match(LAT_ROW)?.length, 23);
    for (const k of ['bw', 'lat']) {
      const csv = readFileSync(join(dir, `${k}.csv`), 'utf8').trim().split('\n');
      assert.equal(csv.length, 24);
      assert.deepEqual(csv.slice(1).map((l) => Number(l.split(',')[0])), Array.from({ length: 23 }, (_, i) => 2 ** (i + 1)));
      const json = JSON.parse(readFileSync(join(dir, `${k}.json`), 'utf8'));
      assert.equal(json.results.length, 23);
      assert.equal(json.tool, k === 'bw' ? 'ib_write_bw' : 'ib_send_lat');
      const svg = readFileSync(join(dir, `${k}.svg`), 'utf8');
      assert.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
      const lines = [...svg.matchAll(/<polyline [^>]*points="([^"]*)"/g)];
      assert.equal(lines.length, k === 'bw' ? 2 : 3);
      for (const l of lines) assert.equal(l[1]!.split(' ').length, 23);
      assert.match(svg, k === 'bw' ? /bandwidth \[MB\/sec\]/ : /latency \[usec\]/);
    }
    // the rows we wrote are the rows we printed
    const csvAvg = readFileSync(join(dir, 'bw.csv'), 'utf8').trim().split('\n').slice(1).map((l) => l.split(',')[2]);
    assert.deepEqual(csvAvg, [...bw.c.out.matchAll(BW_ROW)].map((m) => m[0].trim().split(/\s+/)[3]));
  });

  test('--out_json: each side writes its file, the write server with the numbers the client sent it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sv-json-'));
    const port = nextPort++;
    const sv = run('ib_write_bw', ['-d', 'rxe0', '-p', String(port), '-n', '200', '-s', '8192', '--out_json', '--out_json_file', join(dir, 's.json')], d.root);
    await new Promise((r) => setTimeout(r, 400));
    const cl = await run('ib_write_bw', ['-d', 'rxe1', '-p', String(port), '-n', '200', '-s', '8192', '--out_json', '--out_json_file', join(dir, 'c.json'), '127.0.0.1'], d.root);
    assert.equal(cl.code, 0, cl.out);
    assert.equal((await sv).code, 0);
    const [sj, cj] = ['s', 'c'].map((k) => readFileSync(join(dir, `${k}.json`), 'utf8'));
    for (const j of [sj, cj]) assert.match(j!, /^\{\ntest_info: \{\ntest: RDMA_Write_BW_Test,\n[^]*\},\nresults: \{\nMsgSize: 8192,\nn_iterations: 200,\nBW_peak: [\d.]+,\nBW_average: [\d.]+,\nMsgRate: [\d.]+,\n\},\n\}\n$/);
    assert.equal(/results: [^]*/.exec(sj!)![0], /results: [^]*/.exec(cj!)![0]);
    assert.match(cj!, /TX_depth : 128,/);
    assert.doesNotMatch(sj!, /TX_depth/);
  });

  test('-D: runs for the time asked, and shows live progress on a terminal (and only there)', { skip: spawnSync('script', ['--version']).status === 0 ? false : 'no script(1)' }, async () => {
    const port = nextPort++;
    const s = run('ib_write_bw', ['-d', 'rxe0', '-p', String(port), '-D', '3', '-s', '4096'], d.root);
    await new Promise((r) => setTimeout(r, 400));
    const t0 = Date.now();
    // script(1) gives the client a pseudo-terminal
    const cmdline = [process.execPath, tool('ib_write_bw'), '-d', 'rxe1', '-p', String(port), '-D', '3', '-s', '4096', '127.0.0.1'].join(' ');
    const c = await runProcess('script', ['-qec', cmdline, '/dev/null'], { ...process.env, SOFTVERBS_ROOT: d.root }, 30_000);
    const took = Date.now() - t0;
    const sr = await s;
    assert.equal(c.code, 0, c.out);
    assert.equal(sr.code, 0, sr.out);
    assert.ok(took >= 3000 && took < 15000, `took ${took} ms`);
    assert.match(c.out, /\r\x1b\[K [12]\/3 s {2}(warm-up|sampling|cool-down) {2}[\d.]+ MB\/sec {2}[\d.]+ Mpps/);
    assert.doesNotMatch(sr.out, /Mpps\r|\x1b\[K/, 'no terminal, no progress line');
    // what the terminal shows once the progress line has cleared itself
    const row = [...c.out.replace(/\r\n/g, '\n').replace(/\r\x1b\[K[^\r\n]*(?=\r)/g, '').replace(/\r\x1b\[K/g, '').matchAll(BW_ROW)];
    assert.equal(row.length, 1);
    assert.match(row[0]![0], /^ 4096 +[1-9]\d* +0\.00 +[\d.]+/, 'duration runs have no peak, as in perftest');
  });

  test('bad command lines: what perftest 4.5+0.17 printed for each (test/tools/fixtures/perftest/errors.txt), stream for stream', () => {
    const cases = readFileSync(join(DIST, '..', 'test', 'tools', 'fixtures', 'perftest', 'errors.txt'), 'utf8').split(/^=== /m).slice(1);
    assert.ok(cases.length >= 15);
    for (const c of cases) {
      const m = /^(.*)\nexit=(\d+)\n--stdout\n([^]*?)--stderr\n([^]*)$/.exec(c)!;
      const [t, ...args] = m[1]!.replace(/10\.77\.0\.1/g, '127.0.0.1').split(' ');
      const r = spawnSync(process.execPath, [tool(t!), ...args], { encoding: 'utf8', env: { ...process.env, SOFTVERBS_ROOT: d.root }, timeout: 20_000 });
      const want = (x: string) => x.replace(/10\.77\.0\.1/g, '127.0.0.1');
      assert.deepEqual({ cmd: m[1], exit: r.status, stdout: r.stdout, stderr: r.stderr }, { cmd: m[1], exit: Number(m[2]), stdout: want(m[3]!), stderr: want(m[4]!) });
    }
  });

  test('bad input: flags, devices, connections and peers, each with its own message', async () => {
    const r = (t: string, args: string[]) => run(t, args, d.root);
    let x = await r('ib_write_bw', ['-e']);
    assert.equal(x.code, 1);
    assert.match(x.out, /^ Events feature not available on WRITE verb\n Parser function exited with Error\n$/);
    x = await r('ib_read_bw', ['-I', '64']);
    assert.match(x.out, / Inline feature not available on READ\/Atomic verbs\n/);
    x = await r('ib_atomic_bw', ['-s', '64']);
    assert.equal(x.code, 1);
    assert.match(x.out, /Message size cannot be changed for Atomic tests/);
    x = await r('ib_send_bw', ['--bogus']);
    assert.equal(x.code, 1);
    assert.match(x.out, /unrecognized option '--bogus'\n Invalid Command or flag\.\n Please check command line and run again\.\n/);
    x = await r('ib_send_bw', ['-R', '-c', 'UD']);
    assert.equal(x.code, 1);
    assert.match(x.out, / -R with UD QPs is not supported by softverbs \(RC only\)/);
    x = await r('ib_write_lat', ['-n', '3']);
    assert.match(x.out, / Iteration num should be between 5 and 100000000\n/);
    x = await r('ib_send_bw', ['--help']);
    assert.equal(x.code, 0);
    assert.match(x.out, /^Usage:\n {2}ib_send_bw +start a server and wait for connection\n/);
    x = await r('ib_write_bw', ['-d', 'nope', '127.0.0.1']);
    assert.equal(x.code, 1);
    assert.match(x.out, /^IB device nope not found\n Unable to find the Infiniband\/RoCE device\n$/);
    x = await r('ib_write_bw', ['-d', 'rxe0', '-p', '99999', '127.0.0.1']);
    assert.equal(x.code, 1);
    assert.match(x.out, /^Problem in resolving basic address and port\nUnable to open file descriptor for socket connection Unable to init the socket connection\n$/m);
    x = await r('ib_write_bw', ['-d', 'rxe0', '-p', '1', '127.0.0.1']);
    assert.equal(x.code, 1);
    assert.match(x.out, /Couldn't connect to 127\.0\.0\.1:1\nUnable to open file descriptor for socket connection Unable to init the socket connection\n$/);

    // a peer that speaks an older exchange: refused, and we say what it spoke
    const port = nextPort++;
    const old = createServer((sock) => {
      sock.once('data', () => sock.write(Buffer.concat([Buffer.from('5.60'), Buffer.alloc(12)])));
      sock.on('error', () => {});
    });
    await new Promise<void>((res) => old.listen(port, '127.0.0.1', res));
    x = await r('ib_write_bw', ['-d', 'rxe0', '-p', String(port), '127.0.0.1']);
    old.close();
    assert.equal(x.code, 1);
    assert.match(x.out, /Current implementation is not compatible with versions older than 5\.70\n The peer speaks perftest exchange version "5\.60"; softverbs speaks 6\.06 \(perftest 4\.5-0\.17\)\n$/);

    // an rdma-core pingpong is not a perftest peer, and the server says so
    const p2 = nextPort++;
    const sv = r('ib_write_bw', ['-d', 'rxe0', '-p', String(p2)]);
    await new Promise((res) => setTimeout(res, 400));
    const pp = await runProcess(process.execPath, [join(DIST, 'src', 'bin', 'ibv_rc_pingpong.js'), '-d', 'rxe1', '-g', '0', '-p', String(p2), '127.0.0.1'], { ...process.env, SOFTVERBS_ROOT: d.root }, 20_000);
    x = await sv;
    assert.equal(x.code, 1);
    assert.match(x.out, /The peer speaks perftest exchange version "0000:[0-9a-f]{6}:[0-9a-f]{4}" \(it looks like an ibv_\*_pingpong address message\)/);
    assert.notEqual(pp.code, 0);

    // a peer that goes away mid-test: an error, not a wait for ever (rxe retries retry_cnt 7 for ever)
    const p3 = nextPort++;
    const child = spawn(process.execPath, [tool('ib_write_bw'), '-d', 'rxe0', '-p', String(p3), '-n', '100000000', '-s', '65536'], { env: { ...process.env, SOFTVERBS_ROOT: d.root }, stdio: 'ignore' });
    await new Promise((res) => setTimeout(res, 400));
    const cl = run('ib_write_bw', ['-d', 'rxe1', '-p', String(p3), '-n', '100000000', '-s', '65536', '127.0.0.1'], d.root, 30_000);
    await new Promise((res) => setTimeout(res, 1500));
    child.kill('SIGKILL');
    x = await cl;
    assert.equal(x.code, 1);
    assert.match(x.out, / The peer closed the out-of-band connection in the middle of the test \(did it exit\?\)\n$/);
  });
});

describe('perftest tools between two daemons (RoCEv2 on the wire, A1 <-> A2)', () => {
  let d1: RunningDaemon;
  let d2: RunningDaemon;
  before(async () => {
    d1 = await startDaemon(['--device', `rxe0=${A1}`]);
    d2 = await startDaemon(['--device', `rxe0=${A2}`]);
  });
  after(async () => {
    await d1?.stop();
    await d2?.stop();
  });
  const CASES: [string, string][] = [
    ['ib_write_bw', '-n 200 -s 8192'], ['ib_read_bw', '-n 200 -s 8192'], ['ib_atomic_bw', '-n 200'], ['ib_send_bw', '-n 200 -s 1024 -c UD'],
    ['ib_write_lat', '-n 100'], ['ib_send_lat', '-n 100 -s 4096'], ['ib_read_lat', '-n 100'], ['ib_atomic_lat', '-n 100 -A CMP_AND_SWAP'],
  ];
  for (const [t, args] of CASES) {
    test(`${t} ${args}`, async () => {
      const port = nextPort++;
      const a = args.split(' ');
      const s = run(t, ['-d', 'rxe0', '-p', String(port), ...a], d1.root);
      await new Promise((r) => setTimeout(r, 400));
      const c = await run(t, ['-d', 'rxe0', '-p', String(port), ...a, '127.0.0.1'], d2.root);
      const sr = await s;
      assert.equal(c.code, 0, `client:\n${c.out}\nserver:\n${sr.out}`);
      assert.equal(sr.code, 0, `server:\n${sr.out}`);
      assert.deepEqual(addrs(c.out, 'remote'), addrs(sr.out, 'local'));
      assert.deepEqual(addrs(sr.out, 'remote'), addrs(c.out, 'local'));
      assert.ok(addrs(c.out, 'local')[0]!.endsWith(` 00:00:00:00:00:00:00:00:00:00:255:255:${A2.split('.').map((o) => o.padStart(2, '0')).join(':')}`), addrs(c.out, 'local')[0]);
      assert.equal(c.out.match(t.endsWith('_lat') ? LAT_ROW : BW_ROW)?.length, 1, c.out);
    });
  }
});
