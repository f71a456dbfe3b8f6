/**
 * A uverbs command handler's shape: the context it runs in, the decoded request and the provider's udata
 * when the frame carried one; it returns the response bytes, if the command has a response. Each object
 * family's handlers are in the file named after it (qp.ts: CREATE_QP to POST_RECV), in a table by command.
 */
import type * as U from '../../abi/uverbs.js';
import type { Context } from '../context.js';

export type Handler<K extends U.CmdName> = (ctx: Context, r: U.Req<K>, u: U.Udata<K> | null) => Buffer | void;

export type Commands = { [K in U.CmdName]?: Handler<K> };
