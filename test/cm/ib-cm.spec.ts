/**
 * ib_cm on its own: two devices on one fabric, an IbCm on each (two hosts'
 * CMs), no daemon and no rdma_cm. The test plays the consumer of each side
 * through ib_cm's calls (sendReq, sendRep, ...) and its ids' handlers, and
 * checks every MAD that crossed the fabric, decoded with mad.ts from the
 * frames as the wire would carry them, and the events each side was told.
 */
import assert from 'node:assert/strict';
import { afterEach, describe, mock, test } from 'node:test';
import { Mtu, QpType } from '../../src/abi/enums.js';
import { formatDreq, formatReq, HOP_LIMIT, LOCAL_ACK_TIMEOUT } from '../../src/cm/cm-msgs.js';
import { IbCm, TIMEWAIT_MS } from '../../src/cm/ib-cm.js';
import { IbState, RETRY_MS, type IbCmEvent, type IbCmHandler, type IbCmId, type IbCmRefusal, type ReqParam } from '../../src/cm/ib-cm-id.js';
import { CmAttr, decodeFields, GSI_QKEY, LAYOUTS, MsgRef, parseMad, RejReason, serviceId, SidrStatus, timeoutMs } from '../../src/cm/mad.js';
import { decode } from '../../src/hca/codec.js';
import { SoftDevice } from '../../src/hca/device.js';
import { Fabric } from '../../src/hca/fabric.js';
import { OPCODES, Op, Transport } from '../../src/hca/opcodes.js';
import { Pkt } from '../../src/hca/packet.js';
import type { PcapWriter } from '../../src/hca/pcap.js';

const A_ADDR = '127.78.0.1';
const B_ADDR = '127.78.0.2';
const SERVICE = serviceId(0x0106, 7471);

/** One MAD as it crossed the fabric. */
interface Wire {
  from: string;
  to: string;
  name: string;
  tid: bigint;
  f: Record<string, number | bigint | Uint8Array>;
  bytes: Uint8Array;
}

/** A RoCEv2 frame (IP header first) back to the CM MAD it carries. */
function madOf(frame: Uint8Array): Wire {
  assert.equal(frame[0]! >> 4, 4, 'IPv4 between the two test devices');
  const ip = (o: number) => `${frame[o]}.${frame[o + 1]}.${frame[o + 2]}.${frame[o + 3]}`;
  const p = new Pkt();
  assert.equal(decode(frame, 28, frame.length - 28, p), null);
  assert.equal(p.opcode, Transport.UD | Op.SEND_ONLY);
  assert.deepEqual([p.destQpn, p.srcQpn, p.qkey], [1, 1, GSI_QKEY], 'QP1 to QP1 with the GSI Q_Key');
  const bytes = p.payload.slice(p.payOff, p.payOff + p.payLen);
  const m = parseMad(bytes);
  if ('error' in m) assert.fail(m.error);
  const name = Object.entries(CmAttr).find(([, v]) => v === m.attr)![0];
  return { from: ip(12), to: ip(16), name, tid: m.hdr.tid, f: decodeFields(LAYOUTS[m.attr], m.data) as Wire['f'], bytes };
}

interface Side {
  dev: SoftDevice;
  ib: IbCm;
  /** every event this side's ids were told, in order, with the id */
  events: Array<{ id: IbCmId; ev: IbCmEvent }>;
  handler: IbCmHandler;
}

interface Rig {
  fabric: Fabric;
  a: Side;
  b: Side;
  /** the MADs that crossed the fabric, in order */
  wire: Wire[];
  log: string[];
}

function rig(): Rig {
  const fabric = new Fabric();
  const wire: Wire[] = [];
  // the fabric writes each packet it delivers as the wire would carry it
  fabric.pcap = { write: (frame: Uint8Array, len: number) => wire.push(madOf(frame.slice(0, len))) } as unknown as PcapWriter;
  const log: string[] = [];
  const side = (name: string, i: number, addr: string): Side => {
    const dev = new SoftDevice(fabric, name, i, addr, { mtu: Mtu.MTU_1024 });
    const ib = new IbCm({ log: (m) => log.push(m), debug: () => {} });
    ib.addDevice(dev);
    const events: Side['events'] = [];
    return { dev, ib, events, handler: (id, ev) => void events.push({ id, ev }) };
  };
  return { fabric, a: side('cmA', 0, A_ADDR), b: side('cmB', 1, B_ADDR), wire, log };
}

const types = (s: Side) => s.events.map((e) => e.ev.type);

/** B listens on `service`; each request gets a new id whose events go to B's handler, or `refuse`'s answer. */
function listen(b: Side, service = SERVICE, refuse?: () => IbCmRefusal): IbCmId {
  const l = b.ib.createId(b.dev, (id, ev) => {
    b.events.push({ id, ev });
    id.handler = b.handler;
    return refuse?.();
  });
  b.ib.listen(l, service);
  return l;
}

function reqParam(b: Side, over: Partial<ReqParam> = {}): ReqParam {
  return {
    serviceId: SERVICE, qpn: 0x11, qpType: QpType.RC, startingPsn: 0x123456, responderResources: 4, initiatorDepth: 2, flowControl: 1,
    retryCount: 7, rnrRetryCount: 6, srq: 0, path: { dgid: b.dev.gids[0]!, trafficClass: 0, mtu: Mtu.MTU_1024 },
    remoteCmResponseTimeout: 20, localCmResponseTimeout: 20, maxCmRetries: 15, privateData: Uint8Array.of(1, 2, 3), ...over,
  };
}

/** A REQ from A, answered by B's REP and A's RTU: both ids ESTABLISHED. */
function establish(r: Rig): { ida: IbCmId; idb: IbCmId } {
  listen(r.b);
  const ida = r.a.ib.createId(r.a.dev, r.a.handler);
  r.a.ib.sendReq(ida, reqParam(r.b));
  const idb = r.b.events.at(-1)!.id;
  r.b.ib.sendRep(idb, { qpn: 0x22, startingPsn: 0x654321, responderResources: 8, initiatorDepth: 8, flowControl: 1, rnrRetryCount: 5, srq: 0, privateData: new Uint8Array(0) });
  r.a.ib.sendRtu(ida);
  assert.deepEqual([ida.state, idb.state], [IbState.ESTABLISHED, IbState.ESTABLISHED]);
  return { ida, idb };
}

afterEach(() => mock.timers.reset());

describe('ib_cm: connection establishment (REQ, REP, RTU)', () => {
  test('the REQ says what the parameters and path say; the REP answers with resources bounded by the offer; the RTU closes the handshake', () => {
    const r = rig();
    const lid = listen(r.b);
    const ida = r.a.ib.createId(r.a.dev, r.a.handler);
    r.a.ib.sendReq(ida, reqParam(r.b));
    assert.equal(ida.state, IbState.REQ_SENT);
    assert.deepEqual(r.wire.map((w) => [w.name, w.from, w.to]), [['REQ', A_ADDR, B_ADDR]]);
    const req = r.wire[0]!.f;
    assert.equal(req.local_comm_id, ida.localCommId);
    assert.equal(r.wire[0]!.tid, (1n << 32n) | BigInt(ida.localCommId), "the transaction ID is made from the requester's communication ID");
    assert.equal(req.service_id, SERVICE);
    assert.equal(req.local_ca_guid, r.a.dev.nodeGuid);
    assert.deepEqual([req.local_qpn, req.starting_psn, req.responder_resources, req.initiator_depth], [0x11, 0x123456, 4, 2]);
    assert.deepEqual([req.transport_service_type, req.end_to_end_flow_control, req.retry_count, req.rnr_retry_count, req.srq], [0, 1, 7, 6, 0]);
    assert.deepEqual([req.remote_cm_response_timeout, req.local_cm_response_timeout, req.max_cm_retries, req.pkey, req.path_mtu], [20, 20, 15, 0xffff, Mtu.MTU_1024]);
    assert.deepEqual([req.primary_local_gid, req.primary_remote_gid], [r.a.dev.gids[0], r.b.dev.gids[0]]);
    assert.deepEqual([req.primary_hop_limit, req.primary_local_ack_timeout, req.primary_local_lid, req.primary_remote_lid], [HOP_LIMIT, LOCAL_ACK_TIMEOUT, 0xffff, 0xffff]);
    assert.deepEqual((req.private_data as Uint8Array).subarray(0, 4), Uint8Array.of(1, 2, 3, 0));
    assert.deepEqual(r.wire[0]!.bytes, formatReq(ida, r.a.dev, reqParam(r.b)), 'the bytes are the REQ cm-msgs formats');

    // the listener's handler is told, with the new id the REQ made
    assert.deepEqual(types(r.b), ['REQ_RECEIVED']);
    const { id: idb, ev } = r.b.events[0]!;
    assert.ok(ev.type === 'REQ_RECEIVED' && ev.listen === lid);
    assert.notEqual(idb, lid);
    assert.equal(idb.state, IbState.REQ_RCVD);
    assert.deepEqual([idb.remoteCommId, idb.remoteQpn, idb.sqPsn, idb.respRes, idb.initDepth], [ida.localCommId, 0x11, 0x123456, 2, 4], 'we serve the reads it issues and issue as many as it serves');
    assert.equal(lid.state, IbState.LISTEN);

    r.b.ib.sendRep(idb, { qpn: 0x22, startingPsn: 0x654321, responderResources: 8, initiatorDepth: 8, flowControl: 1, rnrRetryCount: 5, srq: 0, privateData: Uint8Array.of(9) });
    assert.equal(idb.state, IbState.REP_SENT);
    const rep = r.wire[1]!;
    assert.deepEqual([rep.name, rep.from, rep.tid], ['REP', B_ADDR, r.wire[0]!.tid], "the REP is in the REQ's transaction");
    assert.deepEqual([rep.f.local_comm_id, rep.f.remote_comm_id, rep.f.local_qpn, rep.f.starting_psn], [idb.localCommId, ida.localCommId, 0x22, 0x654321]);
    assert.deepEqual([rep.f.responder_resources, rep.f.initiator_depth], [2, 4], 'what it serves and issues, bounded by what the REQ offered');
    assert.deepEqual([rep.f.target_ack_delay, rep.f.rnr_retry_count, rep.f.local_ca_guid, (rep.f.private_data as Uint8Array)[0]], [15, 5, r.b.dev.nodeGuid, 9]);

    assert.deepEqual(types(r.a), ['REP_RECEIVED']);
    assert.equal(ida.state, IbState.REP_RCVD);
    assert.deepEqual([ida.remoteCommId, ida.remoteQpn, ida.sqPsn, ida.initDepth, ida.respRes], [idb.localCommId, 0x22, 0x654321, 2, 4]);

    r.a.ib.sendRtu(ida);
    const rtu = r.wire[2]!;
    assert.deepEqual([rtu.name, rtu.from, rtu.tid, rtu.f.local_comm_id, rtu.f.remote_comm_id], ['RTU', A_ADDR, r.wire[0]!.tid, ida.localCommId, idb.localCommId]);
    assert.deepEqual(types(r.b), ['REQ_RECEIVED', 'RTU_RECEIVED']);
    assert.deepEqual([ida.state, idb.state], [IbState.ESTABLISHED, IbState.ESTABLISHED]);

    // the RTU was lost, as far as B knows: its REP again gets the RTU again
    r.b.dev.gsi.send(r.a.dev.gids[0]!, rep.bytes);
    assert.deepEqual(r.wire.slice(3).map((w) => w.name), ['REP', 'RTU']);
    assert.deepEqual(r.wire[4]!.bytes, rtu.bytes);
    assert.deepEqual(types(r.a), ['REP_RECEIVED'], 'and A is told nothing new');
  });
});

describe('ib_cm: refusals (REJ)', () => {
  test('a REQ for a service nobody listens on: REJ "invalid service ID", naming no connection of the refusing side', () => {
    const r = rig();
    const ida = r.a.ib.createId(r.a.dev, r.a.handler);
    r.a.ib.sendReq(ida, reqParam(r.b));
    assert.deepEqual(r.wire.map((w) => [w.name, w.from]), [['REQ', A_ADDR], ['REJ', B_ADDR]]);
    const rej = r.wire[1]!;
    assert.deepEqual([rej.tid, rej.f.local_comm_id, rej.f.remote_comm_id, rej.f.reason, rej.f.message_rejected], [r.wire[0]!.tid, 0, ida.localCommId, RejReason.INVALID_SERVICE_ID, MsgRef.REQ]);
    assert.deepEqual(types(r.a), ['REJ_RECEIVED']);
    const ev = r.a.events[0]!.ev;
    assert.ok(ev.type === 'REJ_RECEIVED' && ev.reason === RejReason.INVALID_SERVICE_ID);
    assert.equal(ida.state, IbState.IDLE);
  });

  test("the listener's handler refuses: its reason goes back; the id the REQ made is gone (the same REQ again is a new request)", () => {
    const r = rig();
    listen(r.b, SERVICE, () => ({ reason: RejReason.NO_RESOURCES, why: 'backlog full' }));
    const ida = r.a.ib.createId(r.a.dev, r.a.handler);
    r.a.ib.sendReq(ida, reqParam(r.b));
    assert.deepEqual(r.wire.map((w) => [w.name, w.f.local_comm_id === 0, w.f.reason]), [['REQ', false, undefined], ['REJ', true, RejReason.NO_RESOURCES]]);
    r.a.dev.gsi.send(r.b.dev.gids[0]!, r.wire[0]!.bytes);
    assert.deepEqual(types(r.b), ['REQ_RECEIVED', 'REQ_RECEIVED'], 'asked again, not answered from a table');
  });

  test("the consumer's REJ names its connection, carries its private data and leaves both ids IDLE", () => {
    const r = rig();
    listen(r.b);
    const ida = r.a.ib.createId(r.a.dev, r.a.handler);
    r.a.ib.sendReq(ida, reqParam(r.b));
    const idb = r.b.events[0]!.id;
    r.b.ib.sendRej(idb, RejReason.CONSUMER_DEFINED, Uint8Array.of(7, 7));
    const rej = r.wire[1]!;
    assert.deepEqual([rej.name, rej.f.local_comm_id, rej.f.remote_comm_id, rej.f.reason, rej.f.message_rejected], ['REJ', idb.localCommId, ida.localCommId, RejReason.CONSUMER_DEFINED, MsgRef.REQ]);
    const ev = r.a.events[0]!.ev;
    assert.ok(ev.type === 'REJ_RECEIVED' && ev.reason === RejReason.CONSUMER_DEFINED);
    assert.deepEqual(ev.privateData.subarray(0, 3), Uint8Array.of(7, 7, 0));
    assert.deepEqual([ida.state, idb.state], [IbState.IDLE, IbState.IDLE]);
  });

  test('a requester that destroys its id before the answer: REJ "timeout" with its CA GUID as the ARI, answering no message', () => {
    const r = rig();
    listen(r.b);
    const ida = r.a.ib.createId(r.a.dev, r.a.handler);
    r.a.ib.sendReq(ida, reqParam(r.b));
    r.a.ib.destroyId(ida);
    const rej = r.wire[1]!;
    assert.deepEqual([rej.name, rej.from, rej.tid, rej.f.local_comm_id, rej.f.remote_comm_id], ['REJ', A_ADDR, r.wire[0]!.tid, ida.localCommId, 0]);
    assert.deepEqual([rej.f.reason, rej.f.message_rejected, rej.f.reject_info_length], [RejReason.TIMEOUT, MsgRef.OTHER, 8]);
    assert.equal(new DataView((rej.f.ari as Uint8Array).buffer).getBigUint64(0), r.a.dev.nodeGuid);
    assert.deepEqual(types(r.a), [], 'its consumer is told nothing');
  });
});

describe('ib_cm: retransmission and MRA', () => {
  test('a REQ sent again while the consumer decides gets an MRA; the requester then waits the service timeout, and the REP still opens the connection', () => {
    mock.timers.enable({ apis: ['setTimeout'] });
    const r = rig();
    listen(r.b);
    const ida = r.a.ib.createId(r.a.dev, r.a.handler);
    r.a.ib.sendReq(ida, reqParam(r.b));
    const idb = r.b.events[0]!.id;
    mock.timers.tick(RETRY_MS - 1);
    assert.equal(r.wire.length, 1, 'not sent again before the retry interval');
    mock.timers.tick(1);
    assert.deepEqual(r.wire.map((w) => w.name), ['REQ', 'REQ', 'MRA']);
    assert.deepEqual(r.wire[1]!.bytes, r.wire[0]!.bytes, 'the same REQ again');
    const mra = r.wire[2]!;
    assert.deepEqual([mra.from, mra.tid, mra.f.local_comm_id, mra.f.remote_comm_id, mra.f.message_mraed, mra.f.service_timeout], [B_ADDR, r.wire[0]!.tid, idb.localCommId, ida.localCommId, MsgRef.REQ, 20]);
    assert.deepEqual([ida.state, idb.state], [IbState.MRA_REQ_RCVD, IbState.MRA_REQ_SENT]);
    assert.deepEqual(types(r.a), ['MRA_RECEIVED']);
    assert.deepEqual(types(r.b), ['REQ_RECEIVED'], 'a duplicate REQ is not a new request');
    mock.timers.tick(timeoutMs(20));
    assert.equal(r.wire.length, 3, 'the MRA bought the service timeout');
    r.b.ib.sendRep(idb, { qpn: 0x22, startingPsn: 1, responderResources: 0, initiatorDepth: 0, flowControl: 0, rnrRetryCount: 7, srq: 0, privateData: new Uint8Array(0) });
    assert.deepEqual(types(r.a), ['MRA_RECEIVED', 'REP_RECEIVED']);
    r.a.ib.sendRtu(ida);
    assert.deepEqual([ida.state, idb.state], [IbState.ESTABLISHED, IbState.ESTABLISHED]);
    mock.timers.tick(60_000);
    assert.deepEqual(r.wire.map((w) => w.name), ['REQ', 'REQ', 'MRA', 'REP', 'RTU'], 'nothing waits for an answer any more');
  });

  test('a REQ nobody answers is sent max_cm_retries times more; then REJ "timeout" and REQ_ERROR', () => {
    mock.timers.enable({ apis: ['setTimeout'] });
    const r = rig();
    r.b.ib.removeDevice(r.b.dev);
    const ida = r.a.ib.createId(r.a.dev, r.a.handler);
    r.a.ib.sendReq(ida, reqParam(r.b, { maxCmRetries: 3 }));
    for (let i = 0; i < 4; i++) mock.timers.tick(RETRY_MS);
    assert.deepEqual(r.wire.map((w) => w.name), ['REQ', 'REQ', 'REQ', 'REQ', 'REJ']);
    assert.deepEqual([r.wire[4]!.f.reason, r.wire[4]!.f.message_rejected], [RejReason.TIMEOUT, MsgRef.OTHER]);
    assert.deepEqual(types(r.a), ['REQ_ERROR']);
    assert.equal(ida.state, IbState.IDLE);
    assert.equal(r.b.dev.gsi.drops.get('no agent for the CM class'), 5, 'B took none of them: it has no CM');
  });
});

describe('ib_cm: disconnection (DREQ, DREP) and TIMEWAIT', () => {
  test("the DREQ names the peer's QP; the DREP answers; both ids pass TIMEWAIT and are told TIMEWAIT_EXIT", () => {
    mock.timers.enable({ apis: ['setTimeout'] });
    const r = rig();
    const { ida, idb } = establish(r);
    const n = r.wire.length;
    r.a.ib.sendDreq(ida);
    const dreq = r.wire[n]!;
    assert.deepEqual([dreq.name, dreq.from, dreq.f.local_comm_id, dreq.f.remote_comm_id, dreq.f.remote_qpn_eecn], ['DREQ', A_ADDR, ida.localCommId, idb.localCommId, 0x22]);
    assert.deepEqual([ida.state, idb.state], [IbState.DREQ_SENT, IbState.DREQ_RCVD]);
    assert.equal(types(r.b).at(-1), 'DREQ_RECEIVED');
    r.b.ib.sendDrep(idb);
    const drep = r.wire[n + 1]!;
    assert.deepEqual([drep.name, drep.from, drep.f.local_comm_id, drep.f.remote_comm_id], ['DREP', B_ADDR, idb.localCommId, ida.localCommId]);
    assert.deepEqual([ida.state, idb.state], [IbState.TIMEWAIT, IbState.TIMEWAIT]);
    assert.equal(types(r.a).at(-1), 'DREP_RECEIVED');

    // in TIMEWAIT a DREQ sent again still gets its DREP
    r.a.dev.gsi.send(r.b.dev.gids[0]!, dreq.bytes);
    assert.deepEqual(r.wire.slice(n + 2).map((w) => w.name), ['DREQ', 'DREP']);
    mock.timers.tick(TIMEWAIT_MS);
    assert.deepEqual([types(r.a).at(-1), types(r.b).at(-1)], ['TIMEWAIT_EXIT', 'TIMEWAIT_EXIT']);
    assert.deepEqual([ida.state, idb.state], [IbState.IDLE, IbState.IDLE]);
    // its communication ID is free: a DREQ for it now finds no connection, and is still answered
    r.a.dev.gsi.send(r.b.dev.gids[0]!, dreq.bytes);
    assert.deepEqual(r.wire.slice(n + 4).map((w) => [w.name, w.f.local_comm_id]), [['DREQ', ida.localCommId], ['DREP', idb.localCommId]]);
    assert.equal(types(r.b).at(-1), 'TIMEWAIT_EXIT', 'told nothing');
  });

  test("DREQs that cross: the DREQ that finds its side in DREQ_SENT is answered, and the connection is closed both ways", () => {
    const r = rig();
    const { ida, idb } = establish(r);
    // B's DREQ as it left B, still on its way when A's arrives
    const dreqB = formatDreq(idb);
    r.a.ib.sendDreq(ida);
    assert.equal(idb.state, IbState.DREQ_RCVD);
    const n = r.wire.length;
    r.b.dev.gsi.send(r.a.dev.gids[0]!, dreqB);
    assert.deepEqual(r.wire.slice(n).map((w) => [w.name, w.from, w.f.local_comm_id]), [['DREQ', B_ADDR, idb.localCommId], ['DREP', A_ADDR, ida.localCommId]]);
    assert.equal(ida.state, IbState.TIMEWAIT);
    const ev = r.a.events.at(-1)!.ev;
    assert.ok(ev.type === 'DREQ_RECEIVED' && ev.privateData === undefined, 'closed both ways: no DREQ private data to tell');
  });

  test('an established id destroyed by its consumer sends the DREQ and lingers, unseen, until the DREP', () => {
    mock.timers.enable({ apis: ['setTimeout'] });
    const r = rig();
    const { ida, idb } = establish(r);
    const told = r.a.events.length;
    const n = r.wire.length;
    r.a.ib.destroyId(ida);
    assert.deepEqual([r.wire[n]!.name, ida.state, ida.lingering], ['DREQ', IbState.DREQ_SENT, true]);
    mock.timers.tick(RETRY_MS);
    assert.deepEqual(r.wire.slice(n).map((w) => w.name), ['DREQ', 'DREQ'], 'a lost DREQ is sent again');
    r.b.ib.sendDrep(idb);
    assert.equal(ida.lingering, false);
    mock.timers.tick(60_000);
    assert.deepEqual(r.wire.slice(n).map((w) => w.name), ['DREQ', 'DREQ', 'DREP'], 'nothing more once the DREP came');
    assert.equal(r.a.events.length, told, 'its consumer is told nothing after destroying it');
  });
});

describe('ib_cm: service ID resolution (SIDR)', () => {
  test("a SIDR_REQ to a listened service gets the consumer's QPN and Q_Key; sent again, the same SIDR_REP", () => {
    const r = rig();
    const lid = listen(r.b);
    const ida = r.a.ib.createId(r.a.dev, r.a.handler);
    r.a.ib.sendSidrReq(ida, { serviceId: SERVICE, path: { dgid: r.b.dev.gids[0]!, trafficClass: 0, mtu: Mtu.MTU_1024 }, timeoutMs: RETRY_MS, maxCmRetries: 15, privateData: Uint8Array.of(5) });
    assert.equal(ida.state, IbState.SIDR_REQ_SENT);
    const req = r.wire[0]!;
    assert.deepEqual([req.name, req.f.request_id, req.f.service_id, req.f.pkey, (req.f.private_data as Uint8Array)[0]], ['SIDR_REQ', ida.localCommId, SERVICE, 0xffff, 5]);
    const { id: idb, ev } = r.b.events[0]!;
    assert.ok(ev.type === 'SIDR_REQ_RECEIVED' && ev.listen === lid);
    assert.equal(idb.state, IbState.SIDR_REQ_RCVD);
    r.b.ib.sendSidrRep(idb, { status: SidrStatus.SUCCESS, qpn: 0x33, qkey: 0x1234567, privateData: Uint8Array.of(6) });
    const rep = r.wire[1]!;
    assert.deepEqual([rep.name, rep.tid, rep.f.request_id, rep.f.status, rep.f.qpn, rep.f.qkey, rep.f.service_id], ['SIDR_REP', req.tid, ida.localCommId, SidrStatus.SUCCESS, 0x33, 0x1234567, SERVICE]);
    assert.deepEqual(types(r.a), ['SIDR_REP_RECEIVED']);
    assert.equal(ida.state, IbState.IDLE);
    // the SIDR_REP was lost, as far as A's retransmission goes: the same answer, which A no longer waits for
    r.a.dev.gsi.send(r.b.dev.gids[0]!, req.bytes);
    assert.deepEqual(r.wire.slice(2).map((w) => w.name), ['SIDR_REQ', 'SIDR_REP']);
    assert.deepEqual(r.wire[3]!.bytes, rep.bytes);
    assert.deepEqual(types(r.b), ['SIDR_REQ_RECEIVED'], 'a duplicate is not a new request');
    assert.equal(r.a.dev.gsi.drops.get('SIDR_REP for no request'), 1);
  });

  test('nobody listens: SIDR_REP "unsupported", without QPN or Q_Key; a refusing consumer\'s status goes back the same way', () => {
    const r = rig();
    const ida = r.a.ib.createId(r.a.dev, r.a.handler);
    const sidr = { serviceId: SERVICE, path: { dgid: r.b.dev.gids[0]!, trafficClass: 0, mtu: Mtu.MTU_1024 }, timeoutMs: RETRY_MS, maxCmRetries: 15, privateData: new Uint8Array(0) };
    r.a.ib.sendSidrReq(ida, sidr);
    const rep = r.wire[1]!;
    assert.deepEqual([rep.name, rep.f.request_id, rep.f.status, rep.f.qpn, rep.f.qkey, rep.f.service_id], ['SIDR_REP', ida.localCommId, SidrStatus.UNSUPPORTED, 0, 0, SERVICE]);
    const ev = r.a.events[0]!.ev;
    assert.ok(ev.type === 'SIDR_REP_RECEIVED' && ev.rep.status === SidrStatus.UNSUPPORTED);
    listen(r.b, SERVICE, () => ({ status: SidrStatus.REJECT, why: 'test' }));
    r.a.ib.sendSidrReq(ida, sidr);
    assert.deepEqual(r.wire.slice(2).map((w) => [w.name, w.f.status]), [['SIDR_REQ', undefined], ['SIDR_REP', SidrStatus.REJECT]]);
  });
});

describe('the GSI port', () => {
  test('what is not a CM MAD for its agent is dropped and counted by reason', () => {
    const r = rig();
    const mad = (attr: number, mgmtClass = 0x07) => {
      const b = new Uint8Array(256);
      b.set([1, mgmtClass, 2, 0x03]);
      new DataView(b.buffer).setUint16(16, attr);
      return b;
    };
    const feed = (payload: Uint8Array, qkey = GSI_QKEY, opcode: number = Transport.UD | Op.SEND_ONLY) => {
      const p = new Pkt();
      Object.assign(p, { opcode, mask: OPCODES[opcode]!.mask, destQpn: 1, srcQpn: 1, qkey, srcGid: r.a.dev.gids[0]!, dstGid: r.b.dev.gids[0]!, payload, payOff: 0, payLen: payload.length });
      r.b.dev.receive(p);
    };
    feed(mad(CmAttr.RTU), 0x1234);
    feed(mad(CmAttr.RTU).subarray(0, 100));
    feed(mad(CmAttr.RTU, 0x04));
    feed(mad(0x0020));
    feed(mad(CmAttr.RTU), GSI_QKEY, Transport.RC | Op.SEND_ONLY);
    feed(mad(CmAttr.RTU));
    r.b.ib.removeDevice(r.b.dev);
    feed(mad(CmAttr.RTU));
    assert.deepEqual(Object.fromEntries(r.b.dev.gsi.drops), {
      'wrong Q_Key for QP1': 1, 'short MAD': 1, "management class 0x4 (only the CM's, 0x07, is served)": 1, 'CM attribute 0x20': 1,
      'not a UD SEND_ONLY': 1, 'RTU for no connection': 1, 'no agent for the CM class': 1,
    });
    assert.deepEqual(r.wire, [], 'none of them was answered');
    assert.deepEqual(r.log, [], 'and none was an internal error');
  });

  test('a second agent for the CM class is refused', () => {
    const r = rig();
    assert.throws(() => new IbCm({ log: () => {}, debug: () => {} }).addDevice(r.a.dev), /already has a CM agent/);
  });
});
