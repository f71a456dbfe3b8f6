/**
 * One RC connection from start to finish: two sides (here in one process; in
 * real life two hosts) each make a QP, trade what the other needs to know,
 * walk their QPs INIT → RTR → RTS, and one side RDMA-WRITEs into the
 * other's memory with an immediate value the other is told of through its
 * completion channel. Everything is released by `await using`.
 *
 *   node dist/examples/rc-write.js [deviceA] [deviceB]     (default: the first device, both sides)
 *
 * from a checkout; the package ships it at the same place inside it
 * (node "$(npm root -g)/softverbs/dist/examples/rc-write.js" after npm install -g).
 */
import { randomInt } from 'node:crypto';
import {
  Access, getDeviceList, gidString, Mtu, openDevice, parseGidString, QpAttrMask as A, QpState, QpType, SendFlags, WcStatus, wcStatusName,
  WrOpcode, type CompletionChannel, type CompletionQueue, type Context, type MemoryRegion, type ProtectionDomain, type QueuePair,
} from 'softverbs';

/** What one side tells the other (over TCP, a file, a CM exchange …): plain JSON. */
interface Card {
  qpn: number;
  /** the GID the peer must address (RoCEv2: its IP address as a GID) */
  gid: string;
  /** the first PSN this side will send */
  psn: number;
  /** where the peer may write: the MR's address (a decimal string: it is a u64) and rkey */
  addr: string;
  rkey: number;
}

const GID_INDEX = 0;

/** One side's objects, destroyed in dependency order (QP, MR, PD, CQ, channel, device) when its `await using` block ends. */
class Side {
  private constructor(
    readonly name: string,
    readonly ctx: Context,
    readonly channel: CompletionChannel,
    readonly cq: CompletionQueue,
    readonly pd: ProtectionDomain,
    readonly mr: MemoryRegion,
    readonly qp: QueuePair,
    readonly psn: number,
  ) {}

  static async open(name: string, device: string): Promise<Side> {
    const ctx = await openDevice(device);
    const channel = await ctx.createCompChannel();
    const cq = await ctx.createCq(16, channel);
    const pd = await ctx.allocPd();
    const mr = await pd.allocMr(4096, Access.LOCAL_WRITE | Access.REMOTE_WRITE);
    const qp = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxSendWr: 16, maxRecvWr: 16, maxSendSge: 1, maxRecvSge: 1 } });
    // RESET → INIT: the port, the P_Key, and what the peer may do to our memory through this QP
    await qp.modifyQp({ qpState: QpState.INIT, pkeyIndex: 0, portNum: 1, qpAccessFlags: Access.LOCAL_WRITE | Access.REMOTE_WRITE },
      A.STATE | A.PKEY_INDEX | A.PORT | A.ACCESS_FLAGS);
    return new Side(name, ctx, channel, cq, pd, mr, qp, randomInt(1 << 24));
  }

  card(): Card {
    return { qpn: this.qp.qpNum, gid: gidString(this.ctx.queryGid(1, GID_INDEX)), psn: this.psn, addr: this.mr.addr.toString(), rkey: this.mr.rkey };
  }

  async connect(peer: Card): Promise<void> {
    // INIT → RTR: where the peer is (RoCE always addresses by GID: isGlobal, grh.dgid) and which PSN to expect from it
    await this.qp.modifyQp({
      qpState: QpState.RTR, pathMtu: Mtu.MTU_1024, destQpNum: peer.qpn, rqPsn: peer.psn, maxDestRdAtomic: 1, minRnrTimer: 12,
      ahAttr: { isGlobal: true, portNum: 1, grh: { dgid: parseGidString(peer.gid)!, sgidIndex: GID_INDEX, hopLimit: 64 } },
    }, A.STATE | A.AV | A.PATH_MTU | A.DEST_QPN | A.RQ_PSN | A.MAX_DEST_RD_ATOMIC | A.MIN_RNR_TIMER);
    // RTR → RTS: our first PSN, the ACK timeout (4.096 µs × 2^14 ≈ 67 ms) and how often to retry.
    // retryCnt 7 and rnrRetry 7 both mean "retry for ever": the IBA says so for rnrRetry, and rxe (so
    // softverbs) treats retryCnt 7 the same way; anything lower fails the WQE once the retries are spent.
    await this.qp.modifyQp({ qpState: QpState.RTS, sqPsn: this.psn, timeout: 14, retryCnt: 7, rnrRetry: 7, maxRdAtomic: 1 },
      A.STATE | A.SQ_PSN | A.TIMEOUT | A.RETRY_CNT | A.RNR_RETRY | A.MAX_QP_RD_ATOMIC);
  }

  /** The next completion, the completion-channel way (arm, wait for the event, poll, acknowledge): cq.completions() does it. */
  async nextCompletion() {
    for await (const wc of this.cq.completions()) return wc;
    throw new Error(`${this.name}: the completion channel closed`);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.qp.destroyQp();
    await this.mr.deregMr();
    await this.pd.deallocPd();
    await this.cq.destroyCq();
    await this.channel.destroyCompChannel();
    await this.ctx.closeDevice();
  }
}

export async function main(deviceA: string, deviceB: string): Promise<void> {
  await using a = await Side.open('A', deviceA);
  await using b = await Side.open('B', deviceB);

  // the exchange: each side's card goes to the other as JSON
  const cardA = JSON.parse(JSON.stringify(a.card())) as Card;
  const cardB = JSON.parse(JSON.stringify(b.card())) as Card;
  await a.connect(cardB);
  await b.connect(cardA);
  console.log(`A: QP ${cardA.qpn} at ${cardA.gid} connected to B: QP ${cardB.qpn} at ${cardB.gid}`);

  // a WRITE with immediate consumes a receive WQE at B: that is how B learns the write happened
  b.qp.postRecv({ wrId: 1n });
  const text = 'hello over RDMA';
  const n = a.mr.buf.write(text, 0);
  a.qp.postSend({
    wrId: 2n, opcode: WrOpcode.RDMA_WRITE_WITH_IMM, sendFlags: SendFlags.SIGNALED, imm: 0x1234, sgList: [a.mr.sge(0, n)],
    rdma: { remoteAddr: BigInt(cardB.addr), rkey: cardB.rkey },
  });

  const sent = await a.nextCompletion();
  console.log(`A: write completed: ${wcStatusName(sent.status)}`);
  const got = await b.nextCompletion();
  if (got.status !== WcStatus.SUCCESS) throw new Error(`B: ${wcStatusName(got.status)}`);
  console.log(`B: ${got.byteLen} bytes arrived with immediate 0x${got.imm.toString(16)}: "${b.mr.buf.toString('utf8', 0, got.byteLen)}"`);
}

const devs = getDeviceList();
const [first] = devs;
if (!first) {
  console.error('no softverbs device: start softverbsd first (or set SOFTVERBS_ROOT to its root)');
  process.exit(1);
}
await main(process.argv[2] ?? first.name, process.argv[3] ?? process.argv[2] ?? first.name);
