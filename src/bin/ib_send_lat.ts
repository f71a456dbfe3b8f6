#!/usr/bin/env node
import { main } from '../tools/ib_send_lat.js';

process.exitCode = await main(process.argv.slice(2));
