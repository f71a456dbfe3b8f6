/** ib_read_bw: perftest's tool of that name (see perftest/run.ts). */
import { Verb } from './perftest/params.js';
import { run } from './perftest/run.js';

export const main = (argv: string[]): Promise<number> => run('ib_read_bw', Verb.READ, 'BW', argv);

