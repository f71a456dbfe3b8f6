#!/usr/bin/env node
import { runTool } from '../tools/cli.js';
import { main } from '../tools/ib_send_lat.js';

await runTool('ib_send_lat', main);
