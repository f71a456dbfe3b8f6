/**
 * `softverbsd --pcap FILE`: every RoCEv2 frame a device sends or receives,
 * as a classic pcap (LINKTYPE_RAW: each record starts at the IP header), so
 * Wireshark and tshark decode it with their InfiniBand dissector. Frames
 * between two devices of one daemon never touch a socket; they are written
 * as the wire would have carried them.
 *
 * Records are buffered and written synchronously in 1 MiB chunks, on a
 * short timer and at close, so a crash loses at most a fraction of a second.
 */
import { closeSync, openSync, writeSync } from 'node:fs';
import { asError } from '../common/errors.js';

const LINKTYPE_RAW = 101;
const CHUNK = 1 << 20;

export class PcapWriter {
  private fd: number;
  private readonly buf = Buffer.allocUnsafe(CHUNK);
  private used = 0;
  private timer: NodeJS.Timeout | null = null;
  frames = 0;
  /** Told once if writing fails (a full disk, say): capturing stops, the traffic does not. */
  onError: ((e: Error) => void) | null = null;

  constructor(readonly path: string) {
    this.fd = openSync(path, 'w', 0o644);
    const h = Buffer.alloc(24);
    h.writeUInt32LE(0xa1b2c3d4, 0);
    h.writeUInt16LE(2, 4);
    h.writeUInt16LE(4, 6);
    h.writeUInt32LE(65535, 16);
    h.writeUInt32LE(LINKTYPE_RAW, 20);
    writeSync(this.fd, h);
  }

  /** Appends one frame (IP header first). */
  write(frame: Uint8Array, len: number): void {
    if (this.fd < 0) return;
    if (this.used + 16 + len > CHUNK) this.flush();
    if (16 + len > CHUNK) return;
    const now = performance.timeOrigin + performance.now();
    const sec = Math.floor(now / 1000);
    const b = this.buf;
    b.writeUInt32LE(sec, this.used);
    b.writeUInt32LE(Math.floor((now - sec * 1000) * 1000), this.used + 4);
    b.writeUInt32LE(len, this.used + 8);
    b.writeUInt32LE(len, this.used + 12);
    b.set(frame.subarray(0, len), this.used + 16);
    this.used += 16 + len;
    this.frames++;
    this.timer ??= setTimeout(() => {
      this.timer = null;
      this.flush();
    }, 200).unref();
  }

  flush(): void {
    if (this.fd < 0 || this.used === 0) return;
    try {
      writeSync(this.fd, this.buf, 0, this.used);
      this.used = 0;
    } catch (e) {
      this.used = 0;
      closeSync(this.fd);
      this.fd = -1;
      this.onError?.(asError(e));
    }
  }

  close(): void {
    if (this.fd < 0) return;
    this.flush();
    if (this.timer) clearTimeout(this.timer);
    closeSync(this.fd);
    this.fd = -1;
  }
}
