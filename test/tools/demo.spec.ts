/**
 * The demo (`npm start`) stops at an RDMA CM event it did not wait for and
 * says what came instead: for a refused connection, the REJ's reason in
 * words next to its number, as the library's event carries it. (The whole
 * demo runs in test/daemon/daemon.spec.ts.)
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { expectEvent } from '../../src/tools/demo.js';
import { CmEventType, EventChannel, PortSpace } from '../../src/verbs/index.js';
import { A1, A2, startDaemon } from '../helpers.js';

test('a connection refused where the demo waits for ESTABLISHED: the error names the event, its status and why', async () => {
  const d = await startDaemon(['--device', `rxe0=${A1}`, '--device', `rxe1=${A2}`]);
  try {
    const ch = await EventChannel.create(d.root);
    const id = await ch.createId(PortSpace.TCP);
    // nothing listens in a fresh daemon's port space
    await id.resolveAddr(A2, 7471, { src: A1 });
    await expectEvent(ch, CmEventType.ADDR_RESOLVED);
    await id.resolveRoute();
    await expectEvent(ch, CmEventType.ROUTE_RESOLVED);
    await id.createQp(null, { cap: { maxSendWr: 1, maxRecvWr: 1 } });
    await id.connect();
    await assert.rejects(expectEvent(ch, CmEventType.ESTABLISHED), {
      message: 'expected RDMA_CM_EVENT_ESTABLISHED, got RDMA_CM_EVENT_REJECTED (status 8 = invalid service ID: nothing listens on that port)',
    });
    await id.destroyQp();
    await id.destroy();
    await ch.destroy();
  } finally {
    await d.stop();
  }
});
