#!/usr/bin/env node
import { runTool } from '../tools/cli.js';
import { main } from '../tools/ib_write_bw.js';

await runTool('ib_write_bw', main);
