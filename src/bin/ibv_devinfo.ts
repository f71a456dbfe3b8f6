#!/usr/bin/env node
import { runTool } from '../tools/cli.js';
import { main } from '../tools/ibv_devinfo.js';

await runTool('ibv_devinfo', main);
