#!/usr/bin/env node
import { runTool } from '../tools/cli.js';
import { main } from '../tools/mckey.js';

await runTool('mckey', main);
