/** ibv_ud_pingpong: rdma-core's UD ping-pong (see pingpong.ts). */
import { run } from './pingpong.js';

export const main = (argv: string[]): Promise<number> => run('ibv_ud_pingpong', 'ud', argv);

