/**
 * Length-prefixed frames out of a byte stream, for both ends of a device
 * socket: requests (`ib_uverbs_cmd_hdr`: in_words*4 bytes in all) and
 * replies (8-byte status/out_bytes header, then out_bytes). Each byte is
 * copied at most once, into the frame it belongs to, however the stream is
 * cut (a frame dribbled one byte at a time cost quadratic time when every
 * chunk was concatenated onto the rest).
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
   */
  constructor(
    private readonly sizeOf: (hdr: Buffer) => number,
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
