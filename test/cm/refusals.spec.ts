/**
 * A refused connection says why: the library's event carries the REJ reason
 * (or SIDR status) in words next to its number, and the tools print
 * rdma-core's line unchanged with the meaning on a line of their own. The
 * retry counts a connection takes are 0 to 7, and anything else is refused
 * with EINVAL rather than cut to 3 bits on the wire.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import * as C from '../../src/abi/ucma.js';
import { CmEventType, createEp, EventChannel, getAddrInfo, PortSpace, QpState, type VerbsError } from '../../src/verbs/index.js';
import { A1, A2, DIST, suiteDaemon } from '../helpers.js';
import { connectToNobody, dial, expectEvent, listenOn, nextPort } from './helpers.js';

/** A tool run the way a user runs it, its stdout and stderr apart (rdma-core's lines are compared stream by stream). */
function tool(name: string, args: string[], root: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [join(DIST, 'src', 'bin', `${name}.js`), ...args], { env: { ...process.env, SOFTVERBS_ROOT: root }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout!.on('data', (d) => (stdout += d));
    p.stderr!.on('data', (d) => (stderr += d));
    const t = setTimeout(() => p.kill('SIGKILL'), 30_000);
    p.on('close', (code) => {
      clearTimeout(t);
      resolve({ code, stdout, stderr });
    });
  });
}

describe('refusals in words', () => {
  const d = suiteDaemon(['--device', `rxe0=${A1}`, '--device', `rxe1=${A2}`]);

  test('REJECTED keeps the IBA reason as its status and says it in words; so does a synchronous connect', async () => {
    const ch = await EventChannel.create(d.root);
    const e = await connectToNobody(ch, A2, A1, CmEventType.REJECTED);
    assert.equal(e.status, 8);
    assert.equal(e.reason, 'invalid service ID: nothing listens on that port');
    // the application's own refusal: consumer defined (28)
    const p = nextPort();
    const listen = await listenOn(ch, A2, p);
    const c = await dial(ch, A2, p, A1);
    await c.connect();
    const req = await expectEvent(ch, CmEventType.CONNECT_REQUEST);
    await req.id.reject();
    const r = await expectEvent(ch, CmEventType.REJECTED);
    assert.equal(r.status, 28);
    assert.match(r.reason!, /^consumer defined: the peer's application refused the connection \(rdma_reject\)/);
    for (const x of [c, req.id, listen]) {
      await x.destroyQp();
      await x.destroy();
    }
    await ch.destroy();
    const ep = await createEp(await getAddrInfo(A2, nextPort(), { src: A1 }), null, { cap: { maxSendWr: 1, maxRecvWr: 1 } }, d.root);
    await assert.rejects(ep.connect(), (err: VerbsError) => err.code === 'ECONNREFUSED' && err.message.includes('RDMA_CM_EVENT_REJECTED (status 8 = invalid service ID: nothing listens on that port)'));
    await ep[Symbol.asyncDispose]();
  });

  test('UD: UNREACHABLE keeps the SIDR status and says it in words', async () => {
    const ch = await EventChannel.create(d.root);
    const e = await connectToNobody(ch, A2, A1, CmEventType.UNREACHABLE, PortSpace.UDP);
    assert.equal(e.status, 1);
    assert.equal(e.reason, 'service ID not supported: nothing listens on that port for UD');
    await ch.destroy();
  });

  test("rping, ucmatose, udaddy and rdma_client to a port nothing listens on: rdma-core's line as it is, then what it means", async () => {
    const p = String(nextPort());
    const rping = await tool('rping', ['-c', '-a', A2, '-I', A1, '-p', p, '-C', '1'], d.root);
    assert.match(rping.stderr, /^cma event RDMA_CM_EVENT_REJECTED, error 8\nrping: error 8 = invalid service ID: nothing listens on that port\n/m, rping.stderr);
    assert.equal(rping.stdout, '');

    const cmatose = await tool('ucmatose', ['-s', A2, '-b', A1, '-p', p, '-c', '1'], d.root);
    // stdout line for line as rdma-core's; the meaning on stderr
    assert.match(cmatose.stdout, /^cmatose: event: RDMA_CM_EVENT_REJECTED, error: 8$/m);
    assert.doesNotMatch(cmatose.stdout, /invalid service ID/);
    assert.match(cmatose.stderr, /^cmatose: error 8 = invalid service ID: nothing listens on that port$/m);

    const udaddy = await tool('udaddy', ['-s', A2, '-b', A1, '-c', '1'], d.root);
    assert.match(udaddy.stdout, /^udaddy: event: RDMA_CM_EVENT_UNREACHABLE, error: 1$/m);
    assert.match(udaddy.stderr, /^udaddy: error 1 = service ID not supported: nothing listens on that port for UD$/m);

    const client = await tool('rdma_client', ['-s', A2, '-p', p], d.root);
    assert.equal(client.stdout, 'rdma_client: start\nrdma_client: end -1\n');
    // perror("rdma_connect") as the C program's, then the reason
    assert.match(client.stderr, /^rdma_connect: Connection refused\nrdma_client: rdma_connect: ECONNREFUSED: RDMA_CM_EVENT_REJECTED \(status 8 = invalid service ID: nothing listens on that port\)\n$/);
    assert.equal(client.code, 255);
  });

  test('retry counts: 0 to 7 reach both QPs through the REQ and REP; 8, -1, 2.5 or 300 are EINVAL, from the library and from the daemon', async () => {
    const ch = await EventChannel.create(d.root);
    const p = nextPort();
    const listen = await listenOn(ch, A2, p);
    const c = await dial(ch, A2, p, A1);
    for (const bad of [{ retryCount: 8 }, { retryCount: -1 }, { rnrRetryCount: 2.5 }, { rnrRetryCount: 300 }]) {
      await assert.rejects(c.connect(bad), (e: VerbsError) => e.code === 'EINVAL' && /(retryCount|rnrRetryCount) .* is not 0 to 7/.test(e.message), JSON.stringify(bad));
    }
    // what another client of the rdma_cm file might send: the daemon refuses it too rather than cut it to 3 bits
    const raw = { qp_num: c.qp!.qpNum, private_data: new Uint8Array(0), private_data_len: 0, responder_resources: 1, initiator_depth: 1, retry_count: 8, rnr_retry_count: 7, valid: 1 };
    await assert.rejects(c.channel.call('rdma_connect', C.UcmaSpecs.CONNECT, { id: c.handle, conn_param: raw }), (e: VerbsError) => e.code === 'EINVAL' && /retry_count 8/.test(e.message));
    await c.connect({ retryCount: 3, rnrRetryCount: 5 });
    const req = await expectEvent(ch, CmEventType.CONNECT_REQUEST);
    assert.equal(req.param.retryCount, 3);
    assert.equal(req.param.rnrRetryCount, 5);
    await req.id.createQp(null, { cap: { maxSendWr: 1, maxRecvWr: 1 } });
    await assert.rejects(req.id.accept({ rnrRetryCount: 9 }), { code: 'EINVAL' });
    await req.id.accept({ rnrRetryCount: 2 });
    await expectEvent(ch, CmEventType.ESTABLISHED);
    await expectEvent(ch, CmEventType.ESTABLISHED);
    const cli = (await c.initQpAttr(QpState.RTS)).attr;
    const srv = (await req.id.initQpAttr(QpState.RTS)).attr;
    // retryCount is the connection's (both QPs); each side's RNR retries are what the other side asked for
    assert.deepEqual([cli.retryCnt, cli.rnrRetry], [3, 2]);
    assert.deepEqual([srv.retryCnt, srv.rnrRetry], [3, 5]);
    for (const x of [c, req.id, listen]) {
      await x.destroyQp();
      await x.destroy();
    }
    await ch.destroy();
  });
});
