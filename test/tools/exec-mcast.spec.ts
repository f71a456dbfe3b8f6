/**
 * UD multicast with rdma-core's programs through softverbs exec (as the unprivileged svtest-alice): rdmacm-utils'
 * mckey (rdma_join_multicast, ibv_attach_mcast on MULTICAST_JOIN, SEND_WITH_IMMs to QPN 0xFFFFFF,
 * rdma_leave_multicast with ibv_detach_mcast) receiving on one device and sending from the other, C with C and
 * C with our mckey both ways, each receiver hearing all -C messages of every sender's id.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { A1, A2, DIST, type RunningDaemon } from '../helpers.js';
import { C_TOOLS, execSkip, launchers, pair, preloadDaemon, start } from './exec-harness.js';

const skip = execSkip(['mckey']);

/** A group of its own per test (and per run), so concurrent runs on this host never meet. */
const group = () => `239.${10 + Math.floor(Math.random() * 200)}.${Math.floor(Math.random() * 256)}.${1 + Math.floor(Math.random() * 250)}`;

const joined = (g: string) => `mckey: joined dgid: ::ffff:${g} mlid 0x0 sl 0\n`;
const receiverOut = (g: string, n = 1) => `mckey: starting server\nmckey: joining\n${joined(g).repeat(n)}receiving data transfers\ndata transfers complete\ntest complete\nreturn status 0\n`;
const senderOut = (g: string, n = 1) => `mckey: starting client\nmckey: joining\n${joined(g).repeat(n)}initiating data transfers\ndata transfers complete\ntest complete\nreturn status 0\n`;

describe('mckey through softverbs exec', { skip }, () => {
  let d: RunningDaemon;
  const tmp = mkdtempSync(join(tmpdir(), 'softverbs-exec-mcast-'));
  const L = launchers(() => d.root);
  /** rdma-core's mckey line-buffered (its printf()s reach a pipe only at exit otherwise: "joined" is waited for) */
  const C: typeof L.c = (tool, ...args) =>
    [...L.alice.as, process.execPath, join(DIST, 'src', 'bin', 'softverbs.js'), 'exec', '--', 'stdbuf', '-oL', join(C_TOOLS, tool), ...args];
  type Tool = typeof L.c;

  before(async () => {
    d = await preloadDaemon(tmp, null);
  });
  after(async () => {
    await d?.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  /** A receiver on rxe1 that has joined (its line printed), then a sender on rxe0; both runs. */
  async function meet(recv: Tool, send: Tool, g: string, extra: { recv?: string[]; send?: string[] } = {}) {
    const r = start(recv('mckey', '-m', g, '-b', A2, ...(extra.recv ?? [])), L.env(), 40_000);
    for (const end = Date.now() + 15_000; !r.out().includes('receiving data transfers') && Date.now() < end;) await new Promise((res) => setTimeout(res, 50));
    assert.match(r.out(), /receiving data transfers/, `the receiver never got going:\n${r.out()}`);
    const s = start(send('mckey', '-m', g, '-b', A1, '-s', ...(extra.send ?? [])), L.env(), 40_000);
    return Promise.all([r.done, s.done]);
  }

  for (const [recv, send, who] of [[C, C, 'rdma-core with rdma-core'], [C, L.ours, 'rdma-core receives from ours'], [L.ours, C, 'ours receives from rdma-core']] as const) {
    test(`mckey -C 10: ${who}`, async () => {
      const g = group();
      const [r, s] = await meet(recv, send, g);
      assert.equal(r.code, 0, r.out);
      assert.equal(s.code, 0, s.out);
      assert.equal(r.out, receiverOut(g));
      assert.equal(s.out, senderOut(g));
    });
  }

  test('mckey -c 2 -C 5 -S 1000: two ids (two QPs in the group) on each side; each receiving QP hears all ten', async () => {
    const g = group();
    // two sender ids x 5 messages reach each of the receiver's QPs: it waits for -C 10 on each
    const [r, s] = await meet(C, C, g, { recv: ['-c', '2', '-C', '10', '-S', '1000'], send: ['-c', '2', '-C', '5', '-S', '1000'] });
    assert.equal(r.code, 0, r.out);
    assert.equal(s.code, 0, s.out);
    assert.equal(r.out, receiverOut(g, 2));
  });

  // perftest -g on RoCEv2 over IPv4: its default MGID (ff01::…) is no IPv4 group, and perftest refuses the mix of GID
  // types ("Found Incompatibility issue with GID types") as on Linux rxe; -M names an IPv4-mapped group
  const combos = [['ib_send_bw', L.c, L.c], ['ib_send_bw', L.ours, L.c], ['ib_send_bw', L.c, L.ours], ['ib_send_lat', L.c, L.c], ['ib_send_lat', L.ours, L.c], ['ib_send_lat', L.c, L.ours]] as const;
  for (const [t, srv, cli] of combos) {
    const who = `${srv === L.c ? 'perftest\'s' : 'our'} server, ${cli === L.c ? 'perftest\'s' : 'our'} client`;
    test(`${t} -g -M ::ffff:239.x.y.z (${who}): the server attached to the group, the client sending to QPN 0xFFFFFF`, { skip: execSkip([t]) }, async () => {
      const g = group().split('.');
      const mgid = ['0', '0', '0', '0', '0', '0', '0', '0', '0', '0', '255', '255', ...g].join(':');
      const args = (dev: string, p: string) => ['-d', dev, '-x', '0', '-p', p, '-n', '200', '-g', '-M', mgid];
      const [s, c] = await pair((p) => srv(t, ...args('rxe1', p)), (p) => cli(t, ...args('rxe0', p), A2), L.env(), 60_000);
      assert.equal(s.code, 0, s.out);
      assert.equal(c.code, 0, c.out);
      const mg = `MGID: ${['00', '00', '00', '00', '00', '00', '00', '00', '00', '00', '255', '255', ...g.map((x) => x.padStart(2, '0'))].join(':')}`;
      for (const r of [s, c]) {
        assert.match(r.out, t === 'ib_send_bw' ? /Send BW Multicast Test/ : /Send Latency Multicast Test/);
        assert.ok(r.out.includes(mg), `${mg} in\n${r.out}`);
        assert.doesNotMatch(r.out, /Couldn't|Failed|Unable|error/);
      }
      // the server's own address is the group's: QPN 0xFFFFFF
      assert.match(s.out, / local address: LID 0000 QPN 0xffffff /);
      assert.match(c.out, / remote address: LID 0000 QPN 0xffffff /);
      assert.match(c.out, t === 'ib_send_bw' ? /\n 2 +200 +\d+\.\d+ +\d+\.\d+|\n 65536|\n 4096 +200 +\d+\.\d+ +\d+\.\d+/ : /\n 2 +200 +\d+\.\d+/);
    });
  }

  test('mckey -S over the active MTU fails as rdma-core\'s does', async () => {
    const g = group();
    const r = start(C('mckey', '-m', g, '-b', A1, '-S', '5000'), L.env(), 20_000);
    const o = start(L.ours('mckey', '-m', g, '-b', A1, '-S', '5000'), L.env(), 20_000);
    const [cr, or] = await Promise.all([r.done, o.done]);
    // stdout and stderr (perror's lines) arrive through two pipes: compared as sets of lines
    const lines = (o: string) => o.split('\n').sort();
    assert.deepEqual(lines(or.out), lines(cr.out));
    assert.equal(or.code, cr.code);
    assert.match(cr.out, /message_size 5000 is larger than active mtu 4096/);
  });
});
