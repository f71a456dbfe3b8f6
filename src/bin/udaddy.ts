#!/usr/bin/env node
import { runTool } from '../tools/cli.js';
import { main } from '../tools/udaddy.js';

await runTool('udaddy', main);
