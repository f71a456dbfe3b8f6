/**
 * rdma_server and rdma_client (rdma-core's librdmacm/examples): the smallest
 * programs of librdmacm's convenience layer. The client connects to the
 * server (rdma_getaddrinfo, rdma_create_ep, rdma_connect), sends 16 bytes and
 * waits for the server's 16; the server answers the one connection it takes.
 */
import { SendFlags } from '../abi/enums.js';
import { strerror } from '../common/errno.js';
import { createEp, getAddrInfo, PortSpace, type CmId } from '../verbs/cm.js';
import { VerbsError } from '../verbs/errors.js';
import type { MemoryRegion } from '../verbs/mr.js';
import { exampleOpts } from './cli.js';
import { messageOf } from '../common/errors.js';

const out = (s: string) => process.stdout.write(s);

/** perror() of the verb that failed, the line the C programs print, then (ours) what went wrong in full. */
function perror(tool: string, e: unknown): void {
  if (e instanceof VerbsError) process.stderr.write(`${e.verb}: ${strerror(e.code)}\n`);
  process.stderr.write(`${tool}: ${messageOf(e)}\n`);
}

/** The 16-byte exchange with inline sends when the QP takes them, as the C programs decide. */
async function exchange(id: CmId, server: boolean): Promise<number> {
  const qp = await id.qp!.queryQp(1 << 19);
  const inline = (qp.cap?.maxInlineData ?? 0) >= 16;
  if (!inline) out(`rdma_${server ? 'server' : 'client'}: device doesn't support IBV_SEND_INLINE, using sge sends\n`);
  const recv: MemoryRegion = await id.allocMsgs(16);
  const send: MemoryRegion = await id.allocMsgs(16);
  const flags = inline ? SendFlags.INLINE : 0;
  id.postRecv(recv, 0, 16);
  if (server) {
    await id.accept();
    const wc = await id.getRecvComp();
    if (wc.status) return -1;
    id.postSend(send, 0, 16, flags);
    const sc = await id.getSendComp();
    return sc.status ? -1 : 0;
  }
  await id.connect();
  id.postSend(send, 0, 16, flags);
  if ((await id.getSendComp()).status) return -1;
  return (await id.getRecvComp()).status ? -1 : 0;
}

export async function server(argv: string[]): Promise<number> {
  let port = '7471';
  const opts = exampleOpts('rdma_server', argv, 'p:', 'usage: rdma_server\n\t[-p port_number]\n');
  if (!opts) return 1;
  for (const [o, v] of opts) if (o === 'p') port = v;
  out('rdma_server: start\n');
  let ret = 0;
  let listen: CmId | null = null;
  let id: CmId | null = null;
  try {
    const res = await getAddrInfo(null, port, { passive: true, portSpace: PortSpace.TCP });
    listen = await createEp(res, null, { cap: { maxSendWr: 1, maxRecvWr: 1, maxSendSge: 1, maxRecvSge: 1, maxInlineData: 16 }, sqSigAll: true });
    await listen.listen(0);
    id = await listen.getRequest();
    ret = await exchange(id, true);
    await id.disconnect().catch(() => {});
  } catch (e) {
    perror('rdma_server', e);
    ret = -1;
  }
  if (id) await id[Symbol.asyncDispose]().catch(() => {});
  if (listen) await listen[Symbol.asyncDispose]().catch(() => {});
  out(`rdma_server: end ${ret}\n`);
  return ret & 0xff;
}

export async function client(argv: string[]): Promise<number> {
  let host = '127.0.0.1';
  let port = '7471';
  const opts = exampleOpts('rdma_client', argv, 's:p:', 'usage: rdma_client\n\t[-s server_address]\n\t[-p port_number]\n');
  if (!opts) return 1;
  for (const [o, v] of opts) {
    if (o === 's') host = v;
    else if (o === 'p') port = v;
  }
  out('rdma_client: start\n');
  let ret = 0;
  let id: CmId | null = null;
  try {
    const res = await getAddrInfo(host, port, { portSpace: PortSpace.TCP });
    id = await createEp(res, null, { cap: { maxSendWr: 1, maxRecvWr: 1, maxSendSge: 1, maxRecvSge: 1, maxInlineData: 16 }, sqSigAll: true });
    ret = await exchange(id, false);
    await id.disconnect().catch(() => {});
  } catch (e) {
    perror('rdma_client', e);
    ret = -1;
  }
  if (id) await id[Symbol.asyncDispose]().catch(() => {});
  out(`rdma_client: end ${ret}\n`);
  return ret & 0xff;
}
