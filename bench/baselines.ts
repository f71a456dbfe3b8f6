/**
 * The bench's baselines, measured in the same run: Buffer.copy, a Node TCP stream, Node dgram throughput,
 * Node UDP and TCP ping-pong. Each with what its processes spent (bench/procstat.ts), so a line's ratio can
 * be read against what the baseline's processes did per operation.
 */
import { fork } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { createConnection, createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { lat, tick, type Lat } from './measure.js';
import { measured, Window, perOp, type Figures } from './procstat.js';

const RUN = join(dirname(fileURLToPath(import.meta.url)), 'run.js');
const SIZE = 64 * 1024;
const SECONDS = Number(process.env.BENCH_SECONDS ?? 2);
const PINGS = Number(process.env.BENCH_PINGS ?? 20000);

const me = (name: string) => ({ name: `${name} (bench)`, pid: process.pid });

/** Buffer.copy of 64 KiB in this process: bytes/s. */
export async function memcpyBw(): Promise<{ value: number; fig: Figures }> {
  return measured([me('copier')], 'copy', async () => {
    const src = Buffer.alloc(SIZE, 1);
    const dst = Buffer.alloc(SIZE);
    let n = 0;
    const t0 = process.hrtime.bigint();
    const end = t0 + BigInt(SECONDS * 1e9);
    while (process.hrtime.bigint() < end) {
      for (let i = 0; i < 64; i++) src.copy(dst);
      n += 64;
    }
    return { value: (n * SIZE) / (Number(process.hrtime.bigint() - t0) / 1e9), ops: n };
  });
}

/** A Node TCP stream on loopback, 64 KiB writes, the receiver in another process. */
export async function tcpBw(): Promise<{ value: number; fig: Figures }> {
  const sink = fork(RUN, ['--tcp-sink'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const port = await new Promise<number>((r) => sink.once('message', (m: { port: number }) => r(m.port)));
  const sock = createConnection(port, '127.0.0.1');
  await new Promise((r) => sock.once('connect', r));
  const chunk = Buffer.alloc(SIZE, 7);
  const w = await Window.open([me('writer'), { name: 'sink', pid: sink.pid! }]);
  const t0 = process.hrtime.bigint();
  const end = t0 + BigInt(SECONDS * 1e9);
  let sent = 0;
  while (process.hrtime.bigint() < end) {
    if (!sock.write(chunk)) await new Promise((r) => sock.once('drain', r));
    sent += SIZE;
  }
  sock.end();
  const got = await new Promise<number>((r) => sink.once('message', (m: { got: number }) => r(m.got)));
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  const fig = perOp(await w.end(), sent / SIZE, '64 KiB write');
  sink.kill();
  return { value: Math.min(sent, got) / s, fig };
}

/** Datagrams of `size` bytes from this process to a child on 127.0.0.2 for SECONDS: payload bytes/s that arrived. */
export async function udpBw(size: number): Promise<{ value: number; fig: Figures }> {
  const sink = fork(RUN, ['--udp-sink'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const port = await new Promise<number>((r) => sink.once('message', (m: { port: number }) => r(m.port)));
  const sock = createSocket('udp4');
  await new Promise<void>((r) => sock.bind(0, '127.0.0.1', () => r()));
  sock.setSendBufferSize(8 << 20);
  const msg = Buffer.alloc(size, 3);
  const w = await Window.open([me('sender'), { name: 'sink', pid: sink.pid! }]);
  const t0 = process.hrtime.bigint();
  const end = t0 + BigInt(SECONDS * 1e9);
  // a window of sends in flight: dgram queues them and reports each when handed to the kernel
  let inflight = 0;
  let sent = 0;
  while (process.hrtime.bigint() < end) {
    while (inflight < 64) {
      inflight++;
      sent++;
      sock.send(msg, port, '127.0.0.2', () => inflight--);
    }
    await tick();
  }
  while (inflight > 0) await tick();
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  sink.send('done');
  const got = await new Promise<number>((r) => sink.once('message', (m: { got: number }) => r(m.got)));
  const fig = perOp(await w.end(), sent, 'datagram sent');
  sink.kill();
  sock.close();
  return { value: (got * size) / s, fig };
}

/** Node UDP ping-pong of 8 bytes with a child echo on 127.0.0.2. Round trip in µs. */
export async function udpPingPong(): Promise<{ value: Lat; fig: Figures }> {
  const echo = fork(RUN, ['--udp-echo'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const port = await new Promise<number>((r) => echo.once('message', (m: { port: number }) => r(m.port)));
  const sock = createSocket('udp4');
  await new Promise<void>((r) => sock.bind(0, '127.0.0.1', () => r()));
  const msg = Buffer.alloc(8, 1);
  let answered: () => void = () => {};
  sock.on('message', () => answered());
  const r = await pingPong(echo.pid!, (done) => {
    answered = done;
    sock.send(msg, port, '127.0.0.2');
  });
  sock.close();
  echo.kill();
  return r;
}

/**
 * Round trips of `ping` (which calls `done` when the echo came back): 200 to warm up, then PINGS (at most
 * 10,000) timed, with the client's and the echo's figures over the timed ones.
 */
async function pingPong(echoPid: number, ping: (done: () => void) => void): Promise<{ value: Lat; fig: Figures }> {
  const n = Math.min(PINGS, 10000);
  const rtt: number[] = [];
  let w: Window | null = null;
  for (let i = 0; i < n + 200; i++) {
    if (i === 200) w = await Window.open([me('client'), { name: 'echo', pid: echoPid }]);
    const t = process.hrtime.bigint();
    await new Promise<void>(ping);
    if (i >= 200) rtt.push(Number(process.hrtime.bigint() - t) / 1e3);
  }
  return { value: lat(rtt), fig: perOp(await w!.end(), n, 'round trip', true) };
}

/** Node TCP ping-pong of 8 bytes with a child echo server. Round trip in µs. */
export async function tcpPingPong(): Promise<{ value: Lat; fig: Figures }> {
  const echo = fork(RUN, ['--tcp-echo'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const port = await new Promise<number>((r) => echo.once('message', (m: { port: number }) => r(m.port)));
  const sock = createConnection(port, '127.0.0.1');
  sock.setNoDelay(true);
  await new Promise((r) => sock.once('connect', r));
  const msg = Buffer.alloc(8, 1);
  let have = 0;
  let answered: () => void = () => {};
  sock.on('data', (d) => {
    have += d.length;
    if (have >= 8) {
      have -= 8;
      answered();
    }
  });
  const r = await pingPong(echo.pid!, (done) => {
    answered = done;
    sock.write(msg);
  });
  sock.destroy();
  echo.kill();
  return r;
}

/** The children the baselines fork (run.js dispatches to here): false if `role` is none of theirs. */
export function baselineRole(role: string | undefined): boolean {
  if (role === '--tcp-sink') {
    const srv = createServer((s) => {
      let got = 0;
      s.on('data', (d) => (got += d.length));
      s.on('end', () => process.send!({ got }));
    }).listen(0, '127.0.0.1', () => process.send!({ port: (srv.address() as { port: number }).port }));
  } else if (role === '--udp-sink') {
    const s = createSocket('udp4');
    let got = 0;
    s.on('message', () => got++);
    s.bind(0, '127.0.0.2', () => {
      try {
        s.setRecvBufferSize(8 << 20);
      } catch {
        /* rmem_max caps it */
      }
      process.send!({ port: s.address().port });
    });
    process.on('message', () => setTimeout(() => process.send!({ got }), 100));
  } else if (role === '--udp-echo') {
    const s = createSocket('udp4');
    s.on('message', (m, r) => s.send(m, r.port, r.address));
    s.bind(0, '127.0.0.2', () => process.send!({ port: s.address().port }));
  } else if (role === '--tcp-echo') {
    const srv = createServer((s) => {
      s.setNoDelay(true);
      s.on('data', (d) => s.write(d));
    }).listen(0, '127.0.0.1', () => process.send!({ port: (srv.address() as { port: number }).port }));
  } else return false;
  return true;
}
