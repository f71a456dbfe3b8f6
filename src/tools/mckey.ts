/**
 * mckey (rdma-core's librdmacm/examples/mckey.c): UD multicast through the
 * RDMA CM. Each of -c ids resolves the group address (-m) from the bound
 * address (-b), makes a UD QP and joins the group (rdma_join_multicast;
 * -o as a send-only full member); on MULTICAST_JOIN it prints the group's
 * MGID and builds the AH to send to it. After three seconds the sender (-s)
 * posts -C unsignaled SEND_WITH_IMMs of -S bytes to QPN 0xFFFFFF (the
 * immediate is its QPN), a receiver polls until -C have arrived; then every
 * id leaves the group. Same flags, lines and return status.
 */
import { lookup } from 'node:dns/promises';
import { Access, QpType } from '../abi/enums.js';
import { CmEventType, cmEventStr, EventChannel, PortSpace, type CmEvent, type CmId } from '../verbs/cm.js';
import { atoi, exampleOpts } from './cli.js';
import { checkMtu, destroyNodes, GRH, postRecvs, postSends, type UdNode } from './ud-node.js';
import { codeOf, messageOf } from '../common/errors.js';
import { strerror } from '../common/errno.js';

const USAGE = (argv0: string) => `usage: ${argv0}
\t-m multicast_address
\t[-M unmapped_multicast_address]
\t replaces -m and requires -b
\t[-s(ender)]
\t[-b bind_address]
\t[-c connections]
\t[-C message_count]
\t[-S message_size]
\t[-p port_space - 0x111 for UDP (default), 0x2 for IPOIB]
\t[-o join as a send-only full-member]
\t[-l join without multicast loopback]
`;

type Node = UdNode & { cmId: CmId };

const out = (s: string) => process.stdout.write(s);
/** perror(): the message, then what errno says. */
const perror = (what: string, e: unknown) => process.stderr.write(`${what}: ${strerror(codeName(e))}\n`);
const codeName = (e: unknown): string => codeOf(e) ?? 'EIO';

/** inet_ntop(AF_INET6) as glibc writes it: an IPv4-mapped address as ::ffff:a.b.c.d, else the compressed form. */
export function ntop6(b: Uint8Array): string {
  if (b.subarray(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff) return `::ffff:${b[12]}.${b[13]}.${b[14]}.${b[15]}`;
  const w: number[] = [];
  for (let i = 0; i < 16; i += 2) w.push((b[i]! << 8) | b[i + 1]!);
  // the longest run of two or more zero words becomes ::
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (w[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && w[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (a: number[]) => a.map((x) => x.toString(16)).join(':');
  if (best < 0) return hex(w);
  return `${hex(w.slice(0, best))}::${hex(w.slice(best + bestLen))}`;
}

export async function main(argv: string[]): Promise<number> {
  let connections = 1;
  let messageSize = 100;
  let messageCount = 10;
  let isSender = false;
  let sendOnly = false;
  let loopback = true;
  let unmapped = false;
  let dst: string | undefined;
  let src: string | undefined;
  let ps: PortSpace = PortSpace.UDP;
  const opts = exampleOpts('mckey', argv, 'm:M:sb:c:C:S:p:ol', USAGE('mckey'));
  if (!opts) return 1;
  for (const [o, v] of opts) {
    if (o === 'm') dst = v;
    else if (o === 'M') {
      unmapped = true;
      dst = v;
    } else if (o === 's') isSender = true;
    else if (o === 'b') src = v;
    else if (o === 'c') connections = atoi(v);
    else if (o === 'C') messageCount = atoi(v);
    else if (o === 'S') messageSize = atoi(v);
    else if (o === 'p') ps = Number(v) as PortSpace;
    else if (o === 'o') sendOnly = true;
    else if (o === 'l') loopback = false;
  }
  if (unmapped && !src) {
    out('unmapped multicast address requires binding to source address\n');
    return 1;
  }
  let ch: EventChannel;
  try {
    ch = await EventChannel.create();
  } catch (e) {
    perror('failed to create event channel', e);
    return 1;
  }
  const t = { connectsLeft: connections };
  const nodes: Node[] = [];
  try {
    for (let i = 0; i < connections; i++) {
      const n: Node = { id: i, cmId: null as unknown as CmId, connected: false, remoteQpn: 0, remoteQkey: 0 };
      n.cmId = await ch.createId(ps, n);
      nodes.push(n);
    }
  } catch {
    for (const n of nodes) await n.cmId.destroy().catch(() => {});
    return 1;
  }
  const connectError = () => void t.connectsLeft--;

  const createMessage = async (n: Node): Promise<number> => {
    if (!messageSize) messageCount = 0;
    if (!messageCount) return 0;
    try {
      n.mr = await n.pd!.allocMr(messageSize + GRH, Access.LOCAL_WRITE);
    } catch {
      out('failed to reg MR\n');
      return -1;
    }
    return 0;
  };
  const verify = (n: Node): Promise<number> => checkMtu('mckey', n, messageCount, messageSize);
  const initNode = async (n: Node): Promise<number> => {
    const ctx = n.cmId.verbs!;
    try {
      n.pd = await ctx.allocPd();
    } catch {
      out('mckey: unable to allocate PD\n');
      return -12;
    }
    try {
      n.cq = await ctx.createCq(messageCount ? messageCount * 2 : 2);
    } catch {
      out('mckey: unable to create CQ\n');
      return -12;
    }
    // -l asks for IBV_QP_CREATE_BLOCK_SELF_MCAST_LB, a create flag rxe refuses (EOPNOTSUPP), as this device does
    if (!loopback) {
      process.stderr.write(`mckey: unable to create QP: ${strerror('EOPNOTSUPP')}\n`);
      return -1;
    }
    try {
      await n.cmId.createQp(n.pd, { sendCq: n.cq, recvCq: n.cq, qpType: QpType.UD, sqSigAll: false, cap: { maxSendWr: messageCount || 1, maxRecvWr: messageCount || 1, maxSendSge: 1, maxRecvSge: 1 } });
    } catch (e) {
      perror('mckey: unable to create QP', e);
      return -1;
    }
    const r = await createMessage(n);
    if (r) out(`mckey: failed to create messages: ${r}\n`);
    return r;
  };
  const pollCqs = async (): Promise<number> => {
    for (const n of nodes) {
      if (!n.connected) continue;
      for (let done = 0; done < messageCount; ) {
        const wcs = n.cq!.pollCq(8);
        done += wcs.length;
        if (!wcs.length) await new Promise((r) => setImmediate(r));
      }
    }
    return 0;
  };

  const addrHandler = async (n: Node): Promise<number> => {
    let r = await verify(n);
    if (!r) r = await initNode(n);
    if (!r && !isSender) r = postRecvs(n, messageCount, messageSize);
    if (!r) {
      try {
        await n.cmId.joinMulticast(dstAddr!, n, { sendOnly });
      } catch (e) {
        perror('mckey: failure joining', e);
        r = -1;
      }
    }
    if (r) connectError();
    return r;
  };
  const joinHandler = async (n: Node, ev: CmEvent): Promise<number> => {
    const ah = ev.param.ahAttr!;
    out(`mckey: joined dgid: ${ntop6(ah.grh!.dgid!)} mlid 0x${(ah.dlid ?? 0).toString(16)} sl ${ah.sl ?? 0}\n`);
    n.remoteQpn = ev.param.qpNum;
    n.remoteQkey = ev.param.qkey ?? 0;
    try {
      n.ah = await n.pd!.createAh(ah);
    } catch {
      out('mckey: failure creating address handle\n');
      connectError();
      return -1;
    }
    n.connected = true;
    t.connectsLeft--;
    return 0;
  };
  const handler = async (ev: CmEvent): Promise<number> => {
    const n = ev.id.context as Node;
    switch (ev.event) {
      case CmEventType.ADDR_RESOLVED:
        return addrHandler(n);
      case CmEventType.MULTICAST_JOIN:
        return joinHandler(n, ev);
      case CmEventType.ADDR_ERROR:
      case CmEventType.ROUTE_ERROR:
      case CmEventType.MULTICAST_ERROR:
        out(`mckey: event: ${cmEventStr(ev.event)}, error: ${ev.status}\n`);
        connectError();
        return ev.status;
      default:
        return 0;
    }
  };
  const connectEvents = async (): Promise<number> => {
    let r = 0;
    while (t.connectsLeft && !r) {
      const ev = await ch.getCmEvent();
      if (!ev) return -1;
      r = await handler(ev);
    }
    return r;
  };
  /** mckey's CM thread: events after the joins (a MULTICAST_ERROR, an ADDR_CHANGE) are printed. */
  const cmaThread = async (): Promise<void> => {
    for (;;) {
      const ev = await ch.getCmEvent();
      if (!ev) return;
      if (ev.event === CmEventType.MULTICAST_ERROR || ev.event === CmEventType.ADDR_CHANGE) out(`mckey: event: ${cmEventStr(ev.event)}, status: ${ev.status}\n`);
    }
  };

  let dstAddr: string | undefined;
  const run = async (): Promise<number> => {
    out(`mckey: starting ${isSender ? 'client' : 'server'}\n`);
    let srcAddr: string | undefined;
    try {
      if (src) srcAddr = (await lookup(src)).address;
      // -M names the group as an AF_IB address, which needs the kernel's AF_IB support (librdmacm falls back to IP without it)
      if (unmapped) throw Object.assign(new Error('AF_IB'), { code: 'EAFNOSUPPORT' });
      dstAddr = (await lookup(dst ?? '')).address;
    } catch (e) {
      if (codeName(e) === 'EAFNOSUPPORT') {
        perror('mckey: failure joining', e);
        return -1;
      }
      out(`getaddrinfo failed (${messageOf(e)}) - invalid hostname or IP address\n`);
      return -1;
    }
    out('mckey: joining\n');
    for (const n of nodes) {
      if (srcAddr) {
        try {
          await n.cmId.bindAddr(srcAddr);
        } catch (e) {
          perror('mckey: addr bind failure', e);
          connectError();
          return -1;
        }
      }
      try {
        await n.cmId.resolveAddr(dstAddr, 0, { src: srcAddr, timeoutMs: 2000 });
      } catch (e) {
        perror('mckey: resolve addr failure', e);
        connectError();
        return -1;
      }
    }
    let ret = await connectEvents();
    if (!ret) {
      void cmaThread();
      // mckey's pause "to give SM chance to configure switches": receivers joined meanwhile
      await new Promise((r) => setTimeout(r, 3000));
      if (messageCount) {
        if (isSender) {
          out('initiating data transfers\n');
          for (const n of nodes) if (!ret) ret = postSends(n, messageCount, messageSize, false);
        } else {
          out('receiving data transfers\n');
          ret = await pollCqs();
        }
        if (!ret) out('data transfers complete\n');
      }
    }
    for (const n of nodes) {
      try {
        await n.cmId.leaveMulticast(dstAddr);
        ret = 0;
      } catch (e) {
        perror('mckey: failure leaving', e);
        ret = -1;
      }
    }
    return ret;
  };

  const ret = await run();
  out('test complete\n');
  await destroyNodes(nodes);
  await ch.destroy();
  out(`return status ${ret}\n`);
  return ret & 0xff;
}
