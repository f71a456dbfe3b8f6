/**
 * The connection manager under hostile input: fuzzed CM MADs from the wire
 * to QP1 (well-formed headers over random messages, REQs aimed at a real
 * listener with random fields, mangled bytes), and random frames on the
 * rdma_cm file from an unprivileged process. Afterwards the daemon is alive,
 * reported no internal error, and rping still connects through it.
 */
import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { connect } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { xorshift32 } from '../../src/common/rng.js';
import { CmAttr, encodeMad, ipCmPrivateData, LAYOUTS, REQ, serviceId } from '../../src/cm/mad.js';
import { encodeFrame } from '../../src/hca/codec.js';
import { Pkt } from '../../src/hca/packet.js';
import { SvUcmaCmd, ucmaSvFrame } from '../../src/abi/ucma.js';
import { CmEventType, EventChannel, PortSpace } from '../../src/verbs/index.js';
import { A3, A4, DIST, runProcess, startDaemon } from '../helpers.js';

const TOTAL = Number(process.env.CM_MADS ?? 5000);

test(`${TOTAL} fuzzed CM MADs to QP1 and random rdma_cm frames: the daemon is unharmed and still connects`, async (t) => {
  const d = await startDaemon(['--device', `rxe0=${A3},wire=udp`, '--device', `rxe1=${A4}`]);
  const sock = createSocket('udp4');
  const ch = await EventChannel.create(d.root);
  try {
    const listen = await ch.createId(PortSpace.TCP);
    await listen.bindAddr(A3, 7474);
    await listen.listen(16);
    // whatever requests get through are refused, as a careful server would
    let requests = 0;
    const serve = (async () => {
      for await (const ev of ch) {
        if (ev.event === CmEventType.CONNECT_REQUEST) {
          requests++;
          await ev.id.reject().catch(() => {});
          await ev.id.destroy().catch(() => {});
        }
      }
    })();
    const rand = xorshift32(0xc0ffee);
    const ri = (n: number) => Math.floor(rand() * n);
    const rbytes = (n: number) => Uint8Array.from({ length: n }, () => ri(256));
    const attrs = Object.keys(LAYOUTS).map(Number) as CmAttr[];
    const p = new Pkt();
    const frame = new Uint8Array(512);
    const src = new Uint8Array([127, 0, 0, 1]);
    const dst = new Uint8Array(A3.split('.').map(Number));
    const listenerAddr = new Uint8Array(16);
    listenerAddr.set(dst, 12);
    for (let sent = 0; sent < TOTAL; ) {
      const batch: Promise<void>[] = [];
      for (let k = 0; k < 128 && sent < TOTAL; k++, sent++) {
        let mad: Uint8Array;
        const r = rand();
        if (r < 0.4) {
          // a REQ for the real listener, every other field random
          const fields: Record<string, unknown> = {};
          for (const f of REQ) fields[f[0]] = f[2] === 'bytes' ? rbytes(f[3]) : f[3] === 64 ? BigInt(ri(2 ** 32)) : ri(2 ** Math.min(f[3], 31));
          fields.service_id = serviceId(PortSpace.TCP, rand() < 0.8 ? 7474 : ri(65536));
          fields.private_data = ipCmPrivateData({ version: rand() < 0.9 ? 0 : ri(256), ipVersion: rand() < 0.9 ? 4 : 6, srcPort: ri(65536), src: rbytes(16), dst: listenerAddr }, rbytes(56), 92);
          mad = encodeMad(CmAttr.REQ, BigInt(ri(2 ** 32)), REQ, fields as Parameters<typeof encodeMad<typeof REQ>>[3]);
        } else {
          const attr = attrs[ri(attrs.length)]!;
          mad = encodeMad(attr, BigInt(ri(2 ** 32)), LAYOUTS[attr], {});
          mad.set(rbytes(232), 24);
        }
        if (rand() < 0.1) mad[ri(24)] = ri(256); // a mangled header
        p.reset();
        p.opcode = 0x64;
        p.destQpn = rand() < 0.95 ? 1 : ri(1 << 24);
        p.srcQpn = 1;
        p.qkey = rand() < 0.95 ? 0x80010000 : ri(2 ** 32);
        p.psn = ri(1 << 24);
        p.payload = mad;
        p.payOff = 0;
        p.payLen = rand() < 0.95 ? 256 : ri(256);
        p.padCnt = (4 - (p.payLen & 3)) & 3;
        const n = encodeFrame(p, src, dst, 0, frame);
        const out = frame.slice(28, n);
        batch.push(new Promise<void>((res) => sock.send(out, 4791, A3, () => res())));
      }
      await Promise.all(batch);
      await new Promise((res) => setTimeout(res, 2));
    }
    // random frames on the rdma_cm file: short, long, unknown commands, garbage structs; every other connection a C
    // program's (NOTIFY_TOKEN first), some of them with a notification stream attached, then fed the same
    const path = join(d.root, 'dev', 'infiniband', 'rdma_cm');
    for (let i = 0; i < 40; i++) {
      await new Promise<void>((res) => {
        const s = connect(path);
        s.on('error', () => res());
        s.on('close', () => res());
        s.on('connect', () => {
          const frames: Buffer[] = i % 2 ? [ucmaSvFrame(SvUcmaCmd.NOTIFY_TOKEN)] : [];
          if (i % 2) {
            // the token comes back after the 16-byte reply header: a stream attached by it gets its bytes (or garbage)
            s.once('data', (d: Buffer) => {
              const n = connect(path);
              n.on('error', () => {});
              n.on('connect', () => n.write(Buffer.concat([ucmaSvFrame(SvUcmaCmd.ATTACH_NOTIFY, d.length >= 20 ? d.readUInt32LE(16) : 0), Buffer.from(rbytes(ri(64)))])));
              setTimeout(() => n.destroy(), 60);
            });
          }
          for (let j = 0; j < 20; j++) {
            const body = Buffer.from(rbytes(ri(600)));
            const h = Buffer.alloc(8);
            h.writeUInt32LE(rand() < 0.7 ? ri(24) : ri(2 ** 32), 0);
            h.writeUInt16LE(rand() < 0.9 ? body.length : ri(65536), 4);
            h.writeUInt16LE(ri(65536), 6);
            frames.push(h, body);
          }
          s.write(Buffer.concat(frames));
          setTimeout(() => s.destroy(), 30);
        });
      });
    }
    await new Promise((res) => setTimeout(res, 300));
    t.diagnostic(`${TOTAL} MADs sent, ${requests} became connection requests`);
    assert.equal(d.proc.exitCode, null, d.stderr());
    assert.doesNotMatch(d.stderr(), /internal error/);
    assert.ok(requests > 0, 'some fuzzed REQs reached the listener');
    // still serving: rping across the two devices
    const rping = join(DIST, 'src', 'bin', 'rping.js');
    const env = { ...process.env, SOFTVERBS_ROOT: d.root };
    const srv = runProcess(process.execPath, [rping, '-s', '-a', A4, '-p', '7475', '-C', '3'], env);
    await new Promise((res) => setTimeout(res, 400));
    const cli = await runProcess(process.execPath, [rping, '-c', '-a', A4, '-I', A3, '-p', '7475', '-C', '3', '-V'], env);
    assert.equal(cli.code, 0, cli.out);
    assert.equal((await srv).code, 0);
    await ch.destroy();
    await serve;
  } finally {
    sock.close();
    await d.stop();
  }
});
