/**
 * Memory regions whose bytes are a client's own memory, reached through its
 * /proc/<pid>/mem (ProcMemory), beside ones the daemon maps (MappedMemory):
 * ProcMemory's copies on their own, then the engines of two devices over one
 * fabric moving data between MRs of either kind, one side's MRs in a real
 * child process; and accesses to a page the client unmapped, which end as the
 * IBA errors a bad key gives while the devices go on serving. Then the staging
 * (staging.ts) with ProcMemory on both sides: sizes around a staging buffer,
 * spans, packet by packet, loss and retransmission, RNR, failures in the
 * middle of a range, and the points where held bytes must be written.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, ftruncateSync, mkdtempSync, openSync, readSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, afterEach, before, describe, test } from 'node:test';
import { Access, Mtu, QpState, QpType, SendFlags, WcOpcode, WcStatus, WrOpcode } from '../../src/abi/enums.js';
import { CqRingConsumer, CqRingProducer, type CqeOut } from '../../src/abi/cq-ring.js';
import { cqLayout, qpLayout } from '../../src/abi/queue.js';
import { RecvRingConsumer, RecvRingProducer } from '../../src/abi/recv-ring.js';
import { SendRingConsumer, SendRingProducer, type SendWrIn } from '../../src/abi/send-ring.js';
import { SoftDevice } from '../../src/hca/device.js';
import { Fabric, Fault } from '../../src/hca/fabric.js';
import { atomic64, MappedMemory, ProcMemory, procMemoryGone, type MrMemory } from '../../src/hca/mr-memory.js';
import { Cq, Mr, Pd, type Ah, type Owner } from '../../src/hca/objects.js';
import { Op, psnDiff } from '../../src/hca/opcodes.js';
import type { Pkt } from '../../src/hca/packet.js';
import { Qp } from '../../src/hca/qp.js';
import { settleMemory, STAGE_BYTES } from '../../src/hca/staging.js';
import { toError } from '../../src/hca/completion.js';
import { mapAnon, mapShared, unmap, type Mapping } from '../../src/native/libc.js';
import { holed, PAGE } from '../fixtures/hole.js';
import { DIST, pattern } from '../helpers.js';

const ALL = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ | Access.REMOTE_ATOMIC;
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

let selfFd = -1;
before(() => {
  selfFd = openSync('/proc/self/mem', 'r+');
});
after(() => closeSync(selfFd));

describe('ProcMemory on /proc/self/mem', () => {
  test('reads and writes at addresses above 2^32, to and from buffers at offset 0 and elsewhere', () => {
    const m = mapAnon(4 * PAGE);
    const v = new Uint8Array(m.buffer);
    assert.ok(Number(m.addr) > 2 ** 32, 'an mmap address, carried exactly in the int64_t offset');
    pattern(1, v.length).copy(v);
    const mem = new ProcMemory(selfFd, Number(m.addr));
    assert.equal(mem.view, null);
    const dst = new Uint8Array(5000);
    assert.ok(mem.read(100, dst, 0, 5000));
    assert.deepEqual(dst, v.subarray(100, 5100));
    const dst2 = new Uint8Array(6000);
    assert.ok(mem.read(7, dst2, 1000, 3000));
    assert.deepEqual(dst2.subarray(1000, 4000), v.subarray(7, 3007));
    assert.ok(dst2.subarray(0, 1000).every((b) => b === 0) && dst2.subarray(4000).every((b) => b === 0), 'nothing outside the range');
    const src = pattern(2, 3000);
    assert.ok(mem.write(9000, src, 0, 3000));
    assert.deepEqual(v.subarray(9000, 12000), new Uint8Array(src));
    assert.ok(mem.write(12000, src, 500, 2000));
    assert.deepEqual(v.subarray(12000, 14000), new Uint8Array(src.subarray(500, 2500)));
    assert.ok(mem.read(0, dst, 0, 0) && mem.write(0, src, 3000, 0), 'zero bytes');
    unmap(m);
  });

  test('a copy of 200,000 bytes at an offset in the caller\'s buffer (one call, through a subarray)', () => {
    const m = mapAnon(64 * PAGE);
    const v = new Uint8Array(m.buffer);
    pattern(3, v.length).copy(v);
    const mem = new ProcMemory(selfFd, Number(m.addr));
    const dst = new Uint8Array(200_003);
    assert.ok(mem.read(11, dst, 3, 200_000));
    assert.deepEqual(dst.subarray(3), v.subarray(11, 200_011));
    const src = pattern(4, 200_005);
    assert.ok(mem.write(1, src, 5, 200_000));
    assert.deepEqual(v.subarray(1, 200_001), new Uint8Array(src.subarray(5)));
    unmap(m);
  });

  test('a range reaching an unmapped page fails (a short transfer, then EIO), by either path; the pages around it still work', () => {
    const m = holed(3, 1);
    const mem = new ProcMemory(selfFd, m.addr);
    m.view.fill(0x11, 0, PAGE);
    m.view.fill(0x22, 2 * PAGE);
    const dst = new Uint8Array(300);
    assert.equal(mem.read(PAGE - 100, dst, 0, 200), false);
    assert.equal(mem.read(PAGE - 100, dst, 50, 200), false);
    assert.equal(mem.read(PAGE, dst, 0, 8), false, 'wholly on the unmapped page');
    assert.equal(mem.write(PAGE - 100, dst, 0, 200), false);
    assert.equal(mem.write(PAGE + 8, dst, 8, 8), false);
    assert.ok(mem.read(PAGE - 100, dst, 0, 100), 'up to the hole');
    assert.ok(dst.subarray(0, 100).every((b) => b === 0x11));
    assert.ok(mem.read(2 * PAGE, dst, 100, 200));
    assert.ok(dst.subarray(100, 300).every((b) => b === 0x22));
    m.release();
  });

  test('a descriptor that is none, or a file: false rather than a throw; a read past a file\'s end (short, then 0) fails', () => {
    const dst = new Uint8Array(100);
    const none = new ProcMemory(-1, 0x10000);
    assert.equal(none.read(0, dst, 0, 8), false);
    assert.equal(none.write(0, dst, 0, 8), false);
    const dir = mkdtempSync(join(tmpdir(), 'mrmem-'));
    try {
      writeFileSync(join(dir, 'f'), pattern(5, 100));
      const fd = openSync(join(dir, 'f'), 'r+');
      const file = new ProcMemory(fd, 0);
      assert.ok(file.read(0, dst, 0, 100));
      assert.deepEqual(Buffer.from(dst), pattern(5, 100));
      assert.equal(file.read(50, dst, 0, 100), false);
      closeSync(fd);
    } finally {
      rmSync(dir, { recursive: true });
    }
  });

  test('a range outside the daemon\'s own buffer is thrown (never written past it); a base that is no user address is refused', () => {
    const m = mapAnon(PAGE);
    const mem = new ProcMemory(selfFd, Number(m.addr));
    assert.throws(() => mem.read(0, new Uint8Array(8), 4, 8), RangeError);
    assert.throws(() => mem.write(0, new Uint8Array(8), 0, 9), RangeError);
    for (const base of [2 ** 53, -1, 1.5, NaN]) assert.throws(() => new ProcMemory(selfFd, base), RangeError);
    unmap(m);
  });

  test('atomic64 through ProcMemory: a compare-and-swap that swaps, one that does not (writing nothing), a fetch-and-add that wraps; null on an unmapped page', () => {
    const m = holed(2, 1);
    const dv = new DataView(m.view.buffer, 0, PAGE);
    const mem = new ProcMemory(selfFd, m.addr);
    dv.setBigUint64(64, 5n, true);
    assert.equal(atomic64(mem, 64, true, 5n, 0xfeedn), 5n);
    assert.equal(dv.getBigUint64(64, true), 0xfeedn);
    assert.equal(atomic64(mem, 64, true, 5n, 7n), 0xfeedn);
    assert.equal(dv.getBigUint64(64, true), 0xfeedn);
    assert.equal(atomic64(mem, 64, false, 0n, 2n ** 64n - 1n), 0xfeedn);
    assert.equal(dv.getBigUint64(64, true), 0xfeecn);
    assert.equal(atomic64(mem, PAGE + 8, false, 0n, 1n), null);
    m.release();
  });

  test('MappedMemory: the view is the bytes; read() and write() copy', () => {
    const v = new Uint8Array(64).map((_, i) => i);
    const mem: MrMemory = new MappedMemory(v);
    assert.equal(mem.view, v);
    const dst = new Uint8Array(10);
    assert.ok(mem.read(3, dst, 2, 4));
    assert.deepEqual([...dst.subarray(2, 6)], [3, 4, 5, 6]);
    assert.ok(mem.write(0, Uint8Array.of(9, 9), 0, 2));
    assert.deepEqual([...v.subarray(0, 3)], [9, 9, 2]);
  });
});

/** A child process with memory: a Buffer (its heap) and a mapping with one page unmapped. */
interface Child {
  pid: number;
  buf: number;
  hole: number;
  /** the unmapped page's offset in the mapping at `hole`, and the mapping's length */
  holeAt: number;
  holeLen: number;
  /** its /proc/<pid>/mem, opened read-write by the test (root) */
  fd: number;
  ask(line: string): Promise<string>;
  stop(): Promise<void>;
}

const CHILD_BYTES = 2 << 20;

async function spawnChild(): Promise<Child> {
  const proc: ChildProcess = spawn(process.execPath, [join(DIST, 'test', 'fixtures', 'memchild.js'), String(CHILD_BYTES)], { stdio: ['pipe', 'pipe', 'inherit'] });
  const waiting: Array<(l: string) => void> = [];
  createInterface({ input: proc.stdout! }).on('line', (l) => waiting.shift()?.(l));
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  proc.once('exit', () => {
    for (const w of waiting.splice(0)) w('exited');
  });
  const info = JSON.parse(await new Promise<string>((r) => waiting.push(r))) as { buf: number; hole: number; holeAt: number; holeLen: number };
  const fd = openSync(`/proc/${proc.pid}/mem`, 'r+');
  return {
    pid: proc.pid!, ...info, fd,
    ask: (line) => new Promise((r) => {
      waiting.push(r);
      proc.stdin!.write(`${line}\n`);
    }),
    async stop() {
      proc.stdin!.end();
      await exited;
      closeSync(fd);
    },
  };
}

class TestOwner implements Owner {
  readonly pid = process.pid;
  compEvent(): void {}
  asyncEvent(): void {}
  lookupAh(): Ah | null {
    return null;
  }
}

/** One end of an RC connection: a QP on a device, with its rings as the client writes and reads them. */
interface End {
  dev: SoftDevice;
  pd: Pd;
  qp: Qp;
  sq: SendRingProducer;
  rq: RecvRingProducer;
  cq: CqRingConsumer;
}

const CAPS = { maxSendWr: 16, maxRecvWr: 16, maxSendSge: 2, maxRecvSge: 2, maxInlineData: 64 };
const owner = new TestOwner();
const qps: Qp[] = [];
const bugs: Error[] = [];
afterEach(() => {
  for (const q of qps.splice(0)) q.stopTimers();
  assert.deepEqual(bugs.splice(0), [], 'no internal error in the engines');
});

/** Two devices of one daemon (one fabric, so packets between them may travel as spans), MTU 1024 unless told, a PD each. */
function devices(mtu: Mtu = Mtu.MTU_1024): { a: { dev: SoftDevice; pd: Pd }; b: { dev: SoftDevice; pd: Pd } } {
  const fabric = new Fabric();
  const mk = (i: number) => {
    const dev = new SoftDevice(fabric, `mm${i}`, i, `127.78.0.${i + 1}`, { mtu });
    dev.onBug = (e) => bugs.push(e);
    return { dev, pd: new Pd(owner) };
  };
  return { a: mk(0), b: mk(1) };
}

function end(dev: SoftDevice, pd: Pd, owner: Owner = pd.owner): End {
  const cl = cqLayout(64);
  const cqMem = mapAnon(cl.bytes);
  const cq = new Cq(owner, 1n, cqMem, new CqRingProducer(cqMem.buffer, cl.slots), cl.cqe, null);
  const l = qpLayout(CAPS, false)!;
  const m = mapAnon(l.bytes);
  const rq = new RecvRingConsumer(m.buffer, l.rq!.offset, l.rq!.slots, l.rq!.stride, l.caps.maxRecvSge);
  const qp = new Qp(dev, owner, dev.allocQpn(), QpType.RC, pd, cq, cq, null, rq, false, l.caps, m, new SendRingConsumer(m.buffer, l.sq, l.caps), 1n);
  dev.qps.set(qp.qpn, qp);
  qps.push(qp);
  return { dev, pd, qp, sq: new SendRingProducer(m.buffer, l.sq), rq: new RecvRingProducer(m.buffer, l.rq!, l.caps.maxRecvSge), cq: new CqRingConsumer(cqMem.buffer, cl.slots) };
}

/** A connected RC pair, one QP on each device, both in RTS (b's PD owned by `bOwner`, if given). */
function pair(d: ReturnType<typeof devices>, bOwner?: Owner): { a: End; b: End } {
  const a = end(d.a.dev, d.a.pd);
  const b = end(d.b.dev, bOwner ? new Pd(bOwner) : d.b.pd);
  for (const [x, y] of [[a, b], [b, a]] as const) {
    const q = x.qp;
    q.attr.destQpn = y.qp.qpn;
    q.attr.path.dgid = y.dev.gids[0]!;
    q.attr.accessFlags = ALL;
    q.attr.maxRdAtomic = q.attr.maxDestRdAtomic = 4;
    q.attr.timeout = 14;
    q.attr.retryCnt = q.comp.retryCnt = 7;
    q.attr.rnrRetry = q.comp.rnrRetry = 7;
    q.setMtu(Mtu.MTU_4096, x.dev.mtuBytes);
    q.req.psn = q.comp.psn = 1000;
    q.resp.psn = 1000;
    q.state = QpState.RTS;
  }
  return { a, b };
}

/** Registers memory with an end's device: iova = the client's address, as ibv_reg_mr gives it. */
function reg(e: End, mem: MrMemory, iova: number, length: number, mapping: Mapping | null = null): Mr {
  const key = e.dev.allocMrKey();
  const mr = new Mr(e.pd, key, ALL, iova, length, mem, mapping, 0);
  e.dev.mrs.set(key >>> 8, mr);
  return mr;
}

/** The test process's own memory, reached through /proc/self/mem as a client's would be; `view` to check it directly. */
function ownMr(e: End, bytes: number): { mr: Mr; view: Uint8Array } {
  const m = mapAnon(bytes);
  return { mr: reg(e, new ProcMemory(selfFd, Number(m.addr)), Number(m.addr), bytes), view: new Uint8Array(m.buffer) };
}

/** Memory the daemon maps (today's kind). */
function mappedMr(e: End, bytes: number): { mr: Mr; view: Uint8Array } {
  const m = mapAnon(bytes);
  const view = new Uint8Array(m.buffer);
  return { mr: reg(e, new MappedMemory(view), 0x40000, bytes, m), view };
}

const childMr = (e: End, c: Child) => reg(e, new ProcMemory(c.fd, c.buf), c.buf, CHILD_BYTES);
/** The child's mapping with a page unmapped (at c.holeAt). */
const holeMr = (e: End, c: Child) => reg(e, new ProcMemory(c.fd, c.hole), c.hole, c.holeLen);
const sge = (mr: Mr, off: number, length: number) => ({ addr: mr.iova + off, length, lkey: mr.key });

function post(e: End, wr: SendWrIn): void {
  e.sq.write({ sendFlags: SendFlags.SIGNALED, ...wr });
  e.sq.publish();
  e.dev.doorbell(e.qp);
}

function postRecv(e: End, wrId: bigint, s: { addr: number; length: number; lkey: number }): void {
  const o = e.rq.begin(wrId, 1);
  e.rq.writeSge(o, 0, s.addr, s.length, s.lkey);
  e.rq.advance();
  e.rq.publish();
}

/** Waits (turns of the event loop: a long read response goes out a burst per turn) for n completions. */
async function poll(e: End, n: number): Promise<CqeOut[]> {
  const out: CqeOut[] = [];
  const deadline = Date.now() + 10_000;
  while (out.length < n) {
    while (e.cq.cons !== e.cq.produced()) {
      const wc = { wrId: 0n, status: 0, opcode: 0, vendorErr: 0, byteLen: 0, imm: 0, qpNum: 0, srcQp: 0, wcFlags: 0, pkeyIndex: 0, slid: 0, sl: 0, dlidPathBits: 0 };
      e.cq.read(wc);
      out.push(wc);
    }
    e.cq.publish();
    if (out.length >= n) break;
    assert.ok(Date.now() < deadline, `${out.length} of ${n} completions`);
    await new Promise((r) => setImmediate(r));
  }
  return out;
}

const brief = (wcs: CqeOut[]) => wcs.map((w) => [w.wrId, w.status, w.opcode, w.byteLen]);

describe('the engines with MRs in a client\'s own memory (a child process through /proc/<pid>/mem)', () => {
  let child: Child;
  before(async () => {
    child = await spawnChild();
  });
  after(async () => {
    await child.stop();
  });

  test('SEND: 10000 bytes gathered from two SGEs of the test\'s own memory land in the child\'s receive buffer', async () => {
    const { a, b } = pair(devices());
    const src = ownMr(a, 4 * PAGE);
    pattern(11, src.view.length).copy(src.view);
    const dst = childMr(b, child);
    postRecv(b, 7n, sge(dst, 0x100, 16384));
    post(a, { wrId: 1n, opcode: WrOpcode.SEND, sgList: [sge(src.mr, 0, 3000), sge(src.mr, 5000, 7000)] });
    assert.deepEqual(brief(await poll(a, 1)), [[1n, WcStatus.SUCCESS, WcOpcode.SEND, 10000]]);
    assert.deepEqual(brief(await poll(b, 1)), [[7n, WcStatus.SUCCESS, WcOpcode.RECV, 10000]]);
    const sent = Buffer.concat([src.view.subarray(0, 3000), src.view.subarray(5000, 12000)]);
    assert.equal(await child.ask(`hash 256 10000`), sha(sent));
  });

  test('RDMA WRITE into the child: from mapped memory and from the test\'s own, both as spans of 64 KiB (one write each at the responder)', async () => {
    const { a, b } = pair(devices());
    const mapped = mappedMr(a, 256 << 10);
    pattern(12, mapped.view.length).copy(mapped.view);
    const own = ownMr(a, 256 << 10);
    pattern(13, own.view.length).copy(own.view);
    const dst = childMr(b, child);
    // the sizes of the responder's writes into the child
    const writes: number[] = [];
    const write = dst.mem.write.bind(dst.mem);
    (dst.mem as ProcMemory).write = (off, src, srcOff, n) => (writes.push(n), write(off, src, srcOff, n));
    post(a, { wrId: 1n, opcode: WrOpcode.RDMA_WRITE, sgList: [sge(mapped.mr, 0, 200_000)], rdma: { remoteAddr: dst.iova + 1000, rkey: dst.key } });
    assert.deepEqual(brief(await poll(a, 1)), [[1n, WcStatus.SUCCESS, WcOpcode.RDMA_WRITE, 200_000]]);
    assert.equal(Math.max(...writes.splice(0)), 65536, 'a span: one write for 64 packets');
    post(a, { wrId: 2n, opcode: WrOpcode.RDMA_WRITE, sgList: [sge(own.mr, 3, 150_000)], rdma: { remoteAddr: dst.iova + 300_001, rkey: dst.key } });
    assert.deepEqual(brief(await poll(a, 1)), [[2n, WcStatus.SUCCESS, WcOpcode.RDMA_WRITE, 150_000]]);
    assert.equal(Math.max(...writes), 65536, 'from memory the daemon does not map: spans too (one read each)');
    assert.equal(await child.ask('hash 1000 200000'), sha(mapped.view.subarray(0, 200_000)));
    assert.equal(await child.ask('hash 300001 150000'), sha(own.view.subarray(3, 150_003)));
  });

  test('RDMA READ of 1.5 MiB from the child (more than one turn\'s burst of responses) into the test\'s own memory, and 3000 bytes into mapped memory', async () => {
    const { a, b } = pair(devices());
    const LEN = 1536 << 10;
    assert.equal(await child.ask(`fill 0 ${LEN} 14`), 'ok');
    const src = childMr(b, child);
    const own = ownMr(a, LEN);
    const mapped = mappedMr(a, PAGE);
    post(a, { wrId: 1n, opcode: WrOpcode.RDMA_READ, sgList: [sge(own.mr, 0, LEN)], rdma: { remoteAddr: src.iova, rkey: src.key } });
    post(a, { wrId: 2n, opcode: WrOpcode.RDMA_READ, sgList: [sge(mapped.mr, 10, 3000)], rdma: { remoteAddr: src.iova + 777, rkey: src.key } });
    assert.deepEqual(brief(await poll(a, 2)), [[1n, WcStatus.SUCCESS, WcOpcode.RDMA_READ, LEN], [2n, WcStatus.SUCCESS, WcOpcode.RDMA_READ, 3000]]);
    const want = pattern(14, LEN);
    assert.equal(sha(own.view), sha(want));
    assert.deepEqual(Buffer.from(mapped.view.subarray(10, 3010)), want.subarray(777, 3777));
  });

  test('atomics on the child\'s memory: a compare-and-swap that swaps, one that does not, a fetch-and-add; each original value lands in the requester\'s MR', async () => {
    const { a, b } = pair(devices());
    const target = childMr(b, child);
    const off = 8 * 1000;
    const res = ownMr(a, PAGE);
    const rdv = new DataView(res.view.buffer);
    // the child's word, set through a WRITE of the test's own bytes
    rdv.setBigUint64(256, 0x1111_2222_3333_4444n, true);
    post(a, { wrId: 1n, opcode: WrOpcode.RDMA_WRITE, sgList: [sge(res.mr, 256, 8)], rdma: { remoteAddr: target.iova + off, rkey: target.key } });
    const at = { remoteAddr: target.iova + off, rkey: target.key };
    post(a, { wrId: 2n, opcode: WrOpcode.ATOMIC_CMP_AND_SWP, sgList: [sge(res.mr, 0, 8)], atomic: { ...at, compareAdd: 0x1111_2222_3333_4444n, swap: 0x55n } });
    post(a, { wrId: 3n, opcode: WrOpcode.ATOMIC_CMP_AND_SWP, sgList: [sge(res.mr, 8, 8)], atomic: { ...at, compareAdd: 0x1111_2222_3333_4444n, swap: 0x66n } });
    post(a, { wrId: 4n, opcode: WrOpcode.ATOMIC_FETCH_AND_ADD, sgList: [sge(res.mr, 16, 8)], atomic: { ...at, compareAdd: 2n ** 64n - 2n } });
    const wcs = await poll(a, 4);
    assert.deepEqual(wcs.map((w) => [w.wrId, w.status]), [[1n, 0], [2n, 0], [3n, 0], [4n, 0]]);
    assert.deepEqual([0, 8, 16].map((o) => rdv.getBigUint64(o, true)), [0x1111_2222_3333_4444n, 0x55n, 0x55n]);
    // 0x55 + (2^64 - 2), modulo 2^64
    assert.equal(await child.ask(`u64 ${off}`), String(0x53n));
  });

  test('a WRITE, a READ and an atomic reaching the child\'s unmapped page: NAK remote access error (REM_ACCESS_ERR), the responder in ERR; a new pair on the same devices works', async () => {
    const d = devices();
    for (const op of ['write', 'read', 'atomic'] as const) {
      const { a, b } = pair(d);
      const hole = holeMr(b, child);
      const local = ownMr(a, PAGE);
      const at = hole.iova + child.holeAt;
      const wr: SendWrIn =
        op === 'write' ? { wrId: 1n, opcode: WrOpcode.RDMA_WRITE, sgList: [sge(local.mr, 0, 200)], rdma: { remoteAddr: at - 100, rkey: hole.key } } :
        op === 'read' ? { wrId: 1n, opcode: WrOpcode.RDMA_READ, sgList: [sge(local.mr, 0, 2500)], rdma: { remoteAddr: at - 1000, rkey: hole.key } } :
        { wrId: 1n, opcode: WrOpcode.ATOMIC_FETCH_AND_ADD, sgList: [sge(local.mr, 0, 8)], atomic: { remoteAddr: at + 64, rkey: hole.key, compareAdd: 1n } };
      post(a, wr);
      const [wc] = await poll(a, 1);
      assert.equal(wc!.status, WcStatus.REM_ACCESS_ERR, op);
      assert.equal(b.qp.state, QpState.ERR, op);
      assert.equal(a.qp.state, QpState.ERR, op);
    }
    const { a, b } = pair(d);
    const dst = childMr(b, child);
    const src = ownMr(a, PAGE);
    pattern(15, PAGE).copy(src.view);
    post(a, { wrId: 9n, opcode: WrOpcode.RDMA_WRITE, sgList: [sge(src.mr, 0, PAGE)], rdma: { remoteAddr: dst.iova + 5, rkey: dst.key } });
    assert.deepEqual(brief(await poll(a, 1)), [[9n, WcStatus.SUCCESS, WcOpcode.RDMA_WRITE, PAGE]]);
    assert.equal(await child.ask(`hash 5 ${PAGE}`), sha(src.view));
  });

  test('a READ whose tail reaches the unmapped page: the first turn\'s burst of responses is placed, the queued rest stops there with a NAK remote access error', async () => {
    const { a, b } = pair(devices());
    const hole = holeMr(b, child);
    const LEN = child.holeAt + 16 * PAGE; // inside the MR: its bounds are checked before anything is read
    const own = ownMr(a, LEN);
    own.view.fill(0xee);
    post(a, { wrId: 1n, opcode: WrOpcode.RDMA_READ, sgList: [sge(own.mr, 0, LEN)], rdma: { remoteAddr: hole.iova, rkey: hole.key } });
    assert.deepEqual((await poll(a, 1)).map((w) => [w.wrId, w.status]), [[1n, WcStatus.REM_ACCESS_ERR]]);
    assert.equal(b.qp.state, QpState.ERR);
    assert.equal(b.qp.resp.outq.length, 0, 'nothing more queued');
    assert.ok(own.view.subarray(0, child.holeAt).every((x) => x === 0), 'the responses before the page arrived (the child\'s zeroes)');
    assert.ok(own.view.subarray(child.holeAt).every((x) => x === 0xee), 'none after it');
  });

  test('a SEND into a receive buffer on the child\'s unmapped page: NAK remote operational error at the requester, LOC_QP_OP_ERR for the receive (rxe\'s MALFORMED_WQE)', async () => {
    const { a, b } = pair(devices());
    const hole = holeMr(b, child);
    const src = mappedMr(a, PAGE);
    postRecv(b, 5n, sge(hole, child.holeAt - 8, 64));
    post(a, { wrId: 1n, opcode: WrOpcode.SEND, sgList: [sge(src.mr, 0, 64)] });
    assert.deepEqual((await poll(a, 1)).map((w) => [w.wrId, w.status]), [[1n, WcStatus.REM_OP_ERR]]);
    assert.deepEqual((await poll(b, 1)).map((w) => [w.wrId, w.status]), [[5n, WcStatus.LOC_QP_OP_ERR]]);
  });
});

describe('the requester\'s own side unreadable or unwritable: a local protection error', () => {
  test('a SEND from a page the client unmapped completes LOC_PROT_ERR; nothing reaches the receiver', async () => {
    const { a, b } = pair(devices());
    const m = holed(3, 1);
    const src = reg(a, new ProcMemory(selfFd, m.addr), m.addr, 3 * PAGE);
    const dst = mappedMr(b, PAGE);
    postRecv(b, 5n, sge(dst.mr, 0, PAGE));
    post(a, { wrId: 1n, opcode: WrOpcode.SEND, sgList: [sge(src, PAGE - 100, 200)] });
    assert.deepEqual((await poll(a, 1)).map((w) => [w.wrId, w.status]), [[1n, WcStatus.LOC_PROT_ERR]]);
    assert.equal(a.qp.state, QpState.ERR);
    assert.equal(b.cq.cons, b.cq.produced(), 'no receive completion');
    m.release();
  });

  test('a READ whose local buffer is on a page the client unmapped completes LOC_PROT_ERR (the response cannot be placed)', async () => {
    const { a, b } = pair(devices());
    const m = holed(2, 1);
    const local = reg(a, new ProcMemory(selfFd, m.addr), m.addr, 2 * PAGE);
    const remote = mappedMr(b, 2 * PAGE);
    post(a, { wrId: 1n, opcode: WrOpcode.RDMA_READ, sgList: [sge(local, PAGE - 512, 1024)], rdma: { remoteAddr: remote.mr.iova, rkey: remote.mr.key } });
    assert.deepEqual((await poll(a, 1)).map((w) => [w.wrId, w.status]), [[1n, WcStatus.LOC_PROT_ERR]]);
    m.release();
  });
});

test('a client that has exited, to an owner that cannot tell: its memory reads as nothing, and a READ from it is a remote access error', async () => {
  const c = await spawnChild();
  const { a, b } = pair(devices());
  const src = childMr(b, c);
  const dst = ownMr(a, PAGE);
  const chk = new Uint8Array(8);
  assert.ok(src.mem.read(0, chk, 0, 8));
  const fd = openSync(`/proc/${c.pid}/mem`, 'r+'); // kept past the exit: stop() closes the child's own
  await c.stop();
  const gone = reg(b, new ProcMemory(fd, c.buf), c.buf, CHILD_BYTES);
  assert.equal(gone.mem.read(0, chk, 0, 8), false);
  post(a, { wrId: 1n, opcode: WrOpcode.RDMA_READ, sgList: [sge(dst.mr, 0, 100)], rdma: { remoteAddr: gone.iova, rkey: gone.key } });
  assert.deepEqual((await poll(a, 1)).map((w) => [w.wrId, w.status]), [[1n, WcStatus.REM_ACCESS_ERR]]);
  closeSync(fd);
});

test('procMemoryGone: false for a live process (its address 0 is EIO), true once it has exited (its memory reads 0 bytes)', async () => {
  assert.equal(procMemoryGone(selfFd), false);
  const c = await spawnChild();
  const fd = openSync(`/proc/${c.pid}/mem`, 'r+');
  assert.equal(procMemoryGone(fd), false);
  await c.stop();
  assert.equal(procMemoryGone(fd), true);
  closeSync(fd);
});

test('a client that has exited, to an owner that can tell (the daemon\'s contexts): its QP answers nothing, as a destroyed one; the requester retries, then RETRY_EXC_ERR', async () => {
  const c = await spawnChild();
  const fd = openSync(`/proc/${c.pid}/mem`, 'r+');
  const dying = new (class extends TestOwner {
    exited(): boolean {
      return procMemoryGone(fd);
    }
  })();
  const d = devices();
  const { a, b } = pair(d, dying);
  a.qp.attr.retryCnt = a.qp.comp.retryCnt = 1;
  a.qp.attr.timeout = 8; // 4.096 µs · 2^8: ~1 ms
  const src = childMr(b, c);
  const dst = ownMr(a, PAGE);
  await c.stop();
  post(a, { wrId: 1n, opcode: WrOpcode.RDMA_READ, sgList: [sge(dst.mr, 0, 100)], rdma: { remoteAddr: src.iova, rkey: src.key } });
  post(a, { wrId: 2n, opcode: WrOpcode.RDMA_WRITE, sgList: [sge(dst.mr, 0, 100)], rdma: { remoteAddr: src.iova, rkey: src.key } });
  const wcs = await poll(a, 2);
  assert.deepEqual(wcs.map((w) => [w.wrId, w.status]), [[1n, WcStatus.RETRY_EXC_ERR], [2n, WcStatus.WR_FLUSH_ERR]]);
  assert.equal(b.qp.state, QpState.RTS, 'no responder error');
  assert.ok((d.b.dev.drops.get('the QP\'s process has exited') ?? 0) >= 2, 'the request and its retry dropped');
  closeSync(fd);
});

/**
 * The invariants of the write-behind (staging.ts), checked as the engines run: no ACK or NAK a QP sends covers a
 * PSN whose bytes it still holds, and no completion shows on its CQ while it holds any.
 */
function watch(e: End): void {
  const cq = e.qp.recvCq;
  const post = cq.post.bind(cq);
  cq.post = (wc) => {
    const held = e.qp.staging === null ? 0 : e.qp.staging.recv.len + e.qp.staging.comp.len;
    assert.equal(held, 0, `a completion (status ${wc.status}) while ${held} bytes are held`);
    return post(wc);
  };
  const xmit = e.dev.xmit.bind(e.dev);
  e.dev.xmit = (p: Pkt) => {
    const op = p.opcode & 0x1f;
    const st = e.qp.staging;
    if (p.srcQpn === e.qp.qpn && (op === Op.ACKNOWLEDGE || op === Op.ATOMIC_ACKNOWLEDGE) && st !== null && st.recv.len > 0)
      assert.ok(psnDiff(st.recv.psn, p.psn) > 0, `an ACK/NAK for PSN ${p.psn} while the bytes of PSN ${st.recv.psn} on are held`);
    return xmit(p);
  };
}

const MTU = 4096;
const PKTS = STAGE_BYTES / MTU;
/** Around the staging size (at MTU 4096: 16 packets), and past it. */
const SIZES = [1, MTU, (PKTS - 1) * MTU, PKTS * MTU - 1, PKTS * MTU, PKTS * MTU + 1, (PKTS + 1) * MTU, 3 * STAGE_BYTES + 777, 1 << 20];
/** How packets travel: as spans (two devices of one daemon), one by one (a fault injector injecting nothing), one by one with loss, duplicates and reordering. */
const MODES: Array<[string, string | null]> = [
  ['spans', null],
  ['packet by packet', 'seed=1'],
  ['with loss, duplicates and reordering', `drop=0.05,dup=0.02,reorder=0.02,seed=${process.env.FAULT_SEED ?? 5}`],
];

function staged(mode: string | null): { a: End; b: End } {
  const d = devices(Mtu.MTU_4096);
  if (mode) d.a.dev.fabric.fault = Fault.parse(mode);
  const { a, b } = pair(d);
  for (const e of [a, b]) {
    e.qp.attr.timeout = 12; // 17 ms: a lost tail is sent again soon
    e.qp.attr.minRnrTimer = 1;
    watch(e);
  }
  return { a, b };
}

describe('a client\'s own memory moved in spans of up to 64 KiB (read-ahead, write-behind), both sides ProcMemory: the test\'s own memory and the child\'s', () => {
  let child: Child;
  before(async () => {
    child = await spawnChild();
  });
  after(async () => {
    await child.stop();
  });

  for (const [name, mode] of MODES) {
    test(`WRITE, SEND and READ of ${SIZES.join(', ')} bytes at odd offsets, ${name}; the source rewritten between WRs (nothing stale is sent)`, async () => {
      const { a, b } = staged(mode);
      const src = ownMr(a, (1 << 20) + 2 * PAGE);
      const dst = childMr(b, child);
      let seed = 100;
      for (const n of SIZES) {
        // the same source bytes each time, new contents: a window read ahead for the WR before must not be sent
        pattern(++seed, n).copy(src.view, 3);
        post(a, { wrId: 1n, opcode: WrOpcode.RDMA_WRITE, sgList: [sge(src.mr, 3, n)], rdma: { remoteAddr: dst.iova + 5, rkey: dst.key } });
        assert.deepEqual(brief(await poll(a, 1)), [[1n, WcStatus.SUCCESS, WcOpcode.RDMA_WRITE, n]], `WRITE ${n}`);
        assert.equal(await child.ask(`hash 5 ${n}`), sha(src.view.subarray(3, 3 + n)), `WRITE ${n}: in the child's memory once it completed`);

        pattern(++seed, n).copy(src.view, 3);
        postRecv(b, 2n, sge(dst, 7, n + 100));
        post(a, { wrId: 2n, opcode: WrOpcode.SEND, sgList: [sge(src.mr, 3, n)] });
        assert.deepEqual(brief(await poll(b, 1)), [[2n, WcStatus.SUCCESS, WcOpcode.RECV, n]], `SEND ${n}`);
        assert.equal(await child.ask(`hash 7 ${n}`), sha(src.view.subarray(3, 3 + n)), `SEND ${n}: in the child's memory at its receive completion`);
        assert.deepEqual(brief(await poll(a, 1)), [[2n, WcStatus.SUCCESS, WcOpcode.SEND, n]]);

        assert.equal(await child.ask(`fill 9 ${n} ${++seed}`), 'ok');
        src.view.fill(0xaa);
        post(a, { wrId: 3n, opcode: WrOpcode.RDMA_READ, sgList: [sge(src.mr, 3, n)], rdma: { remoteAddr: dst.iova + 9, rkey: dst.key } });
        assert.deepEqual(brief(await poll(a, 1)), [[3n, WcStatus.SUCCESS, WcOpcode.RDMA_READ, n]], `READ ${n}`);
        assert.equal(sha(src.view.subarray(3, 3 + n)), sha(pattern(seed, n)), `READ ${n}: in the test's memory at its completion`);
        assert.ok(src.view[2] === 0xaa && src.view[3 + n] === 0xaa, 'nothing outside the SGE');
      }
      if (mode?.includes('drop')) assert.ok(a.dev.fabric.fault!.dropped > 10, `packets were lost (${a.dev.fabric.fault!.dropped})`);
    });
  }

  for (const [name, mode] of MODES.slice(0, 2)) {
    test(`WQEs posted together naming the same bytes are sent from one read of them; a WQE posted after that read reads afresh, ${name}`, async () => {
      const { a, b } = staged(mode);
      const src = ownMr(a, 1 << 20);
      const dst = childMr(b, child);
      // the source's reads counted on the real ProcMemory
      const mem = src.mr.mem;
      const read = mem.read.bind(mem);
      let reads = 0;
      mem.read = (...args: Parameters<typeof read>) => (reads++, read(...args));
      for (const n of [MTU, STAGE_BYTES]) {
        pattern(61, n).copy(src.view, 0);
        reads = 0;
        // eight WRITEs of the same source to eight places, one doorbell
        for (let i = 0; i < 8; i++) a.sq.write({ sendFlags: SendFlags.SIGNALED, wrId: BigInt(i), opcode: WrOpcode.RDMA_WRITE, sgList: [sge(src.mr, 0, n)], rdma: { remoteAddr: dst.iova + i * STAGE_BYTES, rkey: dst.key } });
        a.sq.publish();
        a.dev.doorbell(a.qp);
        assert.deepEqual(brief(await poll(a, 8)).map((w) => w[1]), Array(8).fill(WcStatus.SUCCESS), `WRITE ${n}`);
        for (let i = 0; i < 8; i++) assert.equal(await child.ask(`hash ${i * STAGE_BYTES} ${n}`), sha(src.view.subarray(0, n)), `WRITE ${n} #${i}`);
        // the first reads straight into its packet (unless the WQE before it read the same place), the next one
        // to read that place again fills a window the rest use
        assert.ok(reads >= 1 && reads <= 2, `WRITE ${n}: ${reads} reads of the source for 8 WQEs`);
        // new contents, posted after that read: sent as they are now, not from the window
        pattern(62, n).copy(src.view, 0);
        post(a, { wrId: 9n, opcode: WrOpcode.RDMA_WRITE, sgList: [sge(src.mr, 0, n)], rdma: { remoteAddr: dst.iova, rkey: dst.key } });
        assert.deepEqual(brief(await poll(a, 1)), [[9n, WcStatus.SUCCESS, WcOpcode.RDMA_WRITE, n]]);
        assert.equal(await child.ask(`hash 0 ${n}`), sha(pattern(62, n)), `WRITE ${n} posted after the window was read`);
      }
    });
  }

  test('a READ gathered into two SGEs of the test\'s memory and a SEND scattered into two of the child\'s, packet by packet: the write-behind moves from one SGE to the next', async () => {
    const { a, b } = staged('seed=1');
    const own = ownMr(a, 1 << 20);
    const dst = childMr(b, child);
    const LEN = 100_000;
    assert.equal(await child.ask(`fill 0 ${LEN} 31`), 'ok');
    post(a, { wrId: 1n, opcode: WrOpcode.RDMA_READ, sgList: [sge(own.mr, 10, 30_001), sge(own.mr, 200_000, LEN - 30_001)], rdma: { remoteAddr: dst.iova, rkey: dst.key } });
    assert.deepEqual(brief(await poll(a, 1)), [[1n, WcStatus.SUCCESS, WcOpcode.RDMA_READ, LEN]]);
    const want = pattern(31, LEN);
    assert.deepEqual(Buffer.from(own.view.subarray(10, 30_011)), want.subarray(0, 30_001));
    assert.deepEqual(Buffer.from(own.view.subarray(200_000, 200_000 + LEN - 30_001)), want.subarray(30_001));
    pattern(32, LEN).copy(own.view, 0);
    const o = b.rq.begin(5n, 2);
    b.rq.writeSge(o, 0, dst.iova + 300_000, 50_001, dst.key);
    b.rq.writeSge(o, 1, dst.iova + 400_000, 60_000, dst.key);
    b.rq.advance();
    b.rq.publish();
    post(a, { wrId: 2n, opcode: WrOpcode.SEND, sgList: [sge(own.mr, 0, 40_000), sge(own.mr, 40_000, LEN - 40_000)] });
    assert.deepEqual(brief(await poll(b, 1)), [[5n, WcStatus.SUCCESS, WcOpcode.RECV, LEN]]);
    assert.equal(await child.ask('hash 300000 50001'), sha(own.view.subarray(0, 50_001)));
    assert.equal(await child.ask(`hash 400000 ${LEN - 50_001}`), sha(own.view.subarray(50_001, LEN)));
  });

  for (const [name, mode] of MODES.slice(0, 2)) {
    test(`a WRITE with immediate whose last packet meets no receive WQE (RNR NAK, the rest held before it is written), then goes again and completes, ${name}`, async () => {
      const { a, b } = staged(mode);
      const src = ownMr(a, 1 << 20);
      const dst = childMr(b, child);
      const n = (PKTS + 1) * MTU + 100;
      pattern(41, n).copy(src.view);
      post(a, { wrId: 1n, opcode: WrOpcode.RDMA_WRITE_WITH_IMM, sgList: [sge(src.mr, 0, n)], rdma: { remoteAddr: dst.iova + 11, rkey: dst.key }, imm: 0x1234 });
      await new Promise((r) => setTimeout(r, 20));
      assert.ok(b.dev.counters.send_rnr_err >= 1, 'RNR NAKed');
      assert.equal(b.qp.staging?.recv.len ?? 0, 0, 'nothing held behind the RNR NAK');
      postRecv(b, 9n, sge(dst, 0, 0));
      assert.deepEqual(brief(await poll(b, 1)), [[9n, WcStatus.SUCCESS, WcOpcode.RECV_RDMA_WITH_IMM, n]]);
      assert.deepEqual(brief(await poll(a, 1)), [[1n, WcStatus.SUCCESS, WcOpcode.RDMA_WRITE, n]]);
      assert.equal(await child.ask(`hash 11 ${n}`), sha(src.view.subarray(0, n)));
    });
  }

  /** 24 pages of the test's own memory with page 8 unmapped: a 64 KiB range from page 4 has the hole in its middle. */
  const HOLE_AT = 8 * PAGE;
  const holedOwn = (e: End) => {
    const m = holed(24, 8);
    return { m, mr: reg(e, new ProcMemory(selfFd, m.addr), m.addr, 24 * PAGE) };
  };

  for (const [name, mode] of MODES.slice(0, 2)) {
    test(`failed accesses in the middle of a 64 KiB range, ${name}: the WRITE and SEND target, the READ source (remote errors), the SEND and READ's local buffer (LOC_PROT_ERR)`, async () => {
      const cases = ['write into', 'send into', 'read from', 'send from', 'read into'] as const;
      for (const what of cases) {
        const { a, b } = staged(mode);
        const mine = ownMr(a, 1 << 20);
        pattern(51, 1 << 20).copy(mine.view);
        const remoteSide = what === 'write into' || what === 'send into' || what === 'read from';
        const h = holedOwn(remoteSide ? b : a);
        const other = ownMr(b, 1 << 20);
        h.m.view.fill(0x77, 0, HOLE_AT);
        const from = 4 * PAGE + 100;
        const n = STAGE_BYTES;
        let wr: SendWrIn;
        if (what === 'write into') wr = { wrId: 1n, opcode: WrOpcode.RDMA_WRITE, sgList: [sge(mine.mr, 0, n)], rdma: { remoteAddr: h.mr.iova + from, rkey: h.mr.key } };
        else if (what === 'send into') {
          postRecv(b, 5n, sge(h.mr, from, n));
          wr = { wrId: 1n, opcode: WrOpcode.SEND, sgList: [sge(mine.mr, 0, n)] };
        } else if (what === 'read from') wr = { wrId: 1n, opcode: WrOpcode.RDMA_READ, sgList: [sge(mine.mr, 0, n)], rdma: { remoteAddr: h.mr.iova + from, rkey: h.mr.key } };
        else if (what === 'send from') {
          postRecv(b, 5n, sge(other.mr, 0, n));
          wr = { wrId: 1n, opcode: WrOpcode.SEND, sgList: [sge(h.mr, from, n)] };
        } else wr = { wrId: 1n, opcode: WrOpcode.RDMA_READ, sgList: [sge(h.mr, from, n)], rdma: { remoteAddr: other.mr.iova, rkey: other.mr.key } };
        if (what === 'read into') pattern(52, n).copy(other.view);
        if (what === 'read from') mine.view.fill(0xee);
        post(a, wr);
        const want =
          what === 'write into' || what === 'read from' ? WcStatus.REM_ACCESS_ERR :
          what === 'send into' ? WcStatus.REM_OP_ERR :
          WcStatus.LOC_PROT_ERR;
        assert.deepEqual((await poll(a, 1)).map((w) => [w.wrId, w.status]), [[1n, want]], what);
        assert.equal(a.qp.state, QpState.ERR, what);
        if (remoteSide) assert.equal(b.qp.state, QpState.ERR, what);
        if (what === 'send into') assert.deepEqual((await poll(b, 1)).map((w) => [w.wrId, w.status]), [[5n, WcStatus.LOC_QP_OP_ERR]]);
        if (what === 'send from') {
          assert.equal(b.cq.cons, b.cq.produced(), 'the receive never completes');
          assert.equal(b.qp.state, QpState.RTS);
        }
        // what could be placed before the hole, was (as packet by packet before: the write-behind's bytes land even when the pages after them are gone)
        const before = HOLE_AT - from;
        if (what === 'write into' || what === 'send into') assert.deepEqual(Buffer.from(h.m.view.subarray(from, HOLE_AT)), Buffer.from(mine.view.subarray(0, before)), `${what}: the bytes before the hole`);
        if (what === 'read into') assert.deepEqual(Buffer.from(h.m.view.subarray(from, HOLE_AT)), Buffer.from(other.view.subarray(0, before)), `${what}: the bytes before the hole`);
        if (what === 'read from') {
          // the responses before the hole's are placed, none after
          assert.deepEqual(Buffer.from(mine.view.subarray(0, before - (before % MTU))), Buffer.alloc(before - (before % MTU), 0x77));
          assert.ok(mine.view.subarray(n - MTU, n).every((x) => x === 0xee));
        }
        h.m.release();
      }
    });
  }

  for (const [name, mode] of MODES.slice(0, 2)) {
    test(`a SEND longer than its receive buffer, ${name}: the bytes that fit land before the NAK (REM_INV_REQ_ERR) and the receive's LOC_LEN_ERR`, async () => {
      const { a, b } = staged(mode);
      const src = ownMr(a, 1 << 20);
      pattern(71, 1 << 20).copy(src.view);
      const m = mapAnon(1 << 20);
      const view = new Uint8Array(m.buffer);
      const dst = reg(b, new ProcMemory(selfFd, Number(m.addr)), Number(m.addr), 1 << 20);
      const fits = 30 * MTU + 5;
      postRecv(b, 6n, sge(dst, 0, fits));
      post(a, { wrId: 1n, opcode: WrOpcode.SEND, sgList: [sge(src.mr, 0, 40 * MTU)] });
      assert.deepEqual((await poll(a, 1)).map((w) => [w.wrId, w.status]), [[1n, WcStatus.REM_INV_REQ_ERR]]);
      assert.deepEqual((await poll(b, 1)).map((w) => [w.wrId, w.status]), [[6n, WcStatus.LOC_LEN_ERR]]);
      // spans: the first (16 packets; the second does not fit whole); packet by packet: the 30 that fit
      const landed = mode === null ? STAGE_BYTES : 30 * MTU;
      assert.deepEqual(Buffer.from(view.subarray(0, landed)), Buffer.from(src.view.subarray(0, landed)));
      assert.ok(view.subarray(landed).every((x) => x === 0), 'nothing past what fit');
      unmap(m);
    });
  }

  for (const [name, mode] of MODES.slice(0, 2)) {
    test(`a file's shared mapping as WRITE target and READ source, ${name}: the file holds what was written, and what the file holds is read`, async () => {
      const { a, b } = staged(mode);
      const own = ownMr(a, 1 << 20);
      const dir = mkdtempSync(join(tmpdir(), 'mrmem-file-'));
      const fd = openSync(join(dir, 'f'), 'w+');
      try {
        ftruncateSync(fd, 2 << 20);
        const m = mapShared(fd, 2 << 20);
        const file = reg(b, new ProcMemory(selfFd, Number(m.addr)), Number(m.addr), 2 << 20);
        const n = (1 << 20) - 3;
        pattern(81, n).copy(own.view, 3);
        post(a, { wrId: 1n, opcode: WrOpcode.RDMA_WRITE, sgList: [sge(own.mr, 3, n)], rdma: { remoteAddr: file.iova + 5, rkey: file.key } });
        assert.deepEqual(brief(await poll(a, 1)), [[1n, WcStatus.SUCCESS, WcOpcode.RDMA_WRITE, n]]);
        const got = Buffer.alloc(n);
        assert.equal(readSync(fd, got, 0, n, 5), n);
        assert.equal(sha(got), sha(own.view.subarray(3, 3 + n)), 'in the file (its page cache) once the WRITE completed');
        writeSync(fd, pattern(82, n), 0, n, 1000);
        post(a, { wrId: 2n, opcode: WrOpcode.RDMA_READ, sgList: [sge(own.mr, 0, n)], rdma: { remoteAddr: file.iova + 1000, rkey: file.key } });
        assert.deepEqual(brief(await poll(a, 1)), [[2n, WcStatus.SUCCESS, WcOpcode.RDMA_READ, n]]);
        assert.equal(sha(own.view.subarray(0, n)), sha(pattern(82, n)));
        unmap(m);
      } finally {
        closeSync(fd);
        rmSync(dir, { recursive: true });
      }
    });
  }

  test('MR deregistration and a QP going to ERR mid-message: what arrived lands then, not later', async () => {
    const { a, b } = staged('seed=1');
    const src = ownMr(a, 1 << 20);
    pattern(61, 1 << 20).copy(src.view);
    const m = mapAnon(1 << 20);
    const view = new Uint8Array(m.buffer);
    const dst = reg(b, new ProcMemory(selfFd, Number(m.addr)), Number(m.addr), 1 << 20);
    // the first 20 packets of a WRITE of 40: the fabric takes the rest
    let sent = 0;
    const push = a.dev.fabric.push.bind(a.dev.fabric);
    a.dev.fabric.push = (p: Pkt) => {
      if (p.srcQpn === a.qp.qpn && (p.opcode & 0x1f) >= Op.RDMA_WRITE_FIRST && (p.opcode & 0x1f) <= Op.RDMA_WRITE_ONLY && ++sent > 20) p.lost = true;
      return push(p);
    };
    post(a, { wrId: 1n, opcode: WrOpcode.RDMA_WRITE, sgList: [sge(src.mr, 0, 40 * MTU)], rdma: { remoteAddr: dst.iova, rkey: dst.key } });
    const held = b.qp.staging!.recv.len;
    assert.ok(held > 0 && held < STAGE_BYTES, `bytes held: ${held}`);
    assert.ok(view.subarray(16 * MTU, 20 * MTU).every((x) => x === 0), 'not yet in memory');
    b.dev.mrs.delete(dst.key >>> 8);
    dst.valid = false;
    settleMemory(dst.mem);
    assert.equal(b.qp.staging!.recv.len, 0);
    assert.deepEqual(Buffer.from(view.subarray(0, 20 * MTU)), Buffer.from(src.view.subarray(0, 20 * MTU)), 'the 20 packets are in memory');
    a.dev.fabric.push = push;
    a.qp.stopTimers();
    // a second message, then the QP to ERR (modify_qp): the same
    const { a: a2, b: b2 } = staged('seed=1');
    const dst3 = reg(b2, new ProcMemory(selfFd, Number(m.addr)), Number(m.addr), 1 << 20);
    const src2 = ownMr(a2, 1 << 20);
    pattern(62, 1 << 20).copy(src2.view);
    sent = 0;
    const push2 = a2.dev.fabric.push.bind(a2.dev.fabric);
    a2.dev.fabric.push = (p: Pkt) => {
      if (p.srcQpn === a2.qp.qpn && (p.opcode & 0x1f) >= Op.RDMA_WRITE_FIRST && (p.opcode & 0x1f) <= Op.RDMA_WRITE_ONLY && ++sent > 10) p.lost = true;
      return push2(p);
    };
    post(a2, { wrId: 1n, opcode: WrOpcode.RDMA_WRITE, sgList: [sge(src2.mr, 0, 40 * MTU)], rdma: { remoteAddr: dst3.iova + 3 * MTU, rkey: dst3.key } });
    assert.equal(b2.qp.staging!.recv.len, 10 * MTU);
    toError(b2.qp, 'test');
    assert.equal(b2.qp.staging!.recv.len, 0);
    assert.deepEqual(Buffer.from(view.subarray(3 * MTU, 13 * MTU)), Buffer.from(src2.view.subarray(0, 10 * MTU)));
    a2.qp.stopTimers();
    unmap(m);
  });
});
