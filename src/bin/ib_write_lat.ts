#!/usr/bin/env node
import { runTool } from '../tools/cli.js';
import { main } from '../tools/ib_write_lat.js';

await runTool('ib_write_lat', main);
