/**
 * A client's event streams: the async events of its context and the
 * completion channels its CQs report to. Each is a socket the client
 * attaches once it has the token; events wait here until it does.
 */
import type { Socket } from 'node:net';
import type { Context } from './context.js';

/** Unread bytes of events an event stream may hold in the daemon before further events are dropped. */
const EVENT_BACKLOG = 1 << 20;

/**
 * An event for a client's event stream (async events, a completion channel): written while the client reads
 * them, dropped past EVENT_BACKLOG unread bytes rather than growing the daemon, and kept (up to 4096) until
 * the stream is attached.
 */
export function deliverEvent(sock: Socket | null, pending: Buffer[], b: Buffer): void {
  if (sock && !sock.destroyed) {
    if (sock.writableLength < EVENT_BACKLOG) sock.write(b);
  } else if (pending.length < 4096) pending.push(b);
}

export class CompChannel {
  sock: Socket | null = null;
  pending: Buffer[] = [];
  /** CQs that report to it */
  users = 0;
  /** its event stream was closed by the client (ibv_destroy_comp_channel closes the fd): it goes once no CQ uses it */
  closed = false;
  constructor(readonly ctx: Context, readonly token: number) {}
  send(b: Buffer): void {
    deliverEvent(this.sock, this.pending, b);
  }
}
