/**
 * Interop with Linux rdma_rxe (run by `npm run test:interop`, inside the
 * lab's network namespace; see run.ts): a softverbs QP on 10.77.0.1 and an
 * rxe QP in the lab VM, driven through test/interop/agent.py (pyverbs),
 * in both directions: SEND, SEND_WITH_IMM, RDMA_WRITE(_WITH_IMM),
 * RDMA_READ, both atomics on RC, SEND and WRITE on UC, UD SEND, at path MTU
 * 1024 and 4096, every byte checked on both sides. The packets cross a real
 * wire in both directions: rxe checks our ICRCs, we check its.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createConnection, type Socket } from 'node:net';
import { createInterface } from 'node:readline';
import { after, before, describe, test } from 'node:test';
import {
  Access, getDeviceList, openDevice, QpType, SendFlags, WcOpcode, WcStatus, WrOpcode,
  type AddressHandle, type CompletionQueue, type Context, type MemoryRegion, type QueuePair,
  mtuOfBytes,
} from '../../src/verbs/index.js';
import { connectQp, pollN, startDaemon, type RunningDaemon } from '../helpers.js';

const PEER = process.env.LAB_PEER ?? '';
const HOST = process.env.LAB_HOST ?? '10.77.0.1';
const skip = PEER ? false : 'LAB_PEER is not set: run through `npm run test:interop`';
const SIZE = 1 << 20;
const HALF = SIZE / 2;

interface Wc { wrId: number; status: number; opcode: number; byteLen: number; imm: number; srcQp: number; withImm: boolean }
interface Info { qpn: number; gid: string; rkey: number; addr: bigint }
interface SendArgs { wrId: number; opcode: keyof typeof WrOpcode; off: number; len: number; imm?: number; raddr?: bigint; rkey?: number; compare?: bigint; swap?: bigint; ud?: { gid: string; qpn: number } }

/** One end of a connection: ours (softverbs) or theirs (rxe through the agent). */
interface End {
  readonly name: string;
  info: Info;
  connect(peer: Info, mtu: number): Promise<void>;
  write(off: number, b: Buffer): Promise<void>;
  read(off: number, len: number): Promise<Buffer>;
  postRecv(wrId: number, off: number, len: number): Promise<void>;
  postSend(a: SendArgs): Promise<void>;
  poll(n: number): Promise<Wc[]>;
  close(): Promise<void>;
}

const gidText = (g: Uint8Array) => Array.from({ length: 8 }, (_, i) => ((g[2 * i]! << 8) | g[2 * i + 1]!).toString(16).padStart(4, '0')).join(':');
const gidBytes = (s: string) => Buffer.from(s.replace(/:/g, ''), 'hex');

class Ours implements End {
  readonly name = 'softverbs';
  info!: Info;
  private pd!: Awaited<ReturnType<Context['allocPd']>>;
  private cq!: CompletionQueue;
  private qp!: QueuePair;
  private mr!: MemoryRegion;
  private ahs = new Map<string, AddressHandle>();
  constructor(private readonly ctx: Context, private readonly type: number) {}
  async open(): Promise<this> {
    this.pd = await this.ctx.allocPd();
    this.cq = await this.ctx.createCq(256);
    this.qp = await this.pd.createQp({ sendCq: this.cq, recvCq: this.cq, qpType: this.type as QpType, cap: { maxSendWr: 64, maxRecvWr: 64 } });
    this.mr = await this.pd.allocMr(SIZE, Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ | Access.REMOTE_ATOMIC);
    this.info = { qpn: this.qp.qpNum, gid: gidText(this.ctx.queryGid(1, 0)), rkey: this.mr.rkey, addr: this.mr.addr };
    return this;
  }
  async connect(peer: Info, mtu: number): Promise<void> {
    await connectQp(this.qp, this.ctx, { qpn: peer.qpn, gid: gidBytes(peer.gid) }, { mtu: mtuOfBytes(mtu) });
  }
  async write(off: number, b: Buffer): Promise<void> {
    b.copy(this.mr.buf, off);
  }
  async read(off: number, len: number): Promise<Buffer> {
    return Buffer.from(this.mr.buf.subarray(off, off + len));
  }
  async postRecv(wrId: number, off: number, len: number): Promise<void> {
    this.qp.postRecv({ wrId, sgList: [this.mr.sge(off, len)] });
  }
  async postSend(a: SendArgs): Promise<void> {
    let ah: AddressHandle | undefined;
    if (a.ud) {
      ah = this.ahs.get(a.ud.gid);
      if (!ah) this.ahs.set(a.ud.gid, (ah = await this.pd.createAh({ grh: { dgid: gidBytes(a.ud.gid) } })));
    }
    const atomic = a.opcode.startsWith('ATOMIC');
    this.qp.postSend({
      wrId: a.wrId, opcode: WrOpcode[a.opcode], sendFlags: SendFlags.SIGNALED, sgList: a.len ? [this.mr.sge(a.off, a.len)] : [], imm: a.imm,
      rdma: a.opcode.startsWith('RDMA') ? { remoteAddr: a.raddr!, rkey: a.rkey! } : undefined,
      atomic: atomic ? { remoteAddr: a.raddr!, rkey: a.rkey!, compareAdd: a.compare ?? 0n, swap: a.swap ?? 0n } : undefined,
      ud: ah ? { ah, remoteQpn: a.ud!.qpn, remoteQkey: 0x11111111 } : undefined,
    });
  }
  async poll(n: number): Promise<Wc[]> {
    return (await pollN(this.cq, n, 20000)).map((w) => ({ wrId: Number(w.wrId), status: w.status, opcode: w.opcode, byteLen: w.byteLen, imm: w.imm, srcQp: w.srcQp, withImm: !!(w.wcFlags & 2) }));
  }
  async close(): Promise<void> {
    await this.qp.destroyQp();
  }
}

class Theirs implements End {
  readonly name = 'rxe';
  info!: Info;
  private sock!: Socket;
  private lines!: AsyncIterator<string>;
  async open(type: string): Promise<this> {
    this.sock = createConnection(18600, PEER);
    await new Promise<void>((res, rej) => this.sock.once('connect', res).once('error', rej));
    this.lines = createInterface({ input: this.sock })[Symbol.asyncIterator]();
    const r = await this.call('open', { type, size: SIZE });
    this.info = { qpn: r.qpn, gid: r.gid, rkey: r.rkey, addr: BigInt(r.addr) };
    return this;
  }
  private async call(cmd: string, args: Record<string, unknown> = {}): Promise<any> {
    this.sock.write(`${JSON.stringify({ ...args, cmd }, (_, v) => (typeof v === 'bigint' ? Number(v) : v))}\n`);
    const { value } = await this.lines.next();
    const r = JSON.parse(value as string);
    if (r.error) throw new Error(`rxe agent ${cmd}: ${r.error}`);
    return r;
  }
  async connect(peer: Info, mtu: number): Promise<void> {
    await this.call('connect', { qpn: peer.qpn, gid: peer.gid, mtu });
  }
  async write(off: number, b: Buffer): Promise<void> {
    await this.call('write', { off, b64: b.toString('base64') });
  }
  async read(off: number, len: number): Promise<Buffer> {
    return Buffer.from((await this.call('read', { off, len })).b64, 'base64');
  }
  async postRecv(wrId: number, off: number, len: number): Promise<void> {
    await this.call('post_recv', { wr_id: wrId, off, len });
  }
  async postSend(a: SendArgs): Promise<void> {
    await this.call('post_send', { wr_id: a.wrId, opcode: a.opcode, off: a.off, len: a.len, imm: a.imm ?? 0, raddr: a.raddr, rkey: a.rkey, compare: a.compare, swap: a.swap, ud: a.ud ? { ...a.ud, qkey: 0x11111111 } : undefined });
  }
  async poll(n: number): Promise<Wc[]> {
    const r = await this.call('poll', { n, timeout: 20 });
    assert.equal(r.wcs.length, n, 'rxe: completions in time');
    return r.wcs.map((w: any) => ({ wrId: w.wr_id, status: w.status, opcode: w.opcode, byteLen: w.byte_len, imm: w.imm, srcQp: w.src_qp, withImm: !!(w.wc_flags & 2) }));
  }
  async close(): Promise<void> {
    await this.call('close');
    this.sock.end();
  }
}

let wrId = 1;

/** One message from `s` to `r`, byte-checked on both, completions checked on both. */
async function message(s: End, r: End, type: string, opcode: SendArgs['opcode'], size: number, mtu: number): Promise<void> {
  const what = `${type} ${opcode} ${size} B, ${s.name} -> ${r.name}, MTU ${mtu}`;
  const data = randomBytes(size);
  const imm = randomBytes(4).readUInt32BE(0);
  const read = opcode === 'RDMA_READ';
  const write = opcode.startsWith('RDMA_WRITE');
  const withImm = opcode.endsWith('WITH_IMM');
  const needsRecv = !read && opcode !== 'RDMA_WRITE';
  const grh = type === 'UD' ? 40 : 0;
  const [src, dst] = read ? [r, s] : [s, r];
  await src.write(0, data);
  await dst.write(HALF, Buffer.alloc(size + grh + 1));
  const id = wrId++;
  if (needsRecv) await r.postRecv(id, HALF, size + grh + 1);
  await s.postSend({
    wrId: id, opcode, off: read ? HALF : 0, len: size, imm,
    raddr: read ? r.info.addr : write ? r.info.addr + BigInt(HALF) : undefined, rkey: read || write ? r.info.rkey : undefined,
    ud: type === 'UD' ? { gid: r.info.gid, qpn: r.info.qpn } : undefined,
  });
  const [sc] = await s.poll(1);
  assert.deepEqual([sc!.wrId, sc!.status], [id, WcStatus.SUCCESS], `${what}: requester`);
  assert.equal(sc!.opcode, read ? WcOpcode.RDMA_READ : write ? WcOpcode.RDMA_WRITE : WcOpcode.SEND, `${what}: requester opcode`);
  if (needsRecv) {
    const [rc] = await r.poll(1);
    assert.deepEqual([rc!.wrId, rc!.status, rc!.opcode, rc!.byteLen, rc!.withImm], [id, WcStatus.SUCCESS, write ? WcOpcode.RECV_RDMA_WITH_IMM : WcOpcode.RECV, size + grh, withImm], `${what}: responder`);
    if (withImm) assert.equal(rc!.imm, imm, `${what}: immediate`);
    if (type === 'UD') assert.equal(rc!.srcQp, s.info.qpn, `${what}: source QP`);
  }
  let got = await dst.read(HALF + grh, size + 1);
  if (type === 'UC' && !needsRecv) {
    // a UC WRITE completes at the requester when sent: give the last packet time to land
    for (let i = 0; i < 50 && !got.subarray(0, size).equals(data); i++) {
      await new Promise((res) => setTimeout(res, 20));
      got = await dst.read(HALF + grh, size + 1);
    }
  }
  assert.ok(got.subarray(0, size).equals(data), `${what}: bytes`);
  assert.equal(got[size], 0, `${what}: nothing past the end`);
}

async function atomics(s: End, r: End, mtu: number): Promise<void> {
  const what = `atomics ${s.name} -> ${r.name}, MTU ${mtu}`;
  const slot = Buffer.alloc(8);
  slot.writeBigUInt64LE(0x1000n);
  await r.write(256, slot);
  await s.postSend({ wrId: wrId++, opcode: 'ATOMIC_FETCH_AND_ADD', off: 0, len: 8, raddr: r.info.addr + 256n, rkey: r.info.rkey, compare: 0x234n });
  await s.postSend({ wrId: wrId++, opcode: 'ATOMIC_CMP_AND_SWP', off: 8, len: 8, raddr: r.info.addr + 256n, rkey: r.info.rkey, compare: 0x1234n, swap: 0xabcdef0123n });
  const wcs = await s.poll(2);
  assert.deepEqual(wcs.map((w) => [w.status, w.opcode]), [[0, WcOpcode.FETCH_ADD], [0, WcOpcode.COMP_SWAP]], what);
  const mine = await s.read(0, 16);
  assert.deepEqual([mine.readBigUInt64LE(0), mine.readBigUInt64LE(8)], [0x1000n, 0x1234n], `${what}: original values`);
  assert.equal((await r.read(256, 8)).readBigUInt64LE(0), 0xabcdef0123n, `${what}: swapped`);
}

const PLAN: Array<[string, number, Array<SendArgs['opcode']>]> = [
  ['RC', QpType.RC, ['SEND', 'SEND_WITH_IMM', 'RDMA_WRITE', 'RDMA_WRITE_WITH_IMM', 'RDMA_READ']],
  ['UC', QpType.UC, ['SEND', 'SEND_WITH_IMM', 'RDMA_WRITE', 'RDMA_WRITE_WITH_IMM']],
  ['UD', QpType.UD, ['SEND', 'SEND_WITH_IMM']],
];

// the lab runs as root: the raw socket checks every arriving ICRC; without CAP_NET_RAW the daemon sends the same
// exact ICRCs (IP ID 0 through a PMTUDISC_DO socket) and rxe, which checks them, must take every one
const MODES = [
  ['raw socket (root)', [], /through a raw socket/],
  ['plain UDP (no CAP_NET_RAW)', ['setpriv', '--inh-caps', '-net_raw', '--bounding-set', '-net_raw'], /no CAP_NET_RAW: arriving IPv4 ICRCs are not checked/],
] as const;
for (const [mode, wrapper, banner] of MODES) describe(`softverbs <-> Linux rxe, ${mode}`, { skip }, () => {
  let d: RunningDaemon;
  let ctx: Context;
  before(async () => {
    d = await startDaemon(['--device', `rxe0=${HOST}`], { wrapper: [...wrapper] });
    assert.match(d.stderr(), banner);
    ctx = await openDevice(getDeviceList(d.root)[0]!, d.root);
  });
  after(async () => {
    ctx?.closeDevice();
    await d?.stop();
  });
  for (const mtu of [1024, 4096]) {
    for (const [type, qpType, ops] of PLAN) {
      test(`${type} at MTU ${mtu}: ${ops.join(', ')}${type === 'RC' ? ', FETCH_ADD, CMP_SWP' : ''}, both directions`, async () => {
        const ours = await new Ours(ctx, qpType).open();
        const theirs = await new Theirs().open(type);
        try {
          await ours.connect(theirs.info, mtu);
          await theirs.connect(ours.info, mtu);
          const sizes = type === 'UD' ? [1, mtu] : [0, 1, mtu + 1, 65536];
          for (const [s, r] of [[ours, theirs], [theirs, ours]] as const) {
            for (const op of ops) for (const size of sizes) await message(s, r, type, op, size, mtu);
            if (type === 'RC') await atomics(s, r, mtu);
          }
        } finally {
          // a failure above is the one to report: closing must not mask it
          await theirs.close().catch(() => {});
          await ours.close().catch(() => {});
        }
      });
    }
  }
});
