#!/usr/bin/env node
/** ibv_ud_pingpong: rdma-core's UD ping-pong (see pingpong.ts). */
import { run } from './pingpong.js';

export const main = (argv: string[]): Promise<number> => run('ibv_ud_pingpong', 'ud', argv);

if (import.meta.url === `file://${process.argv[1]}`) process.exitCode = await main(process.argv.slice(2));
