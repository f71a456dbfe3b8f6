#!/usr/bin/env node
import { main } from '../tools/ibv_devices.js';

process.exitCode = main(process.argv.slice(2));
