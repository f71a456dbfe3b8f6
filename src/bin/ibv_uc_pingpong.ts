#!/usr/bin/env node
import { main } from '../tools/ibv_uc_pingpong.js';

process.exitCode = await main(process.argv.slice(2));
