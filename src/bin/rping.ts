#!/usr/bin/env node
import { runTool } from '../tools/cli.js';
import { main } from '../tools/rping.js';

await runTool('rping', main);
