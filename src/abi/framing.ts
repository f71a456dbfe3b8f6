/**
 * The frames of a device socket, both ends: requests (`ib_uverbs_cmd_hdr`:
 * in_words*4 bytes in all), replies (`sv_reply_hdr`: status, out_bytes,
 * then out_bytes), the first frames that turn a connection into an event
 * stream or a management connection, and the fixed-size records of an
 * event stream. One assembler cuts all of them out of the byte stream.
 */
import { encode, layout } from './layout.js';
import { CMD_HDR, HDR_SIZE, REPLY_HDR, SV_ATTACH, SvCmd } from './uverbs.js';

export const REPLY_HDR_SIZE = layout(REPLY_HDR).size;

/** A request's length from its header: in_words × 4. */
export function requestSize(hdr: Buffer): number {
  return hdr.readUInt16LE(4) * 4;
}

/** A reply's length from its header, or -1 past `max` (no reply is that big: the stream is broken). */
export function replySize(hdr: Buffer, max: number): number {
  const n = hdr.readUInt32LE(4);
  return n > max ? -1 : REPLY_HDR_SIZE + n;
}

/** A reply: status 0 or -errno, then the body (the response struct, or an error's text). */
export function replyFrame(status: number, body?: Uint8Array, len = body?.length ?? 0): Buffer {
  const b = Buffer.allocUnsafe(REPLY_HDR_SIZE + len);
  encode(REPLY_HDR, { status, out_bytes: len }, new DataView(b.buffer, b.byteOffset, REPLY_HDR_SIZE));
  if (len && body) b.set(body.subarray(0, len), REPLY_HDR_SIZE);
  return b;
}

/** The status and body of a reply frame. */
export function parseReply(f: Buffer): { status: number; body: Buffer } {
  return { status: f.readInt32LE(0), body: f.subarray(REPLY_HDR_SIZE) };
}

/** The first frame of an event stream: ATTACH_ASYNC / ATTACH_COMP_CHANNEL with the token GET_CONTEXT or CREATE_COMP_CHANNEL gave. */
export function attachFrame(command: number, token: number): Buffer {
  const size = HDR_SIZE + layout(SV_ATTACH).size;
  const b = Buffer.alloc(size);
  const dv = new DataView(b.buffer, b.byteOffset, size);
  encode(CMD_HDR, { command, in_words: size / 4, out_words: 0 }, dv);
  encode(SV_ATTACH, { token }, dv, HDR_SIZE);
  return b;
}

/** The token of an attach frame (the caller has checked it is long enough). */
export function attachToken(f: Buffer): number {
  return f.readUInt32LE(HDR_SIZE);
}

/** A management request: the JSON text after the header, padded with spaces to whole words. */
export function mgmtFrame(json: string): Buffer {
  const body = Buffer.from(json);
  const size = Math.ceil((HDR_SIZE + body.length) / 4) * 4;
  const b = Buffer.alloc(size, 0x20);
  encode(CMD_HDR, { command: SvCmd.MGMT, in_words: size / 4, out_words: 0 }, new DataView(b.buffer, b.byteOffset, HDR_SIZE));
  body.copy(b, HDR_SIZE);
  return b;
}

/**
 * Length-prefixed frames out of a byte stream. Each byte is copied at most
 * once, into the frame it belongs to, however the stream is cut (a frame
 * dribbled one byte at a time cost quadratic time when every chunk was
 * concatenated onto the rest).
 */
export class FrameAssembler {
  private head = Buffer.alloc(8);
  private headHave = 0;
  private frame: Buffer | null = null;
  private frameHave = 0;
  private stopped = false;

  /**
   * `sizeOf` gives the whole frame's length from its 8 header bytes, or -1 for
   * a header that cannot start a frame (then `onGarbage` runs and nothing more is read).
   * It may be changed between frames (an event stream: one reply, then records).
   */
  constructor(
    public sizeOf: (hdr: Buffer) => number,
    private readonly onFrame: (frame: Buffer) => void,
    private readonly onGarbage: () => void = () => {},
  ) {}

  /** Stops delivering frames (the connection is going away). */
  stop(): void {
    this.stopped = true;
  }

  push(chunk: Buffer): void {
    let off = 0;
    while (off < chunk.length && !this.stopped) {
      if (this.frame === null) {
        // a whole frame inside the chunk: no copy at all
        if (this.headHave === 0 && chunk.length - off >= 8) {
          const size = this.sizeOf(chunk.subarray(off, off + 8));
          if (size < 8) return this.garbage();
          if (chunk.length - off >= size) {
            const f = chunk.subarray(off, off + size);
            off += size;
            this.onFrame(f);
            continue;
          }
        }
        const n = Math.min(8 - this.headHave, chunk.length - off);
        chunk.copy(this.head, this.headHave, off, off + n);
        this.headHave += n;
        off += n;
        if (this.headHave < 8) return;
        const size = this.sizeOf(this.head);
        if (size < 8) return this.garbage();
        this.frame = Buffer.allocUnsafe(size);
        this.head.copy(this.frame, 0, 0, 8);
        this.frameHave = 8;
      }
      const f = this.frame;
      const n = Math.min(f.length - this.frameHave, chunk.length - off);
      chunk.copy(f, this.frameHave, off, off + n);
      this.frameHave += n;
      off += n;
      if (this.frameHave < f.length) return;
      this.frame = null;
      this.headHave = 0;
      this.onFrame(f);
    }
  }

  private garbage(): void {
    this.stopped = true;
    this.frame = null;
    this.onGarbage();
  }
}
