#!/usr/bin/env node
import { runTool } from '../tools/cli.js';
import { main } from '../tools/ucmatose.js';

await runTool('ucmatose', main);
