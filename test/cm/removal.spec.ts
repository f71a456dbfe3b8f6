/**
 * A device going away, as Linux's rdma_cm reports it: every cm_id bound to
 * it hears RDMA_CM_EVENT_DEVICE_REMOVAL (ids bound to no device hear
 * nothing), and is then good for rdma_destroy_id only. Both ways a device
 * goes: `rdma link delete`, and the daemon stopping on SIGTERM, where the
 * events reach a client process before its event channel ends.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { CmEventType, EventChannel, getDeviceList, type CmId } from '../../src/verbs/index.js';
import { A1, A2, A3, A4, DIST, mgmt, runProcess, startDaemon } from '../helpers.js';
import { dial, expectEvent, listenOn } from './helpers.js';

const port = 20000 + Math.floor(Math.random() * 20000);

describe('RDMA CM: DEVICE_REMOVAL', () => {
  test('SIGTERM: each id of a client process on a device hears DEVICE_REMOVAL, then its channel ends', async () => {
    const d = await startDaemon(['--device', `rxe0=${A1}`, '--device', `rxe1=${A2}`]);
    const child = spawn(process.execPath, [join(DIST, 'test', 'fixtures', 'cmremoval.js'), d.root, A1, A2, String(port)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let errs = '';
    child.stdout!.on('data', (b) => (out += b));
    child.stderr!.on('data', (b) => (errs += b));
    const exited = new Promise<number | null>((r) => child.on('close', r));
    try {
      await new Promise<void>((res, rej) => {
        const t = setTimeout(() => rej(new Error(`the client was not ready: ${out}${errs}`)), 20_000);
        const check = () => out.includes('ready\n') && (clearTimeout(t), res());
        child.stdout!.on('data', check);
        child.on('close', () => rej(new Error(`the client exited: ${out}${errs}`)));
      });
      await d.stop();
      const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
      const code = await exited;
      clearTimeout(t);
      assert.equal(code, 0, out + errs);
      const lines = out.trim().split('\n');
      assert.equal(lines.shift(), 'ready');
      assert.equal(lines.pop(), 'end', 'the channel ends after its events');
      const events = lines.map((l) => JSON.parse(l) as { event: string; id: string });
      assert.ok(events.every((e) => e.event === 'RDMA_CM_EVENT_DEVICE_REMOVAL'), out);
      // the listener on B, both ends of the connection; not the wildcard listener nor the unbound id (as Linux)
      assert.deepEqual(events.map((e) => e.id).sort(), ['client', 'listen', 'server']);
    } finally {
      child.kill('SIGKILL');
      await d.stop();
    }
  });

  test("rdma link delete: the device's ids, listening or connected, hear it and are left for rdma_destroy_id; the other device's go on", async () => {
    const d = await startDaemon(['--device', `rxe0=${A3}`, '--device', `rxe1=${A4}`]);
    try {
      const ch = await EventChannel.create(d.root);
      const on1 = await listenOn(ch, A4, port);
      const on0 = await listenOn(ch, A3, port);
      const cid = await dial(ch, A4, port, A3);
      await cid.connect();
      const req = await expectEvent(ch, CmEventType.CONNECT_REQUEST);
      const sid: CmId = req.id;
      await sid.createQp(null, { cap: { maxSendWr: 1, maxRecvWr: 1 } });
      await sid.accept();
      await expectEvent(ch, CmEventType.ESTABLISHED);
      await expectEvent(ch, CmEventType.ESTABLISHED);

      const r = await runProcess(process.execPath, [join(DIST, 'src', 'bin', 'rdma.js'), 'link', 'delete', 'rxe1'], { ...process.env, SOFTVERBS_ROOT: d.root });
      assert.equal(r.code, 0, r.out);
      const got = [await expectEvent(ch, CmEventType.DEVICE_REMOVAL), await expectEvent(ch, CmEventType.DEVICE_REMOVAL)];
      assert.deepEqual(new Set(got.map((e) => e.id)), new Set([on1, sid]));

      // the kernel's id is gone with the device: commands fail, nothing of it is tracked, only destroy is left
      await assert.rejects(sid.disconnect(), (e: NodeJS.ErrnoException) => e.code === 'ENXIO' && /DEVICE_REMOVAL/.test(e.message));
      await assert.rejects(on1.listen(), { code: 'ENXIO' });
      const rows: Array<{ type: string; dev: string | null; cmIdn: number }> = await mgmt(getDeviceList(d.root)[0]!.devPath, 'restrack');
      assert.deepEqual(rows.filter((x) => x.type === 'cm_id').map((x) => x.dev).sort(), ['rxe0', 'rxe0'], 'the listener and the client id on rxe0');
      await sid.destroyQp().catch(() => {});
      await sid.destroy();
      await on1.destroy();

      // rxe0's listener still takes connections
      const again = await dial(ch, A3, port, A3);
      await again.connect();
      const req2 = await expectEvent(ch, CmEventType.CONNECT_REQUEST);
      assert.equal(req2.listenId, on0);
      await req2.id.reject();
      await expectEvent(ch, CmEventType.REJECTED);
      for (const id of [again, req2.id, cid, on0]) {
        await id.destroyQp().catch(() => {});
        await id.destroy();
      }
      await ch.destroy();
    } finally {
      await d.stop();
    }
  });
});
