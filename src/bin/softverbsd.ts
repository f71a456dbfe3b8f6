#!/usr/bin/env node
import { main } from '../daemon/main.js';

process.title = 'softverbsd';
// each device's wire waits for datagrams in a call on libuv's thread pool (4 threads unless told): room for many devices
process.env.UV_THREADPOOL_SIZE ??= '64';
await main(process.argv.slice(2));
