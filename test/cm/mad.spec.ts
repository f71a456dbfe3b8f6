/**
 * The CM MAD codec against Linux: every CM MAD in the lab's captures (rping's
 * REQ/REP/RTU/DREQ/DREP, a REQ to a silent host and the REJ that ended it)
 * decodes, re-encodes to the same 256 bytes, and says what tshark says.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { CmAttr, decodeFields, decodeIpCmHdr, encodeMad, LAYOUTS, MAD_SIZE, parseMad, parseServiceId, REJ, REP, REQ, serviceId, timeoutMs } from '../../src/cm/mad.js';
import { DIST } from '../helpers.js';

const CAPTURES = join(DIST, '..', 'test', 'fixtures', 'captures');

/** The MADs of a capture: UD SEND_ONLY to QP1 (IPv4 frames: Ethernet 14 + IP 20 + UDP 8, then BTH 12 + DETH 8). */
function mads(file: string): Uint8Array[] {
  const b = readFileSync(join(CAPTURES, file));
  const out: Uint8Array[] = [];
  let o = 24;
  while (o + 16 <= b.length) {
    const incl = b.readUInt32LE(o + 8);
    const f = b.subarray(o + 16, o + 16 + incl);
    o += 16 + incl;
    if (f.readUInt16BE(12) !== 0x0800 || f[23] !== 17 || f.readUInt16BE(36) !== 4791) continue;
    const bth = f.subarray(42);
    if (bth[0] !== 0x64 || bth.readUIntBE(5, 3) !== 1) continue;
    assert.equal(bth.readUInt32BE(12), 0x80010000, 'GSI Q_Key');
    assert.equal(bth.readUIntBE(17, 3), 1, 'source QP 1');
    out.push(bth.subarray(20, 20 + MAD_SIZE));
  }
  return out;
}

/** The message bytes of a MAD that must parse. */
function body(raw: Uint8Array): Uint8Array {
  const m = parseMad(raw);
  assert.ok(!('error' in m));
  return m.data;
}

test('every CM MAD of the captures decodes and re-encodes to the same bytes', () => {
  const all = [...mads('rping_cm.pcap'), ...mads('host_peer_cm_req.pcap')];
  assert.equal(all.length, 10, 'rping: REQ REP RTU DREQ DREP; the silent host: 4 REQs and a REJ');
  const seen = new Set<number>();
  for (const raw of all) {
    const m = parseMad(raw);
    assert.ok(!('error' in m), 'error' in m ? m.error : '');
    seen.add(m.attr);
    const table = LAYOUTS[m.attr];
    const fields = decodeFields(table, m.data);
    const again = encodeMad(m.attr, m.hdr.tid, table, fields);
    assert.deepEqual(Buffer.from(again), Buffer.from(raw), `attribute 0x${m.attr.toString(16)}`);
  }
  assert.deepEqual([...seen].sort(), [CmAttr.REQ, CmAttr.REJ, CmAttr.REP, CmAttr.RTU, CmAttr.DREQ, CmAttr.DREP].sort());
});

test("rping's REQ and REP say what tshark decoded", () => {
  const [req, rep] = mads('rping_cm.pcap');
  const q = decodeFields(REQ, body(req!));
  assert.equal(q.local_comm_id, 0xb209b570);
  assert.equal(q.service_id, 0x0000000001061c06n);
  assert.deepEqual(parseServiceId(q.service_id), { ps: 0x0106, port: 7174 });
  assert.equal(serviceId(0x0106, 7174), q.service_id);
  assert.equal(q.local_ca_guid, 0x505400fffe770002n);
  assert.equal(q.local_qpn, 0x1a);
  assert.equal(q.responder_resources, 1);
  assert.equal(q.initiator_depth, 1);
  assert.equal(q.remote_cm_response_timeout, 20);
  assert.equal(q.starting_psn, 0xdb1fb6);
  assert.equal(q.local_cm_response_timeout, 20);
  assert.equal(q.retry_count, 7);
  assert.equal(q.pkey, 0xffff);
  assert.equal(q.path_mtu, 3);
  assert.equal(q.rnr_retry_count, 7);
  assert.equal(q.max_cm_retries, 15);
  assert.equal(q.primary_hop_limit, 64);
  assert.equal(q.primary_local_ack_timeout, 19);
  assert.deepEqual([...(q.primary_local_gid as Uint8Array).subarray(10)], [0xff, 0xff, 10, 77, 0, 12]);
  const h = decodeIpCmHdr(q.private_data)!;
  assert.equal(h.ipVersion, 4);
  assert.equal(h.srcPort, 0x8232);
  assert.deepEqual([...h.src.subarray(12)], [10, 77, 0, 12]);
  assert.deepEqual([...h.dst.subarray(12)], [10, 77, 0, 11]);
  const p = decodeFields(REP, body(rep!));
  assert.equal(p.local_comm_id, 0xee7f82d0);
  assert.equal(p.remote_comm_id, 0xb209b570);
  assert.equal(p.local_qpn, 0x1a);
  assert.equal(p.starting_psn, 0x292019);
  assert.equal(p.target_ack_delay, 15);
  assert.equal(p.rnr_retry_count, 7);
  assert.equal(p.local_ca_guid, 0x505400fffe770001n);
  assert.equal(timeoutMs(20), 4295);
});

test('the REJ Linux sent when its REQ went unanswered: reason 4 (timeout), its GUID as ARI', () => {
  const all = mads('host_peer_cm_req.pcap');
  const rej = all.map((b) => parseMad(b)).find((m) => !('error' in m) && m.attr === CmAttr.REJ);
  assert.ok(rej && !('error' in rej));
  const r = decodeFields(REJ, rej.data);
  assert.equal(r.reason, 4);
  assert.equal(r.message_rejected, 2, 'a REJ from the requester names no message of the peer (other)');
  assert.equal(r.reject_info_length, 8);
});

test('a MAD that is not the CM class, version or method is refused with the reason', () => {
  const [req] = mads('rping_cm.pcap');
  for (const [off, v, why] of [[1, 0x04, /management class/], [2, 1, /class version/], [3, 0x81, /method/], [0, 2, /base version/]] as const) {
    const b = Uint8Array.from(req!);
    b[off] = v;
    const m = parseMad(b);
    assert.ok('error' in m && why.test(m.error), JSON.stringify(m));
  }
  assert.ok('error' in parseMad(req!.subarray(0, 100)));
});
