#!/usr/bin/env node
import { main } from '../tools/ibv_devinfo.js';

process.exitCode = await main(process.argv.slice(2));
