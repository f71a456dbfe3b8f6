/**
 * perftest 4.5-0.17's out-of-band exchange over TCP (its "Ethernet" data
 * exchange method, port 18515). Every exchange is symmetric and fixed-size:
 * the client writes its message and then reads the server's; the server
 * reads first, then writes (ctx_xchg_data / ctx_hand_shake). What goes over:
 *
 *  - the version string, 16 bytes ("6.06" and NULs);
 *  - cycle_buffer (page size) and cache_line_size, 4 bytes each, big-endian;
 *  - the MTU enum as "%d" in 2 bytes;
 *  - per QP, the 108-byte key message KEY_PRINT_FMT_GID
 *    "%04x:%04x:%06x:%06x:%08x:%016llx:" (lid, out_reads, qpn, psn, rkey,
 *    vaddr), 16 "%02x:" GID bytes, "%08x:" srqn and a NUL — the same message
 *    again as a barrier wherever the tools need one;
 *  - bandwidth reports, five 8-byte big-endian fields (size, iters, peak,
 *    average, message rate);
 *  - "done" and its NUL, written by each side as it closes.
 * The codec is pure; `Oob` is the thin socket part. With -R the same
 * messages travel as RDMA SENDs over an RDMA CM connection instead
 * (`cm-exchange.ts`), except the key message, which is then struct
 * pingpong_dest itself (56 bytes, big-endian fields: `encodeDest`).
 */
import { createConnection, createServer, type Socket } from 'node:net';
import { reader } from '../sockio.js';
import { codeOf, Fail } from '../../common/errors.js';

export const VERSION_SIZE = 16;
export const KEY_MSG_SIZE_GID = 108;

/** struct pingpong_dest, as far as the exchange carries it. */
export interface PerfDest {
  lid: number;
  outReads: number;
  qpn: number;
  psn: number;
  rkey: number;
  vaddr: bigint;
  gid: Uint8Array;
  srqn: number;
}

export interface BwReport {
  size: bigint;
  iters: bigint;
  bwPeak: number;
  bwAvg: number;
  msgRate: number;
}

const hex = (n: number | bigint, w: number) => n.toString(16).padStart(w, '0');

export function encodeVersion(v: string): Buffer {
  const b = Buffer.alloc(VERSION_SIZE);
  b.write(v.slice(0, VERSION_SIZE - 1), 'latin1');
  return b;
}

/** The C string in a version message, and atof() of it as perftest reads it. */
export function decodeVersion(b: Buffer): { text: string; value: number } {
  const text = b.toString('latin1').replace(/\0.*$/s, '');
  const m = /^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?/.exec(text);
  return { text, value: m ? parseFloat(m[0]) : 0 };
}

export function encodeInt(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n | 0);
  return b;
}

export const decodeInt = (b: Buffer): number => b.readInt32BE(0);

/** sprintf(cur, "%d", mtu) sent as 2 bytes: the digit and its NUL. */
export function encodeMtu(mtuEnum: number): Buffer {
  const b = Buffer.alloc(2);
  b.write(String(mtuEnum).slice(0, 2), 'latin1');
  return b;
}

export function decodeMtu(b: Buffer): number {
  const m = /^\s*[+-]?\d+/.exec(b.toString('latin1').replace(/\0.*$/s, ''));
  return m ? parseInt(m[0], 10) : 0;
}

export function encodeKey(d: PerfDest): Buffer {
  const b = Buffer.alloc(KEY_MSG_SIZE_GID);
  const gid = Array.from(d.gid, (x) => `${hex(x, 2)}:`).join('');
  // 107 characters and the NUL sprintf adds: exactly the message size
  b.write(`${hex(d.lid, 4)}:${hex(d.outReads, 4)}:${hex(d.qpn, 6)}:${hex(d.psn, 6)}:${hex(d.rkey >>> 0, 8)}:${hex(d.vaddr, 16)}:${gid}${hex(d.srqn >>> 0, 8)}:`, 'latin1');
  return b;
}

/** ethernet_read_keys: colon-separated hex fields, strtol each; null if the message has too few fields. */
export function decodeKey(b: Buffer): PerfDest | null {
  const f = b.toString('latin1').replace(/\0.*$/s, '').split(':');
  if (f.length < 23 || !f.slice(0, 23).every((x) => /^[0-9a-fA-F]+$/.test(x))) return null;
  const n = (i: number) => parseInt(f[i]!, 16);
  return {
    lid: n(0), outReads: n(1), qpn: n(2), psn: n(3), rkey: n(4) >>> 0, vaddr: BigInt(`0x${f[5]}`),
    gid: Uint8Array.from({ length: 16 }, (_, i) => n(6 + i) & 0xff), srqn: n(22) >>> 0,
  };
}

/** struct pingpong_dest (x86-64) */
export const DEST_SIZE = 56;

/**
 * rdma_write_keys: struct pingpong_dest with its fields big-endian (lid, out_reads, qpn, psn, rkey at 0..19,
 * vaddr at 24, the GID at 32, srqn and gid_index at 48 and 52).
 */
export function encodeDest(d: PerfDest, gidIndex = 0): Buffer {
  const b = Buffer.alloc(DEST_SIZE);
  b.writeInt32BE(d.lid, 0);
  b.writeInt32BE(d.outReads, 4);
  b.writeInt32BE(d.qpn, 8);
  b.writeInt32BE(d.psn, 12);
  b.writeUInt32BE(d.rkey >>> 0, 16);
  b.writeBigUInt64BE(BigInt.asUintN(64, d.vaddr), 24);
  b.set(d.gid.subarray(0, 16), 32);
  b.writeUInt32BE(d.srqn >>> 0, 48);
  b.writeInt32BE(gidIndex, 52);
  return b;
}

/** rdma_read_keys (which leaves srqn alone). */
export function decodeDest(b: Buffer): PerfDest {
  return { lid: b.readInt32BE(0), outReads: b.readInt32BE(4), qpn: b.readInt32BE(8), psn: b.readInt32BE(12), rkey: b.readUInt32BE(16), vaddr: b.readBigUInt64BE(24), gid: Uint8Array.from(b.subarray(32, 48)), srqn: 0 };
}

/** The five 8-byte fields of xchg_bw_reports, each its own exchange, in order. */
export function encodeBwReport(r: BwReport): Buffer[] {
  const u = (x: bigint) => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(BigInt.asUintN(64, x));
    return b;
  };
  const d = (x: number) => {
    const b = Buffer.alloc(8);
    b.writeDoubleBE(x);
    return b;
  };
  return [u(r.size), u(r.iters), d(r.bwPeak), d(r.bwAvg), d(r.msgRate)];
}

export function decodeBwReport(parts: Buffer[]): BwReport {
  return {
    size: parts[0]!.readBigUInt64BE(0), iters: parts[1]!.readBigUInt64BE(0), bwPeak: parts[2]!.readDoubleBE(0),
    bwAvg: parts[3]!.readDoubleBE(0), msgRate: parts[4]!.readDoubleBE(0),
  };
}

export const DONE = Buffer.from('done\0', 'latin1');

/** establish_connection's words when the socket part fails ("...connection" has no newline in perftest) */
const UNABLE = 'Unable to open file descriptor for socket connection Unable to init the socket connection\n';

/** The exchange with the peer, whichever way it travels: symmetric fixed-size messages (ctx_xchg_data). */
export abstract class Exchange {
  /** when the peer went away (0: it has not): a test loop still waiting on it then stops waiting */
  peerGoneAt = 0;
  abstract readonly isClient: boolean;
  /** ctx_xchg_data: write-then-read on the client, read-then-write on the server. */
  abstract xchg(mine: Buffer, what: string): Promise<Buffer>;
  /** ctx_hand_shake for one QP. */
  abstract handShake(mine: PerfDest): Promise<PerfDest>;
  /** ctx_close_connection's tail. */
  abstract close(): Promise<void>;
  abstract destroy(): void;

  async xchgBwReports(mine: BwReport): Promise<BwReport> {
    const parts: Buffer[] = [];
    for (const b of encodeBwReport(mine)) parts.push(await this.xchg(b, 'bandwidth report'));
    return decodeBwReport(parts);
  }
}

/** One side of the TCP connection. */
export class Oob extends Exchange {
  private read: (n: number) => Promise<Buffer | null>;

  private constructor(private sock: Socket, readonly isClient: boolean) {
    super();
    this.read = reader(sock);
    sock.setNoDelay(true);
    const gone = () => {
      if (!this.peerGoneAt) this.peerGoneAt = Date.now();
    };
    sock.on('end', gone);
    sock.on('close', gone);
  }

  /** ethernet_client_connect; perftest's own messages on failure. */
  static async connect(host: string, port: number): Promise<Oob> {
    // getaddrinfo() refuses such a service in perftest: the same words here
    if (!(port >= 0 && port <= 65535)) throw new Fail(`Problem in resolving basic address and port\n${UNABLE}`);
    const sock = await new Promise<Socket>((resolve, reject) => {
      const s = createConnection({ host, port, family: 4 });
      s.once('connect', () => resolve(s));
      s.once('error', (e) => {
        const code = codeOf(e);
        const why = code === 'ENOTFOUND' || code === 'EAI_AGAIN' ? 'Problem in resolving basic address and port\n' : `Couldn't connect to ${host}:${port}\n`;
        reject(new Fail(`${why}${UNABLE}`));
      });
    });
    return new Oob(sock, true);
  }

  /** ethernet_server_connect: listen on every IPv4 address, take one client, stop listening. */
  static async accept(port: number, onListening?: () => void): Promise<Oob> {
    if (!(port >= 0 && port <= 65535)) throw new Fail(`Problem in resolving basic address and port\n${UNABLE}`);
    const server = createServer();
    try {
      const sock = await new Promise<Socket>((resolve, reject) => {
        server.once('connection', resolve);
        server.once('error', () => reject(new Fail(`Couldn't listen to port ${port}\n${UNABLE}`)));
        server.listen({ port, host: '0.0.0.0' }, onListening);
      });
      return new Oob(sock, false);
    } finally {
      server.close();
    }
  }

  /** ctx_xchg_data: write-then-read on the client, read-then-write on the server. */
  async xchg(mine: Buffer, what: string): Promise<Buffer> {
    if (this.isClient) this.sock.write(mine);
    const got = await this.read(mine.length);
    if (!got) throw new Fail(` Failed to exchange data between server and clients (${what}: the peer closed the connection)\n`);
    if (!this.isClient) this.sock.write(mine);
    return got;
  }

  /** ctx_hand_shake for one QP. */
  async handShake(mine: PerfDest): Promise<PerfDest> {
    const got = await this.xchg(encodeKey(mine), 'key message');
    const d = decodeKey(got);
    if (!d) throw new Fail(`Couldn't parse line <${got.toString('latin1').replace(/\0.*$/s, '')}>\n`);
    return d;
  }

  /** ctx_close_connection's tail: "done" and close. */
  async close(): Promise<void> {
    await new Promise<void>((r) => this.sock.end(DONE, () => r()));
  }

  destroy(): void {
    this.sock.destroy();
  }
}
