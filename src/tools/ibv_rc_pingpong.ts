/** ibv_rc_pingpong: rdma-core's RC ping-pong (see pingpong.ts). */
import { run } from './pingpong.js';

export const main = (argv: string[]): Promise<number> => run('ibv_rc_pingpong', 'rc', argv);

