/**
 * One connection to a device file, from its first frame to its close. The
 * first frame says what the connection is: GET_CONTEXT makes it a command
 * connection (a context), ATTACH_ASYNC / ATTACH_COMP_CHANNEL an event
 * stream, MGMT a management connection. GET_CONTEXT_RXE is GET_CONTEXT from
 * a C program through the preload library: it speaks rdma-core's rxe
 * provider ABI, and its extended commands come whole in WRITE_EX frames.
 * Each message has its handler, named after it.
 */
import type { Socket } from 'node:net';
import { attachToken, FrameAssembler, replyFrame, requestSize } from '../abi/framing.js';
import { offsets } from '../abi/layout.js';
import * as U from '../abi/uverbs.js';
import { CmdError, E } from '../common/errno.js';
import type { SoftDevice } from '../hca/device.js';
import { CONTEXT_EXISTS } from './cmd/device.js';
import type { CompChannel } from './context.js';
import { Context, type Host } from './context.js';
import { extendedWrite } from './extended.js';
import type { ProviderAbi } from './providers/provider.js';
import { rxeProvider } from './providers/rxe.js';
import type { Log } from './log.js';
import { asError, errnoOf, messageOf } from '../common/errors.js';

/** What a connection needs from the daemon. */
export interface ConnectionHost extends Host {
  readonly logger: Log;
  readonly contexts: Set<Context>;
  readonly fabric: { drain(): void };
  onCommand: ((cmd: number, seconds: number) => void) | null;
  /** The stream a token names (GET_CONTEXT's async_fd, CREATE_COMP_CHANNEL's fd). */
  token(t: number): { kind: 'async' | 'fds'; ctx: Context } | { kind: 'comp'; ctx: Context; chan: CompChannel } | undefined;
  mgmt(frame: Buffer, reply: Reply, uid: number): void;
  /** The QP errors of ctx its log left out since its last logged one. */
  unloggedQpErrors?(ctx: Context): number;
  connectionClosed(c: Connection): void;
}

export type Reply = (status: number, body?: Buffer, outBytes?: number) => void;

/** Replies a client has not read: past PAUSE it is not read from until it catches up; past HARD_CAP it is dropped. */
const REPLY_PAUSE = 1 << 20;
const REPLY_HARD_CAP = 16 << 20;
/** An error reply carries at most this much text. */
const ERROR_TEXT = 1024;

const POST = offsets(U.POST_SEND);
/** The first frames' least sizes: GET_CONTEXT's request and response, an attach's request. */
const GET_CONTEXT_LEN = U.HDR_SIZE + offsets(U.GET_CONTEXT).SIZE;
const GET_CONTEXT_RESP_LEN = offsets(U.GET_CONTEXT_RESP).SIZE;
const ATTACH_LEN = U.HDR_SIZE + offsets(U.SV_ATTACH).SIZE;
/** POST_SEND with wr_count 0: the header and ib_uverbs_post_send, nothing else */
const DOORBELL_LEN = U.HDR_SIZE + POST.SIZE;
const DOORBELL_OK = replyFrame(0, Buffer.alloc(4));
const DOORBELL_EINVAL = replyFrame(-E.EINVAL);

type Kind = 'new' | 'cmd' | 'async' | 'comp' | 'mgmt';
/** the most a WRITE_EX reply may carry: the room an extended command can name (its word counts are u16s of 8 bytes) */
const EX_REPLY_MAX = 2 * 0xffff * 8;

export class Connection {
  private kind: Kind = 'new';
  ctx: Context | null = null;
  abi: ProviderAbi = 'softverbs';
  /** the completion channel this connection is the event stream of */
  private chan: CompChannel | null = null;
  private readonly frames: FrameAssembler;

  constructor(
    private readonly host: ConnectionHost,
    readonly sock: Socket,
    readonly dev: SoftDevice,
    readonly cred: { pid: number; uid: number; gid: number },
  ) {
    this.frames = new FrameAssembler(
      requestSize,
      (frame) => {
        if (sock.destroyed) return this.frames.stop();
        this.onFrame(frame);
      },
      // framing garbage (in_words*4 < 8): nothing after it can be trusted. The replies to the frames
      // before it are still owed: end() sends them, then closes; everything after is dropped.
      () => sock.end(),
    );
    sock.on('data', (d: Buffer) => this.frames.push(d));
    // an event stream's end is taken in before our side ends (auto end on the client's FIN answers it): a client
    // that waits for that answer, as the library's destroyCompChannel does, knows the channel is gone
    sock.on('end', () => {
      if (this.chan) this.chan.ctx.compChannelClosed(this.chan);
    });
    sock.on('close', () => this.onClose());
    sock.on('error', () => sock.destroy());
  }

  /** An error reply carries the reason as text, so the client's error says what was wrong. */
  readonly reply: Reply = (status, body, outBytes = 0) => {
    // only the response struct goes back, however much room out_words offered (a 16-byte request asking for
    // 0xffff words got 262,140 bytes of zeros each time)
    const len = status === 0 ? Math.min(outBytes, body?.length ?? 0) : body ? Math.min(body.length, ERROR_TEXT) : 0;
    this.send(replyFrame(status, body, len));
  };

  /**
   * Backpressure: a client that does not read its replies stops being read (so it stops costing us memory);
   * one that lets them pile up past the hard cap anyway is dropped.
   */
  private send(b: Buffer): void {
    const s = this.sock;
    s.write(b);
    if (s.writableLength > REPLY_HARD_CAP) {
      this.host.limitHit(this.cred.uid, 'unread replies', `pid ${this.cred.pid} left ${s.writableLength} bytes of replies unread; disconnected`);
      s.destroy();
    } else if (s.writableLength > REPLY_PAUSE && !s.isPaused()) {
      s.pause();
      s.once('drain', () => s.resume());
    }
  }

  private onFrame(frame: Buffer): void {
    const cmd = frame.readUInt32LE(0);
    const outBytes = frame.readUInt16LE(6) * 4;
    switch (this.kind) {
      case 'new':
        if (cmd === U.Cmd.GET_CONTEXT) return this.onGetContext(frame, outBytes, 'softverbs');
        if (cmd === U.SvCmd.GET_CONTEXT_RXE) return this.onGetContext(frame, outBytes, 'rxe');
        if (cmd === U.SvCmd.ATTACH_ASYNC || cmd === U.SvCmd.ATTACH_COMP_CHANNEL) return this.onAttach(cmd, frame);
        if (cmd === U.SvCmd.MGMT) {
          this.kind = 'mgmt';
          return this.host.mgmt(frame, this.reply, this.cred.uid);
        }
        return this.reply(-E.EINVAL, Buffer.from(`command ${cmd} before GET_CONTEXT`));
      case 'mgmt':
        if (cmd === U.SvCmd.MGMT) return this.host.mgmt(frame, this.reply, this.cred.uid);
        return this.reply(-E.EINVAL);
      case 'cmd':
        // the doorbell is the hot command: no struct decoding, a reply written from a constant. With no room
        // for a reply (out_words 0) it is a pure doorbell, as the library rings it: nothing is written back
        // (the reply write was a fifth of the daemon's time in an 8-byte SEND stream)
        if (cmd === U.Cmd.POST_SEND && frame.length === DOORBELL_LEN && (outBytes === 4 || outBytes === 0) && frame.readUInt32LE(U.HDR_SIZE + POST.wr_count) === 0)
          return this.onDoorbell(frame, outBytes);
        if (cmd === U.SvCmd.GET_CONTEXT_RXE) return this.reply(-E.EINVAL, Buffer.from(CONTEXT_EXISTS));
        if (cmd === U.SvCmd.WRITE_EX) return this.onCommand(cmd, frame, EX_REPLY_MAX, () => extendedWrite(this.ctx!, frame));
        return this.onCommand(cmd, frame, outBytes);
      default:
        // event streams carry nothing from the client
        return;
    }
  }

  private onGetContext(frame: Buffer, outBytes: number, abi: ProviderAbi): void {
    if (frame.length < GET_CONTEXT_LEN || outBytes < GET_CONTEXT_RESP_LEN) return this.reply(-E.ENOSPC);
    const { host, cred } = this;
    try {
      host.quotas.charge(cred.uid, 'contexts');
    } catch (e) {
      return this.reply(errnoOf(e) ?? -E.EIO, Buffer.from(messageOf(e)));
    }
    const ctx = new Context(host, this.dev, cred.pid, cred.uid, cred.gid);
    ctx.asyncToken = host.newToken('async', ctx);
    host.contexts.add(ctx);
    this.ctx = ctx;
    this.kind = 'cmd';
    this.abi = abi;
    if (abi === 'rxe') ctx.provider = rxeProvider;
    // the library hands its memfds over on the descriptor exchange, naming its context by this key
    else ctx.fdKey = host.newToken('fds', ctx);
    host.log(`${this.dev.name}: pid ${cred.pid} (${ctx.comm}, uid ${cred.uid}) opened the device${abi === 'rxe' ? ' (rxe provider ABI, through the preload library)' : ''}`);
    this.reply(0, ctx.getContextResp(), outBytes);
  }

  private onAttach(cmd: number, frame: Buffer): void {
    if (frame.length < ATTACH_LEN) return this.reply(-E.ENOSPC);
    const token = attachToken(frame);
    const t = this.host.token(token);
    const want = cmd === U.SvCmd.ATTACH_ASYNC ? 'async' : 'comp';
    if (!t || t.kind !== want || t.ctx.dev !== this.dev) return this.reply(-E.EINVAL);
    if (t.ctx.pid !== this.cred.pid) return this.reply(-E.EACCES); // only the context's own process may take its events
    this.reply(0);
    const s = this.sock;
    if (t.kind === 'async') {
      this.kind = 'async';
      t.ctx.asyncSock = s;
      for (const b of t.ctx.asyncPending.splice(0)) s.write(b);
    } else if (t.kind === 'comp') {
      this.kind = 'comp';
      this.chan = t.chan;
      t.chan.sock = s;
      for (const b of t.chan.pending.splice(0)) s.write(b);
    }
    this.host.dropToken(token);
  }

  private onDoorbell(frame: Buffer, outBytes: number): void {
    const st = this.ctx!.doorbell(frame.readUInt32LE(U.HDR_SIZE + POST.qp_handle));
    // a doorbell with room for an answer gets one; the preload's (rxe) and the library's ring with none
    if (outBytes) this.send(st === 0 ? DOORBELL_OK : DOORBELL_EINVAL);
  }

  private onCommand(cmd: number, frame: Buffer, outBytes: number, run = () => this.ctx!.dispatch(cmd, frame, outBytes)): void {
    const host = this.host;
    const t0 = host.onCommand ? process.hrtime.bigint() : 0n;
    try {
      this.reply(0, run(), outBytes);
    } catch (e) {
      if (e instanceof CmdError) {
        this.reply(errnoOf(e) ?? -E.EIO, Buffer.from(e.message));
        host.logger.debug(`pid ${this.cred.pid}: command ${cmd}: ${e.code}: ${e.message}`);
      } else {
        // a bug of ours, not the client's: keep serving, say what happened
        host.logger.error(`pid ${this.cred.pid}: internal error on command ${cmd}: ${asError(e).stack}`);
        this.reply(-E.EIO);
      }
    }
    if (host.onCommand) host.onCommand(cmd, Number(process.hrtime.bigint() - t0) / 1e9);
  }

  private onClose(): void {
    this.frames.stop();
    const { host, ctx } = this;
    host.connectionClosed(this);
    if (this.chan) this.chan.ctx.compChannelClosed(this.chan);
    if (this.kind !== 'cmd' || !ctx) return;
    const held = [...ctx.countByType()].filter(([, n]) => n > 0).map(([t, n]) => `${n} ${t}`).join(', ');
    ctx.destroyAll();
    host.contexts.delete(ctx);
    host.quotas.release(ctx.uid, 'contexts');
    host.fabric.drain();
    const unlogged = host.unloggedQpErrors?.(ctx) ?? 0;
    const more = unlogged ? `; ${unlogged} more QP errors of pid ${ctx.pid} went unlogged` : '';
    host.log(`${this.dev.name}: pid ${ctx.pid} (${ctx.comm}, uid ${ctx.uid}) closed the device${held ? `; destroyed what it held: ${held}` : ''}${more}`);
  }
}
