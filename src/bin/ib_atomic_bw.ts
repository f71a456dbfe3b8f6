#!/usr/bin/env node
import { runTool } from '../tools/cli.js';
import { main } from '../tools/ib_atomic_bw.js';

await runTool('ib_atomic_bw', main);
