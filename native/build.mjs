#!/usr/bin/env node
// Builds the preload library that lets unmodified C programs use softverbsd (`softverbs exec`):
// native/preload/preload.c -> dist/native/libsoftverbs-preload.so, with $CC (else cc). Run by
// `npm run build` and `prepare`; run it by hand in an installed package to build the library for
// this machine. Without a C compiler it says so and succeeds: everything else in the package works
// without the library.
import { spawnSync } from 'node:child_process';
import { mkdirSync, renameSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const src = join(here, 'preload', 'preload.c');
const out = join(here, '..', 'dist', 'native', 'libsoftverbs-preload.so');
const cc = process.env.CC || 'cc';
const flags = ['-shared', '-fPIC', '-O2', '-Wall', '-fvisibility=hidden', '-fno-delete-null-pointer-checks'];

mkdirSync(dirname(out), { recursive: true });
// built beside and renamed over: a program running with the old library keeps its mapping intact
const tmp = `${out}.${process.pid}.tmp`;
const r = spawnSync(cc, [...flags, '-o', tmp, src, '-ldl', '-lpthread'], { stdio: ['ignore', 'inherit', 'inherit'] });
if (r.error && r.error.code === 'ENOENT') {
  process.stderr.write(`softverbs: no C compiler (${cc}) here, so ${out} is not built: \`softverbs exec\` (C programs on softverbsd) needs it. Install one (e.g. apt-get install gcc) and run: node ${join(here, 'build.mjs')}\n`);
  process.exit(0);
}
if (r.error || r.status !== 0) {
  rmSync(tmp, { force: true });
  process.stderr.write(`softverbs: building ${out} with ${cc} failed${r.error ? `: ${r.error.message}` : ''}\n`);
  process.exit(1);
}
renameSync(tmp, out);
