/** ibv_uc_pingpong: rdma-core's UC ping-pong (see pingpong.ts). */
import { run } from './pingpong.js';

export const main = (argv: string[]): Promise<number> => run('ibv_uc_pingpong', 'uc', argv);

