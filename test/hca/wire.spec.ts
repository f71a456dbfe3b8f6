/**
 * Two devices talking: in one daemon (the local FIFO) and in two daemons
 * (RoCEv2 datagrams over UDP on 127.0.0.1 <-> 127.0.0.2). The same
 * requester/responder/completer serve both; every byte is checked.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { encodeFrame } from '../../src/hca/codec.js';
import { Pkt } from '../../src/hca/packet.js';
import { Access, getDeviceList, openDevice, QpType, SendFlags, WcStatus, WrOpcode } from '../../src/verbs/index.js';
import { exercise } from '../fixtures/exercise.js';
import { connectQp, DIST, mgmt, pattern, pollN, startDaemon, type RunningDaemon , A1, A2 } from '../helpers.js';

describe('two devices of one daemon', () => {
  let d: RunningDaemon;
  before(async () => {
    d = await startDaemon(['--device', `rxe0=${A1}`, '--device', `rxe1=${A2}`]);
  });
  after(async () => d.stop());
  test('RC SEND/WRITE/READ of 1 MiB, both atomics and UD SEND between rxe0 and rxe1', async () => {
    await exercise(d.root, 'rxe0', d.root, 'rxe1');
  });
});

const root = process.getuid?.() === 0;
for (const wire of ['raw', 'udp'] as const) {
  describe(`two daemons over RoCEv2 (A1 <-> A2), wire=${wire}`, { skip: wire === 'raw' && !root ? 'a raw socket needs CAP_NET_RAW (run as root)' : false }, () => {
    let d1: RunningDaemon;
    let d2: RunningDaemon;
    before(async () => {
      d1 = await startDaemon(['--device', `rxe0=${A1},wire=${wire}`]);
      d2 = await startDaemon(['--device', `rxe0=${A2},wire=${wire}`]);
    });
    after(async () => {
      await d1.stop();
      await d2.stop();
    });
    test('the same operations cross the wire byte-exact; packets are counted on both sides', async () => {
      const dev1 = getDeviceList(d1.root)[0]!;
      const dev2 = getDeviceList(d2.root)[0]!;
      assert.equal((await mgmt(dev1.devPath, 'devices'))[0].wire, wire);
      await exercise(d1.root, 'rxe0', d2.root, 'rxe0');
      const c1 = (await mgmt(dev1.devPath, 'counters'))[0].counters;
      const c2 = (await mgmt(dev2.devPath, 'counters'))[0].counters;
      // 256 SEND + 256 WRITE + 1 READ request + 2 atomics + 1 UD from rxe0; 256 READ responses, ACKs and 2 atomic ACKs back
      assert.ok(c1.sent_pkts >= 516 && c2.rcvd_pkts >= 516, `${c1.sent_pkts} sent, ${c2.rcvd_pkts} received`);
      assert.ok(c2.sent_pkts >= 258 && c1.rcvd_pkts >= 258, `${c2.sent_pkts} sent back, ${c1.rcvd_pkts} received`);
      // raw: every arriving ICRC was checked against the IP header as it arrived, and none was dropped
      for (const d of [dev1, dev2]) assert.deepEqual((await mgmt(d.devPath, 'devices'))[0].wireDropped, {});
    });
  });
}

describe('wire=udp: a stream makes the port socket the daemon\'s to read, with UDP GRO', () => {
  let d1: RunningDaemon;
  let d2: RunningDaemon;
  before(async () => {
    d1 = await startDaemon(['--device', `rxe0=${A1},wire=udp`]);
    d2 = await startDaemon(['--device', `rxe0=${A2},wire=udp`]);
  });
  after(async () => {
    await d1?.stop();
    await d2?.stop();
  });
  test('merged GSO trains split into their frames byte-exact; after a quiet spell a lone frame is still read', async () => {
    const view = async (d: RunningDaemon) => (await mgmt(getDeviceList(d.root)[0]!.devPath, 'devices'))[0];
    assert.equal((await view(d2)).wireReader, 'node', 'Node reads until a stream comes');
    const a = await openDevice(getDeviceList(d1.root)[0]!, d1.root);
    const b = await openDevice(getDeviceList(d2.root)[0]!, d2.root);
    try {
      const ALL = Access.LOCAL_WRITE | Access.REMOTE_WRITE;
      const [pa, pb] = [await a.allocPd(), await b.allocPd()];
      const [ca, cb] = [await a.createCq(512), await b.createCq(512)];
      const qa = await pa.createQp({ sendCq: ca, recvCq: ca, qpType: QpType.RC, cap: { maxSendWr: 256 } });
      const qb = await pb.createQp({ sendCq: cb, recvCq: cb, qpType: QpType.RC, cap: { maxRecvWr: 16 } });
      const SZ = 64 << 10;
      const N = 256;
      const src = await pa.allocMr(N * SZ, ALL);
      const dst = await pb.allocMr(N * SZ, ALL);
      await connectQp(qa, a, { qpn: qb.qpNum, gid: b.queryGid(1, 0) });
      await connectQp(qb, b, { qpn: qa.qpNum, gid: a.queryGid(1, 0) });
      // 64 KiB WRITEs, 128 at a time, until the receiving daemon has taken the socket over; then a verified round
      const round = async (seed: number) => {
        pattern(seed, N * SZ).copy(src.buf, 0);
        for (let i = 0; i < N; i += 128) {
          for (let k = i; k < i + 128; k++) qa.postSend({ wrId: BigInt(k), opcode: WrOpcode.RDMA_WRITE, sendFlags: SendFlags.SIGNALED, sgList: [src.sge(k * SZ, SZ)], rdma: { remoteAddr: dst.addr + BigInt(k * SZ), rkey: dst.rkey } });
          assert.ok((await pollN(ca, 128, 20000)).every((w) => w.status === WcStatus.SUCCESS));
        }
      };
      for (let seed = 1; (await view(d2)).wireReader === 'node'; seed++) {
        assert.ok(seed < 20, 'no stream took the socket over');
        await round(seed);
      }
      await round(99);
      assert.ok(dst.buf.subarray(0, N * SZ).equals(pattern(99, N * SZ)), 'every byte as written');
      const v = await view(d2);
      assert.ok(v.wireMerged > 0, `GRO merged datagrams: ${v.wireMerged}`);
      // quiet for longer than a thread's wait: then single frames both ways, a WRITE and its ACK
      await new Promise((r) => setTimeout(r, 300));
      src.buf.write('after the quiet', 0);
      qa.postSend({ wrId: 1n, opcode: WrOpcode.RDMA_WRITE, sendFlags: SendFlags.SIGNALED, sgList: [src.sge(0, 15)], rdma: { remoteAddr: dst.addr, rkey: dst.rkey } });
      assert.equal((await pollN(ca, 1, 5000))[0]!.status, WcStatus.SUCCESS);
      assert.equal(dst.buf.toString('latin1', 0, 15), 'after the quiet');
      for (const d of [d1, d2]) assert.deepEqual((await view(d)).wireDropped, {});
    } finally {
      a.closeDevice();
      b.closeDevice();
    }
  });
});

describe('without CAP_NET_RAW', () => {
  const setpriv = spawnSync('setpriv', ['--version']).status === 0 && process.getuid?.() === 0;
  test('IPv4 falls back to plain UDP and says so (log, ibv_devinfo -v); what it sends passes a raw peer\'s ICRC checks, GSO trains included; a kernel-chosen IP ID does not', { skip: setpriv ? false : 'needs root and setpriv (util-linux)' }, async () => {
    const d1 = await startDaemon(['--device', `rxe0=${A1}`], { wrapper: ['setpriv', '--inh-caps', '-net_raw', '--bounding-set', '-net_raw'] });
    const d2 = await startDaemon(['--device', `rxe0=${A2}`]);
    try {
      assert.match(d1.stderr(), /no CAP_NET_RAW: arriving IPv4 ICRCs are not checked .*; sent ones are exact/);
      assert.match(d2.stderr(), /through a raw socket/);
      const dev1 = getDeviceList(d1.root)[0]!;
      assert.equal((await mgmt(dev1.devPath, 'devices'))[0].wire, 'udp');
      const out = execFileSync(process.execPath, [join(DIST, 'src', 'bin', 'ibv_devinfo.js'), '-v'], { env: { ...process.env, SOFTVERBS_ROOT: d1.root }, encoding: 'utf8' });
      assert.match(out, /\n\tsoftverbs_wire:\t\t\tudp: no CAP_NET_RAW/);
      const out2 = execFileSync(process.execPath, [join(DIST, 'src', 'bin', 'ibv_devinfo.js'), '-v'], { env: { ...process.env, SOFTVERBS_ROOT: d2.root }, encoding: 'utf8' });
      assert.doesNotMatch(out2, /softverbs_wire/);
      // without root, every frame still carries the IP ID its ICRC covers (0, or its index in a GSO message): the raw
      // peer checks each as Linux rxe would and drops none; 1 MiB SENDs/WRITEs/READs go as GSO trains
      await exercise(d1.root, 'rxe0', d2.root, 'rxe0');
      assert.deepEqual((await mgmt(getDeviceList(d2.root)[0]!.devPath, 'devices'))[0].wireDropped, {});
      // an ICRC over IP ID 0 from an ordinary socket, whose kernel picks another ID: d2 checks and drops it
      const p = new Pkt();
      p.opcode = 0x11; // RC ACKNOWLEDGE
      p.destQpn = 17;
      const buf = new Uint8Array(64);
      const n = encodeFrame(p, new Uint8Array([127, 0, 0, 1]), new Uint8Array([127, 0, 0, 2]), 0, buf);
      const s = createSocket('udp4');
      await new Promise<void>((r) => s.send(buf.subarray(28, n), 4791, A2, () => r()));
      s.close();
      const deadline = Date.now() + 2000;
      let dropped: Record<string, number> = {};
      while (Date.now() < deadline && !dropped['bad ICRC']) {
        dropped = (await mgmt(getDeviceList(d2.root)[0]!.devPath, 'devices'))[0].wireDropped;
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.equal(dropped['bad ICRC'], 1);
    } finally {
      await d1.stop();
      await d2.stop();
    }
  });
});

describe('IPv6', () => {
  const netns = spawnSync('unshare', ['--net', 'true']).status === 0 && spawnSync('ip', ['-V']).status === 0;
  test('two daemons on fd00::1 and fd00::2: every operation byte-exact, every arriving ICRC checked', { skip: netns ? false : 'needs unshare --net and ip (root)' }, () => {
    // a private namespace: its loopback gets two IPv6 addresses the test can own
    const script = 'ip link set lo up && ip -6 addr add fd00::1/128 dev lo && ip -6 addr add fd00::2/128 dev lo && exec "$0" "$@"';
    const r = spawnSync('unshare', ['--net', 'sh', '-c', script, process.execPath, join(DIST, 'test', 'fixtures', 'v6wire.js')], { encoding: 'utf8', timeout: 60000 });
    assert.equal(r.status, 0, r.stderr);
    const [a, b] = JSON.parse(r.stdout.trim().split('\n').pop()!);
    for (const x of [a, b]) {
      assert.equal(x.wire, 'udp', 'IPv6 uses a plain UDP socket');
      assert.deepEqual(x.dropped, {}, 'no ICRC failed');
      assert.match(x.log, /RoCEv2 on plain UDP port 4791\n/, 'IPv6 needs no fallback note: its ICRC is exact');
    }
    assert.ok(a.sent >= 516 && b.rcvd >= 516 && b.sent >= 258 && a.rcvd >= 258, JSON.stringify([a.sent, a.rcvd, b.sent, b.rcvd]));
  });
});
