#!/usr/bin/env node
import { runTool } from '../tools/cli.js';
import { main } from '../tools/ib_read_lat.js';

await runTool('ib_read_lat', main);
