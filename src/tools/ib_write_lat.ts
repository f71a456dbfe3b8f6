/** ib_write_lat: perftest's tool of that name (see perftest/run.ts). */
import { Verb } from './perftest/params.js';
import { run } from './perftest/run.js';

export const main = (argv: string[]): Promise<number> => run('ib_write_lat', Verb.WRITE, 'LAT', argv);

