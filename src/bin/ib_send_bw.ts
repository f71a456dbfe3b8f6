#!/usr/bin/env node
import { runTool } from '../tools/cli.js';
import { main } from '../tools/ib_send_bw.js';

await runTool('ib_send_bw', main);
