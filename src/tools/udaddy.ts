/**
 * udaddy (rdma-core's librdmacm/examples/udaddy.c): UD "connections" through
 * the RDMA CM's service ID resolution (SIDR): the client learns the server's
 * QPN, Q_Key and path from the SIDR_REP, sends -C SEND_WITH_IMMs of -S bytes
 * (the immediate is its own QPN), the server answers each over an AH built
 * from the GRH of what it received. Same flags, lines and return status.
 */
import { lookup } from 'node:dns/promises';
import { Access, QpType } from '../abi/enums.js';
import { CmEventType, cmEventStr, EventChannel, PortSpace, type CmEvent } from '../verbs/cm.js';
import { atoi, exampleOpts } from './cli.js';
import { checkMtu, destroyNodes, GRH, postRecvs, postSends, type UdNode } from './ud-node.js';
import { messageOf } from '../common/errors.js';

const USAGE = (argv0: string) => `usage: ${argv0}
\t[-s server_address]
\t[-b bind_address]
\t[-f address_format]
\t    name, ip, ipv6, or gid
\t[-P port_space]
\t    udp or ipoib
\t[-c connections]
\t[-C message_count]
\t[-S message_size]
\t[-t type_of_service]
\t[-p port_space - 0x111 for UDP (default), 0x2 for IPOIB]
`;

type Node = UdNode;

const out = (s: string) => process.stdout.write(s);

export async function main(argv: string[]): Promise<number> {
  let connections = 1;
  let messageSize = 100;
  let messageCount = 10;
  let dst: string | undefined;
  let src: string | undefined;
  let ps: PortSpace = PortSpace.UDP;
  const opts = exampleOpts('udaddy', argv, 's:b:c:C:S:t:p:P:f:', USAGE('udaddy'));
  if (!opts) return 1;
  for (const [o, v] of opts) {
    if (o === 's') dst = v;
    else if (o === 'b') src = v;
    else if (o === 'c') connections = atoi(v);
    else if (o === 'C') messageCount = atoi(v);
    else if (o === 'S') messageSize = atoi(v);
    else if (o === 'p') ps = Number(v) as PortSpace;
    else if (o === 'P') {
      if (/^ipoib/i.test(v)) ps = PortSpace.IPOIB;
      else if (!/^udp/i.test(v)) process.stderr.write('Warning: unknown port space format\n');
    } else if (o === 'f' && !/^(ip|gid|name)/i.test(v)) process.stderr.write('Warning: unknown address format\n');
  }
  if (!messageSize) messageCount = 0;
  let ch: EventChannel;
  try {
    ch = await EventChannel.create();
  } catch (e) {
    process.stderr.write(`failed to create event channel: ${messageOf(e)}\n`);
    return 1;
  }
  const t = { connectsLeft: connections, connIndex: 0 };
  const nodes: Node[] = Array.from({ length: Math.max(0, connections) }, (_, i) => ({ id: i, cmId: null, connected: false, remoteQpn: 0, remoteQkey: 0 }));
  if (dst) for (const n of nodes) n.cmId = await ch.createId(ps, n);

  const verify = (n: Node): Promise<number> => checkMtu('udaddy', n, messageCount, messageSize);
  const initNode = async (n: Node): Promise<number> => {
    const ctx = n.cmId!.verbs!;
    n.pd = await ctx.allocPd();
    const cqe = messageCount ? messageCount * 2 : 2;
    n.cq = await ctx.createCq(cqe);
    try {
      await n.cmId!.createQp(n.pd, { sendCq: n.cq, recvCq: n.cq, qpType: QpType.UD, cap: { maxSendWr: messageCount || 1, maxRecvWr: messageCount || 1, maxSendSge: 1, maxRecvSge: 1 } });
    } catch (e) {
      process.stderr.write(`udaddy: unable to create QP: ${messageOf(e)}\n`);
      return -1;
    }
    if (messageCount) n.mr = await n.pd.allocMr(messageSize + GRH, Access.LOCAL_WRITE);
    return 0;
  };
  /** Polls until each node has seen message_count completions; the first reply's GRH gives the server its AH back. */
  const pollCqs = async (): Promise<number> => {
    for (const n of nodes) {
      if (!n.connected) continue;
      for (let done = 0; done < messageCount; ) {
        const wcs = n.cq!.pollCq(8);
        done += wcs.length;
        if (wcs.length && !n.ah) {
          n.ah = await n.pd!.createAhFromWc(n.mr!.buf.subarray(0, GRH), n.cmId!.portNum || 1);
          n.remoteQpn = wcs[0]!.imm;
          n.remoteQkey = (await n.cmId!.qp!.queryQp(0x40)).qkey ?? 0;
        }
        if (!wcs.length) await new Promise((r) => setImmediate(r));
      }
    }
    return 0;
  };

  const handler = async (ev: CmEvent): Promise<number> => {
    const node = ev.id.context as Node | null;
    switch (ev.event) {
      case CmEventType.ADDR_RESOLVED:
        try {
          await ev.id.resolveRoute(2000);
        } catch (e) {
          process.stderr.write(`udaddy: resolve route failed: ${messageOf(e)}\n`);
          t.connectsLeft--;
          return -1;
        }
        return 0;
      case CmEventType.ROUTE_RESOLVED: {
        let r = await verify(node!);
        if (!r) r = await initNode(node!);
        if (!r) r = postRecvs(node!, messageCount, messageSize);
        if (!r) {
          try {
            await ev.id.connect();
          } catch (e) {
            process.stderr.write(`udaddy: failure connecting: ${messageOf(e)}\n`);
            r = -1;
          }
        }
        if (r) t.connectsLeft--;
        return r;
      }
      case CmEventType.CONNECT_REQUEST: {
        let r = -12;
        if (t.connIndex < connections) {
          const n = nodes[t.connIndex++]!;
          n.cmId = ev.id;
          ev.id.context = n;
          r = await verify(n);
          if (!r) r = await initNode(n);
          if (!r) r = postRecvs(n, messageCount, messageSize);
          if (!r) {
            try {
              await ev.id.accept({ qpNum: ev.id.qp!.qpNum });
              n.connected = true;
              t.connectsLeft--;
              return 0;
            } catch (e) {
              process.stderr.write(`udaddy: failure accepting: ${messageOf(e)}\n`);
              r = -1;
            }
          }
          n.cmId = null;
          t.connectsLeft--;
        }
        out('udaddy: failing connection request\n');
        await ev.id.reject().catch(() => {});
        return r;
      }
      case CmEventType.ESTABLISHED: {
        const n = node!;
        n.remoteQpn = ev.param.qpNum;
        n.remoteQkey = ev.param.qkey ?? 0;
        try {
          n.ah = await n.pd!.createAh(ev.param.ahAttr!);
        } catch {
          out('udaddy: failure creating address handle\n');
          t.connectsLeft--;
          return -1;
        }
        n.connected = true;
        t.connectsLeft--;
        return 0;
      }
      case CmEventType.ADDR_ERROR:
      case CmEventType.ROUTE_ERROR:
      case CmEventType.CONNECT_ERROR:
      case CmEventType.UNREACHABLE:
      case CmEventType.REJECTED:
        out(`udaddy: event: ${cmEventStr(ev.event)}, error: ${ev.status}\n`);
        // ours, on stderr: stdout stays rdma-core's line for line
        if (ev.reason) process.stderr.write(`udaddy: error ${ev.status} = ${ev.reason}\n`);
        t.connectsLeft--;
        return ev.status;
      default:
        return 0;
    }
  };
  const connectEvents = async (): Promise<number> => {
    let r = 0;
    while (t.connectsLeft > 0 && !r) {
      const ev = await ch.getCmEvent();
      if (!ev) return -1;
      r = await handler(ev);
    }
    return r;
  };

  let ret = 0;
  if (dst) {
    out('udaddy: starting client\n');
    let dstAddr: string;
    let srcAddr: string | undefined;
    try {
      dstAddr = (await lookup(dst)).address;
      srcAddr = src ? (await lookup(src)).address : undefined;
    } catch (e) {
      out(`udaddy: getaddrinfo error: ${messageOf(e)}\n`);
      return 255;
    }
    out('udaddy: connecting\n');
    for (const n of nodes) {
      try {
        await n.cmId!.resolveAddr(dstAddr, 7174, { src: srcAddr, timeoutMs: 2000 });
      } catch (e) {
        process.stderr.write(`udaddy: failure getting addr: ${messageOf(e)}\n`);
        return 255;
      }
    }
    ret = await connectEvents();
    if (!ret && messageCount) {
      out('initiating data transfers\n');
      for (const n of nodes) if (!ret) ret = postSends(n, messageCount, messageSize, false);
      if (!ret) {
        out('receiving data transfers\n');
        ret = await pollCqs();
      }
      if (!ret) out('data transfers complete\n');
    }
  } else {
    out('udaddy: starting server\n');
    const listen = await ch.createId(ps, t);
    try {
      await listen.bindAddr(src ? (await lookup(src)).address : '::', 7174);
      await listen.listen(0);
      await connectEvents();
      if (messageCount) {
        out('receiving data transfers\n');
        ret = await pollCqs();
        if (!ret) {
          out('sending replies\n');
          for (const n of nodes) if (!ret) ret = postSends(n, messageCount, messageSize, true);
        }
        if (!ret) ret = await pollCqs();
        if (!ret) out('data transfers complete\n');
      }
    } catch (e) {
      process.stderr.write(`udaddy: ${messageOf(e)}\n`);
      ret = -1;
    }
    await listen.destroy().catch(() => {});
  }
  out('test complete\n');
  await destroyNodes(nodes);
  await ch.destroy();
  out(`return status ${ret}\n`);
  return ret & 0xff;
}
