/**
 * UD multicast against Linux rxe 6.1 (rdma-core 44's mckey in the lab VM), run by `npm run test:interop`:
 * rdma_cm joins on both hosts (the guest's kernel sends the IGMP report, our device's group socket joins on the
 * lab's interface), our mckey sending to rdma-core's and rdma-core's to ours, every message arriving; the
 * daemon's capture (softverbsd --pcap) shows both directions' frames as tshark dissects RoCEv2: IPv4 multicast
 * to the group, UD SEND only with immediate to QPN 0xFFFFFF, Q_Key 0x01234567.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { DIST, runProcess, startDaemon, type Run, type RunningDaemon } from '../helpers.js';

const PEER = process.env.LAB_PEER ?? '';
const HOST = process.env.LAB_HOST ?? '10.77.0.1';
const LAB = process.env.LAB_DIR ?? '';
const skip = PEER && LAB ? false : 'LAB_PEER/LAB_DIR are not set: run through `npm run test:interop`';

const run = (cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<Run> => runProcess(cmd, args, env, 60_000);
const group = () => `239.77.${Math.floor(Math.random() * 256)}.${1 + Math.floor(Math.random() * 250)}`;

describe('mckey: softverbs <-> rdma-core 44 on Linux rxe (IPv4 multicast)', { skip }, () => {
  let d: RunningDaemon;
  const tmp = mkdtempSync(join(tmpdir(), 'softverbs-mcast-lab-'));
  const pcap = join(tmp, 'mcast.pcap');
  const groups: string[] = [];
  before(async () => {
    d = await startDaemon(['--device', `rxe0=${HOST}`, '--pcap', pcap]);
  });
  after(async () => {
    await d?.stop();
    rmSync(tmp, { recursive: true, force: true });
  });
  const ours = (args: string[]) => run(process.execPath, [join(DIST, 'src', 'bin', 'mckey.js'), ...args], { ...process.env, SOFTVERBS_ROOT: d.root });
  const theirs = (args: string) => run(join(LAB, 'vm-exec.sh'), ['1', `timeout 40 stdbuf -oL mckey ${args}`]);

  /** The receiver first; the sender once the receiver has joined (mckey's own three seconds cover the rest). */
  async function meet(recv: () => Promise<Run>, send: () => Promise<Run>): Promise<[Run, Run]> {
    const r = recv();
    await new Promise((res) => setTimeout(res, 2500));
    const s = await send();
    return [await r, s];
  }

  for (const oursSends of [true, false]) {
    test(`mckey -C 10 -S 200, softverbs ${oursSends ? 'sends' : 'receives'}, Linux ${oursSends ? 'receives' : 'sends'}`, async () => {
      const g = group();
      groups.push(g);
      const [r, s] = oursSends
        ? await meet(() => theirs(`-m ${g} -b ${PEER} -C 10 -S 200`), () => ours(['-m', g, '-b', HOST, '-s', '-C', '10', '-S', '200']))
        : await meet(() => ours(['-m', g, '-b', HOST, '-C', '10', '-S', '200']), () => theirs(`-m ${g} -b ${PEER} -s -C 10 -S 200`));
      const joined = `mckey: joined dgid: ::ffff:${g} mlid 0x0 sl 0\n`;
      assert.equal(r.code, 0, `receiver:\n${r.out}`);
      assert.equal(s.code, 0, `sender:\n${s.out}`);
      assert.equal(r.out, `mckey: starting server\nmckey: joining\n${joined}receiving data transfers\ndata transfers complete\ntest complete\nreturn status 0\n`);
      assert.equal(s.out, `mckey: starting client\nmckey: joining\n${joined}initiating data transfers\ndata transfers complete\ntest complete\nreturn status 0\n`);
    });
  }

  test('tshark dissects the frames both ways as RoCEv2 UD SENDs to QPN 0xFFFFFF at the group', { skip: spawnSync('tshark', ['-v']).error ? 'tshark is not installed' : false }, async () => {
    assert.equal(groups.length, 2, 'the two mckey runs came first');
    await d.stop();
    const t = spawnSync('tshark', ['-r', pcap, '-d', 'udp.port==4791,infiniband', '-T', 'fields', '-E', 'separator=,', '-e', 'ip.src', '-e', 'ip.dst', '-e', 'infiniband.bth.opcode', '-e', 'infiniband.bth.destqp', '-e', 'infiniband.deth.q_key'], { encoding: 'utf8' });
    assert.equal(t.status, 0, t.stderr);
    const rows = t.stdout.trim().split('\n');
    // opcode 101: UD SEND only with immediate; the Q_Key is rdma_cm's for IPv4 groups
    const want = (src: string, g: string) => `${src},${g},101,0xffffff,0x0000000001234567`;
    assert.equal(rows.filter((r) => r === want(HOST, groups[0]!)).length, 10, `our frames to ${groups[0]}:\n${t.stdout}`);
    assert.equal(rows.filter((r) => r === want(PEER, groups[1]!)).length, 10, `Linux's frames to ${groups[1]}:\n${t.stdout}`);
  });
});
