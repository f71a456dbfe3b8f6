/**
 * The codec against real Linux rxe traffic: every RoCEv2 packet of every
 * capture in ../shared/captures decodes, its ICRC recomputes to the captured
 * value, and re-encoding the decoded packet gives back the same bytes.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { decode, encode, encodeFrame, headerBytes, icrc, icrcOk, ROCE_PORT, udpSport, udpSportOfQpn } from '../../src/hca/codec.js';
import { M, OPCODES } from '../../src/hca/opcodes.js';
import { Pkt } from '../../src/hca/packet.js';
import { PcapWriter } from '../../src/hca/pcap.js';
import { DIST } from '../helpers.js';

const CAPTURES = join(DIST, '..', 'test', 'fixtures', 'captures');

interface Frame { ip: Uint8Array; udp: Uint8Array; roce: Uint8Array; file: string; n: number }

/** RoCEv2 frames of a classic pcap (Ethernet link type), IPv4 or IPv6. */
function roceFrames(file: string): Frame[] {
  const b = readFileSync(file);
  const le = b.readUInt32LE(0) === 0xa1b2c3d4;
  const u32 = (o: number) => (le ? b.readUInt32LE(o) : b.readUInt32BE(o));
  assert.equal(u32(20), 1, 'Ethernet captures');
  const out: Frame[] = [];
  let o = 24;
  let n = 0;
  while (o + 16 <= b.length) {
    const incl = u32(o + 8);
    const f = b.subarray(o + 16, o + 16 + incl);
    o += 16 + incl;
    n++;
    let eth = 12;
    let type = f.readUInt16BE(eth);
    if (type === 0x8100) type = f.readUInt16BE((eth += 4));
    const ipOff = eth + 2;
    let ip: Uint8Array;
    let udpOff: number;
    if (type === 0x0800) {
      const ihl = (f[ipOff]! & 0xf) * 4;
      if (f[ipOff + 9] !== 17) continue;
      ip = f.subarray(ipOff, ipOff + ihl);
      udpOff = ipOff + ihl;
    } else if (type === 0x86dd) {
      if (f[ipOff + 6] !== 17) continue;
      ip = f.subarray(ipOff, ipOff + 40);
      udpOff = ipOff + 40;
    } else continue;
    if (f.readUInt16BE(udpOff + 2) !== ROCE_PORT) continue;
    const udpLen = f.readUInt16BE(udpOff + 4);
    out.push({ ip, udp: f.subarray(udpOff, udpOff + 8), roce: f.subarray(udpOff + 8, udpOff + udpLen), file, n });
  }
  return out;
}

const files = existsSync(CAPTURES) ? readdirSync(CAPTURES).filter((f) => f.endsWith('.pcap')).sort() : [];

test('every RoCEv2 packet of the rxe captures decodes, checks its ICRC and re-encodes byte for byte', { skip: files.length ? false : `no captures at ${CAPTURES}` }, () => {
  let total = 0;
  const seen = new Map<string, number>();
  for (const f of files) {
    const frames = roceFrames(join(CAPTURES, f));
    // each capture's own summary (written by the lab's tshark-based tool) says how many RoCEv2 frames it holds
    const summary = /RoCEv2 \(UDP 4791\): (\d+)/.exec(readFileSync(join(CAPTURES, f.replace(/\.pcap$/, '.txt')), 'utf8'));
    assert.equal(frames.length, Number(summary![1]), `${f}: RoCEv2 frames`);
    for (const fr of frames) {
      total++;
      const where = `${f} frame ${fr.n}`;
      const p = new Pkt();
      const err = decode(fr.roce, 0, fr.roce.length, p);
      assert.equal(err, null, where);
      const name = OPCODES[p.opcode]!.name;
      seen.set(name, (seen.get(name) ?? 0) + 1);
      const body = fr.roce.subarray(0, fr.roce.length - 4);
      const wire = Buffer.from(fr.roce.subarray(fr.roce.length - 4)).readUInt32LE(0);
      assert.equal(icrc(fr.ip, fr.udp, body), wire, `${where}: ICRC`);
      // the decoded fields say everything the bytes say
      assert.equal(p.payLen + p.padCnt + headerBytes(p.mask), body.length, where);
      const again = new Uint8Array(body.length + 4);
      const n = encode(p, again, 0);
      assert.equal(n, body.length, where);
      assert.deepEqual(Buffer.from(again.subarray(0, n)), Buffer.from(body), `${where}: re-encoded bytes`);
      // as the wire encodes: at an offset in an arena, through one DataView over all of it
      const arena = new Uint8Array(body.length + 64).fill(0xee);
      assert.equal(encode(p, arena, 29, new DataView(arena.buffer)), n, where);
      assert.deepEqual(Buffer.from(arena.subarray(29, 29 + n)), Buffer.from(body), `${where}: re-encoded in an arena`);
      if (p.mask & M.DETH) assert.ok(p.qkey !== 0, where);
    }
  }
  // 1,712 across the 12 captures (each file's count is checked above)
  assert.equal(total, 1712, 'every RoCEv2 packet of the captures');
  for (const op of ['RC_SEND_FIRST', 'RC_SEND_MIDDLE', 'RC_SEND_LAST', 'RC_SEND_LAST_WITH_IMMEDIATE', 'RC_SEND_ONLY', 'RC_SEND_ONLY_WITH_IMMEDIATE',
    'RC_RDMA_WRITE_FIRST', 'RC_RDMA_WRITE_MIDDLE', 'RC_RDMA_WRITE_LAST', 'RC_RDMA_WRITE_LAST_WITH_IMMEDIATE', 'RC_RDMA_WRITE_ONLY',
    'RC_RDMA_WRITE_ONLY_WITH_IMMEDIATE', 'RC_RDMA_READ_REQUEST', 'RC_RDMA_READ_RESPONSE_FIRST', 'RC_RDMA_READ_RESPONSE_MIDDLE',
    'RC_RDMA_READ_RESPONSE_LAST', 'RC_RDMA_READ_RESPONSE_ONLY', 'RC_ACKNOWLEDGE', 'RC_ATOMIC_ACKNOWLEDGE', 'RC_COMPARE_SWAP', 'RC_FETCH_ADD',
    'UC_SEND_FIRST', 'UC_SEND_MIDDLE', 'UC_SEND_LAST', 'UD_SEND_ONLY']) {
    assert.ok(seen.has(op), `the captures exercise ${op}`);
  }
});

test('our framing rebuilds every captured frame: IP and UDP headers as rxe wrote them, same ICRC; source ports as rxe picks them', { skip: files.length ? false : `no captures at ${CAPTURES}` }, () => {
  let framed = 0;
  let ported = 0;
  for (const f of files) {
    for (const fr of roceFrames(join(CAPTURES, f))) {
      const where = `${f} frame ${fr.n}`;
      const p = new Pkt();
      assert.equal(decode(fr.roce, 0, fr.roce.length, p), null, where);
      const sport = (fr.udp[0]! << 8) | fr.udp[1]!;
      p.srcPort = sport;
      const v6 = fr.ip.length === 40;
      if (v6 || fr.ip.length !== 20) continue;
      const buf = new Uint8Array(20 + 8 + fr.roce.length);
      const n = encodeFrame(p, fr.ip.subarray(12, 16), fr.ip.subarray(16, 20), (fr.ip[4]! << 8) | fr.ip[5]!, buf);
      assert.equal(n, buf.length, where);
      // identical but for what the ICRC masks (TOS, TTL, checksums), which rxe sets from its route
      const ipMask = [1, 8, 10, 11];
      for (let i = 0; i < 20; i++) if (!ipMask.includes(i)) assert.equal(buf[i], fr.ip[i], `${where}: IP byte ${i}`);
      assert.deepEqual(Buffer.from(buf.subarray(20, 26)), Buffer.from(fr.udp.subarray(0, 6)), `${where}: UDP header`);
      assert.deepEqual(Buffer.from(buf.subarray(28)), Buffer.from(fr.roce), `${where}: packet and ICRC`);
      assert.ok(icrcOk(buf.subarray(0, 20), buf.subarray(20, 28), buf.subarray(28)), where);
      framed++;
      // rxe: UD and QP1 keep hash_32(qpn) from creation; connected QPs take rdma_get_udp_sport(0, lqpn, rqpn)
      // (in these captures both ends of every connection have the same QPN; rping's flow label comes from the CM)
      if (p.mask & M.DETH) {
        assert.equal(sport, udpSportOfQpn(p.srcQpn), `${where}: UD source port`);
        ported++;
      } else if (!f.includes('cm')) {
        assert.equal(sport, udpSport(0, p.destQpn, p.destQpn), `${where}: RC/UC source port`);
        ported++;
      }
    }
  }
  assert.ok(framed > 1500 && ported > 1400, `${framed} frames rebuilt, ${ported} source ports checked`);
});

test('a flipped bit anywhere changes the ICRC; short and malformed packets are refused with a reason', () => {
  const p = new Pkt();
  p.opcode = 0x0a; // RC_RDMA_WRITE_ONLY
  p.destQpn = 0x11;
  p.psn = 5;
  p.va = 0x1000;
  p.rkey = 0x1234;
  p.dmaLen = 3;
  p.payload = new Uint8Array([1, 2, 3]);
  p.payLen = 3;
  const buf = new Uint8Array(64);
  const n = encode(p, buf, 0);
  assert.equal(n, 12 + 16 + 3 + 1);
  const ip = new Uint8Array(20);
  ip[0] = 0x45;
  const udp = new Uint8Array(8);
  const c = icrc(ip, udp, buf.subarray(0, n));
  for (let i = 0; i < n; i++) {
    const x = buf.slice(0, n);
    x[i]! ^= 1;
    if (i === 4) continue; // FECN/BECN byte is masked
    assert.notEqual(icrc(ip, udp, x), c, `bit in byte ${i}`);
  }
  const q = new Pkt();
  assert.equal(decode(buf, 0, 10, q), 'shorter than its headers');
  const bad = buf.slice(0, n + 4);
  bad[0] = 0x1f;
  assert.equal(decode(bad, 0, n + 4, q), 'unknown opcode');
  const ack = new Pkt();
  ack.opcode = 0x11;
  const ab = new Uint8Array(32);
  const an = encode(ack, ab, 0);
  assert.equal(decode(ab, 0, an + 4 + 4, q), 'payload on an opcode that carries none');
});

// The captures hold no IETH (no Linux rxe tool sends with invalidate): SEND_WITH_INV's two opcodes are checked by
// round trip through our codec and against tshark's InfiniBand dissector, which reads the IETH where IBA 9.3.4 puts it.
const haveTshark = spawnSync('tshark', ['--version']).status === 0;
test('IETH: SEND_LAST/ONLY_WITH_INVALIDATE encode BTH, IETH (the rkey, big-endian), payload; decode back; tshark reads the same rkey', { skip: haveTshark || process.env.CI ? false : 'tshark is not installed' }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'softverbs-ieth-'));
  const file = join(dir, 'ieth.pcap');
  const w = new PcapWriter(file);
  const cases = [
    { opcode: 0x17, name: 'RC_SEND_ONLY_WITH_INVALIDATE', rkey: 0x80001a5, payload: [1, 2, 3, 4, 5] },
    { opcode: 0x16, name: 'RC_SEND_LAST_WITH_INVALIDATE', rkey: 0xfedcba98, payload: [9] },
    { opcode: 0x17, name: 'RC_SEND_ONLY_WITH_INVALIDATE', rkey: 0x12345678, payload: [] },
  ];
  for (const c of cases) {
    assert.equal(OPCODES[c.opcode]!.name, c.name);
    assert.ok(OPCODES[c.opcode]!.mask & M.IETH);
    assert.equal(headerBytes(OPCODES[c.opcode]!.mask), 12 + 4, 'BTH and IETH');
    const p = new Pkt();
    p.opcode = c.opcode;
    p.destQpn = 0x11;
    p.psn = 0x123456;
    p.rkey = c.rkey;
    p.payload = new Uint8Array(c.payload);
    p.payLen = c.payload.length;
    p.padCnt = (4 - (p.payLen & 3)) & 3;
    p.srcPort = 0xc000;
    const buf = new Uint8Array(128);
    const n = encodeFrame(p, new Uint8Array([10, 0, 0, 1]), new Uint8Array([10, 0, 0, 2]), 0, buf);
    // the IETH is the word after the BTH
    assert.equal(Buffer.from(buf).readUInt32BE(28 + 12), c.rkey);
    assert.ok(icrcOk(buf.subarray(0, 20), buf.subarray(20, 28), buf.subarray(28, n)));
    const q = new Pkt();
    assert.equal(decode(buf.subarray(28, n), 0, n - 28, q), null);
    assert.deepEqual([q.opcode, q.rkey, q.payLen, Array.from(q.payload.subarray(q.payOff, q.payOff + q.payLen))], [c.opcode, c.rkey, c.payload.length, c.payload]);
    w.write(buf, n);
  }
  w.close();
  // (tshark would take a SEND_WITH_INV for RPC-over-RDMA, NFS/RDMA's use of it, and our test bytes for malformed
  // RPC; its IETH subtree and the RKey in it are one field twice, hence the first occurrence)
  const out = execFileSync('tshark', ['--disable-protocol', 'rpcordma', '-r', file, '-T', 'fields', '-e', 'infiniband.bth.opcode', '-e', 'infiniband.ieth', '-e', '_ws.malformed', '-E', 'occurrence=f'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  assert.deepEqual(out.split('\n').filter((l) => l !== '').map((l) => l.split('\t')), cases.map((c) => [String(c.opcode), c.rkey.toString(16).padStart(8, '0'), '']));
  rmSync(dir, { recursive: true });
});

test('IETH on the wire between Linux rxe 6.1 and softverbs (test/fixtures/ieth-rxe.pcap, from test/interop/mw.spec.ts): both SEND_ONLY_WITH_INVALIDATEs decode, check their ICRCs and re-encode byte for byte', () => {
  // LINKTYPE_RAW records as softverbsd --pcap writes them: the IP header as sent or as it arrived
  const b = readFileSync(join(DIST, '..', 'test', 'fixtures', 'ieth-rxe.pcap'));
  assert.equal(b.readUInt32LE(20), 101);
  const seen: Array<[string, number, number]> = [];
  for (let o = 24; o + 16 <= b.length;) {
    const incl = b.readUInt32LE(o + 8);
    const f = b.subarray(o + 16, o + 16 + incl);
    o += 16 + incl;
    const ihl = (f[0]! & 15) * 4;
    const roce = f.subarray(ihl + 8);
    assert.ok(icrcOk(f.subarray(0, ihl), f.subarray(ihl, ihl + 8), roce), 'ICRC');
    const p = new Pkt();
    assert.equal(decode(roce, 0, roce.length, p), null);
    assert.ok(p.mask & M.IETH);
    const again = new Uint8Array(roce.length);
    const n = encode(p, again, 0);
    assert.deepEqual(Buffer.from(again.subarray(0, n)), Buffer.from(roce.subarray(0, roce.length - 4)), 're-encoded');
    seen.push([`${f[12]}.${f[13]}.${f[14]}.${f[15]}`, p.opcode, p.rkey]);
  }
  // ours to rxe, then rxe's (Linux's own encoding of the IETH) to us: each invalidating a window of the other
  assert.deepEqual(seen, [['10.77.0.1', 0x17, 0x08002ad4], ['10.77.0.11', 0x17, 0x080001b1]]);
});
