/**
 * ucmatose (rdma-core's librdmacm/examples/cmatose.c): opens -c connections
 * through the RDMA CM, the server sends -C messages of -S bytes on each, the
 * client answers each with as many, then the server disconnects them all.
 * Same flags, lines and return status as rdma-core's.
 */
import { lookup } from 'node:dns/promises';
import { Access, QpType, WrOpcode } from '../abi/enums.js';
import { CmEventType, cmEventStr, EventChannel, PortSpace, type CmEvent, type CmId } from '../verbs/cm.js';
import type { CompletionQueue } from '../verbs/cq.js';
import type { MemoryRegion } from '../verbs/mr.js';
import type { ProtectionDomain } from '../verbs/pd.js';
import { atoi, exampleOpts } from './cli.js';
import { codeOf, errnoOf, messageOf } from '../common/errors.js';

const USAGE = (argv0: string) => `usage: ${argv0}
\t[-s server_address]
\t[-b bind_address]
\t[-f address_format]
\t    name, ip, ipv6, or gid
\t[-P port_space]
\t    tcp or ib
\t[-c connections]
\t[-C message_count]
\t[-S message_size]
\t[-t type_of_service]
\t[-p port_number]
\t[-m(igrate)]
`;

interface Node {
  id: number;
  cmId: CmId | null;
  connected: boolean;
  pd?: ProtectionDomain;
  cq: [CompletionQueue | null, CompletionQueue | null];
  mr?: MemoryRegion;
}

const out = (s: string) => process.stdout.write(s);

export async function main(argv: string[]): Promise<number> {
  let connections = 1;
  let messageSize = 100;
  let messageCount = 10;
  let port = '7471';
  let dst: string | undefined;
  let src: string | undefined;
  let ps: PortSpace = PortSpace.TCP;
  let migrate = false;
  const opts = exampleOpts('ucmatose', argv, 's:b:f:P:c:C:S:t:p:m', USAGE('ucmatose'));
  if (!opts) return 1;
  for (const [o, v] of opts) {
    if (o === 's') dst = v;
    else if (o === 'b') src = v;
    else if (o === 'f') {
      if (!/^(ip|gid|name)/i.test(v)) process.stderr.write('Warning: unknown address format\n');
    } else if (o === 'P') {
      if (/^ib/i.test(v)) ps = PortSpace.IB;
      else if (!/^tcp/i.test(v)) process.stderr.write('Warning: unknown port space format\n');
    } else if (o === 'c') connections = atoi(v);
    else if (o === 'C') messageCount = atoi(v);
    else if (o === 'S') messageSize = atoi(v);
    else if (o === 'p') port = v;
    else if (o === 'm') migrate = true;
  }
  if (!messageSize) messageCount = 0;
  let ch: EventChannel;
  try {
    ch = await EventChannel.create();
  } catch {
    out('failed to create event channel\n');
    return 1;
  }
  const t = { connectsLeft: connections, disconnectsLeft: 0, connIndex: 0 };
  const nodes: Node[] = Array.from({ length: Math.max(0, connections) }, (_, i) => ({ id: i, cmId: null, connected: false, cq: [null, null] }));
  let ret = 0;
  try {
    if (dst) {
      for (const n of nodes) n.cmId = await ch.createId(ps, n);
    }
  } catch {
    return 1;
  }

  const initNode = async (n: Node): Promise<number> => {
    const ctx = n.cmId!.verbs!;
    try {
      n.pd = await ctx.allocPd();
    } catch {
      out('cmatose: unable to allocate PD\n');
      return -12;
    }
    const cqe = messageCount ? messageCount : 1;
    try {
      n.cq = [await ctx.createCq(cqe), await ctx.createCq(cqe)];
    } catch {
      out('cmatose: unable to create CQ\n');
      return -12;
    }
    try {
      await n.cmId!.createQp(n.pd, { sendCq: n.cq[0]!, recvCq: n.cq[1]!, qpType: QpType.RC, sqSigAll: true, cap: { maxSendWr: cqe, maxRecvWr: cqe, maxSendSge: 1, maxRecvSge: 1 } });
    } catch (e) {
      process.stderr.write(`cmatose: unable to create QP: ${messageOf(e)}\n`);
      return -1;
    }
    if (messageCount) {
      try {
        n.mr = await n.pd.allocMr(messageSize, Access.LOCAL_WRITE);
      } catch {
        out('failed to reg MR\n');
        out('cmatose: failed to create messages: -1\n');
        return -1;
      }
    }
    return 0;
  };
  const postRecvs = (n: Node): number => {
    if (!messageCount) return 0;
    try {
      for (let i = 0; i < messageCount; i++) n.cmId!.qp!.postRecv({ wrId: BigInt(n.id), sgList: [n.mr!.sge(0, messageSize)] });
    } catch (e) {
      out(`failed to post receives: ${errnoOf(e) ?? -1}\n`);
      return -1;
    }
    return 0;
  };
  const postSends = (n: Node): number => {
    if (!n.connected || !messageCount) return 0;
    try {
      for (let i = 0; i < messageCount; i++) n.cmId!.qp!.postSend({ wrId: BigInt(n.id), opcode: WrOpcode.SEND, sgList: [n.mr!.sge(0, messageSize)] });
    } catch (e) {
      out(`failed to post sends: ${errnoOf(e) ?? -1}\n`);
      return -1;
    }
    return 0;
  };
  const pollCqs = async (index: 0 | 1): Promise<number> => {
    for (const n of nodes) {
      if (!n.connected) continue;
      for (let done = 0; done < messageCount; ) {
        const got = n.cq[index]!.pollCq(8).length;
        done += got;
        if (!got) await new Promise((r) => setImmediate(r));
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
          process.stderr.write(`cmatose: resolve route failed: ${messageOf(e)}\n`);
          t.connectsLeft--;
          return -1;
        }
        return 0;
      case CmEventType.ROUTE_RESOLVED: {
        let r = await initNode(node!);
        if (!r) r = postRecvs(node!);
        if (!r) {
          try {
            await ev.id.connect({ responderResources: 1, initiatorDepth: 1, retryCount: 5 });
          } catch (e) {
            process.stderr.write(`cmatose: failure connecting: ${messageOf(e)}\n`);
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
          r = await initNode(n);
          if (!r) r = postRecvs(n);
          if (!r) {
            try {
              await ev.id.accept();
              return 0;
            } catch (e) {
              process.stderr.write(`cmatose: failure accepting: ${messageOf(e)}\n`);
              r = -1;
            }
          }
          n.cmId = null;
          t.connectsLeft--;
        }
        out('cmatose: failing connection request\n');
        await ev.id.reject().catch(() => {});
        return r;
      }
      case CmEventType.ESTABLISHED:
        node!.connected = true;
        t.connectsLeft--;
        t.disconnectsLeft++;
        return 0;
      case CmEventType.ADDR_ERROR:
      case CmEventType.ROUTE_ERROR:
      case CmEventType.CONNECT_ERROR:
      case CmEventType.UNREACHABLE:
      case CmEventType.REJECTED:
        out(`cmatose: event: ${cmEventStr(ev.event)}, error: ${ev.status}\n`);
        // ours, on stderr: stdout stays rdma-core's line for line
        if (ev.reason) process.stderr.write(`cmatose: error ${ev.status} = ${ev.reason}\n`);
        t.connectsLeft--;
        return ev.status;
      case CmEventType.DISCONNECTED:
        await ev.id.disconnect().catch(() => {});
        t.disconnectsLeft--;
        return 0;
      default:
        return 0;
    }
  };
  const events = async (left: () => number): Promise<number> => {
    let r = 0;
    while (left() > 0 && !r) {
      const ev = await ch.getCmEvent();
      if (!ev) return -1;
      r = await handler(ev);
    }
    return r;
  };

  /** cmatose's migrate_channel: every id (the listener first) to a new channel, and the old one destroyed. */
  const migrateChannel = async (listen: CmId | null): Promise<number> => {
    out('migrating to new event channel\n');
    let to: EventChannel;
    try {
      to = await EventChannel.create();
    } catch (e) {
      process.stderr.write(`cmatose: failed to create event channel: ${messageOf(e)}\n`);
      return -1;
    }
    try {
      if (listen) await listen.migrate(to);
      for (const n of nodes) if (n.cmId) await n.cmId.migrate(to);
    } catch (e) {
      process.stderr.write(`cmatose: failure migrating to channel: ${messageOf(e)}\n`);
      return -1;
    }
    await ch.destroy();
    ch = to;
    return 0;
  };

  const resolve = async (name: string | undefined): Promise<string | null> => {
    if (!name) return null;
    return (await lookup(name)).address;
  };

  if (dst) {
    out('cmatose: starting client\n');
    let dstAddr: string;
    let srcAddr: string | null;
    try {
      dstAddr = (await resolve(dst))!;
      srcAddr = await resolve(src);
    } catch (e) {
      out(`cmatose: getaddrinfo error: ${codeOf(e) === 'ENOTFOUND' ? 'Name or service not known' : messageOf(e)}\n`);
      return 255;
    }
    out('cmatose: connecting\n');
    for (const n of nodes) {
      try {
        await n.cmId!.resolveAddr(dstAddr, atoi(port), { src: srcAddr ?? undefined, timeoutMs: 2000 });
      } catch (e) {
        process.stderr.write(`cmatose: failure getting addr: ${messageOf(e)}\n`);
        t.connectsLeft--;
        ret = -1;
        break;
      }
    }
    if (!ret) {
      ret = await events(() => t.connectsLeft);
      if (!ret && messageCount) {
        out('receiving data transfers\n');
        ret = await pollCqs(1);
        if (!ret) {
          out('sending replies\n');
          for (const n of nodes) if (!ret) ret = postSends(n);
          if (!ret) out('data transfers complete\n');
        }
      }
      // cmatose's client migrates only after a clean run, and a failed migration skips the disconnects
      let migrated = 0;
      if (!ret && migrate) migrated = ret = await migrateChannel(null);
      if (!migrated) {
        const r2 = await events(() => t.disconnectsLeft);
        if (r2) ret = r2;
      }
    }
  } else {
    out('cmatose: starting server\n');
    let listen: CmId | null = null;
    try {
      listen = await ch.createId(ps, t);
      const bind = src ? (await resolve(src))! : '::';
      await listen.bindAddr(bind, atoi(port));
      await listen.listen(0);
    } catch (e) {
      process.stderr.write(`cmatose: ${listen ? 'bind address failed' : 'listen request failed'}: ${messageOf(e)}\n`);
      ret = -1;
    }
    if (!ret) ret = await events(() => t.connectsLeft);
    if (!ret && messageCount) {
      out('initiating data transfers\n');
      for (const n of nodes) if (!ret) ret = postSends(n);
      if (!ret) {
        out('completing sends\n');
        ret = await pollCqs(0);
      }
      if (!ret) {
        out('receiving data transfers\n');
        ret = await pollCqs(1);
      }
      if (!ret) out('data transfers complete\n');
    }
    if (!ret && migrate) ret = await migrateChannel(listen);
    if (!ret) {
      out('cmatose: disconnecting\n');
      for (const n of nodes) {
        if (!n.connected) continue;
        n.connected = false;
        await n.cmId!.disconnect().catch(() => {});
      }
      ret = await events(() => t.disconnectsLeft);
      out('disconnected\n');
    }
    await listen?.destroy().catch(() => {});
  }
  out('test complete\n');
  for (const n of nodes) {
    if (!n.cmId) continue;
    await n.cmId.destroyQp().catch(() => {});
    for (const cq of n.cq) await cq?.destroyCq().catch(() => {});
    await n.mr?.deregMr().catch(() => {});
    await n.pd?.deallocPd().catch(() => {});
    await n.cmId.destroy().catch(() => {});
  }
  await ch.destroy();
  out(`return status ${ret}\n`);
  return ret & 0xff;
}
