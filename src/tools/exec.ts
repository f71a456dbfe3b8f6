/**
 * softverbs exec [--root DIR] [--] PROGRAM ARGS…: runs an unmodified program
 * linked against rdma-core with softverbsd as its kernel, through the
 * preload library (native/preload/preload.c): LD_PRELOAD, SYSFS_PATH and
 * SOFTVERBS_ROOT set for it. softverbs preload-path prints the library's
 * path, for those who set LD_PRELOAD themselves. Like env(1) it becomes the
 * program (execve): 125 for exec's own errors, 126 a program that cannot
 * run, 127 one not found; else whatever the program does.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execInPlace } from '../native/libc.js';
import { defaultRoot, rootProblem } from '../common/paths.js';

const HERE = dirname(fileURLToPath(import.meta.url));
/** where `npm run build` (native/build.mjs) puts the library: dist/native */
export const PRELOAD_PATH = join(HERE, '..', '..', 'native', 'libsoftverbs-preload.so');
const BUILD_SCRIPT = join(HERE, '..', '..', '..', 'native', 'build.mjs');

const USAGE = `Usage: softverbs exec [--root DIR] [--] PROGRAM [ARGS...]

Runs PROGRAM, an unmodified program linked against rdma-core's libibverbs
(ibv_devinfo, ibv_rc_pingpong, perftest's ib_write_bw, ...), with softverbsd as
its kernel: the preload library is set in LD_PRELOAD, SYSFS_PATH points at the
root's discovery tree, SOFTVERBS_ROOT at the root.

Options:
  --root DIR   the daemon's root (default: $SOFTVERBS_ROOT, else the root the tools use)
  -h, --help   this text

Static and setuid programs cannot be preloaded (the dynamic linker ignores LD_PRELOAD for them).
softverbs preload-path prints the library's path.
`;

/** ELF e_machine of each architecture Node runs on that the library is built for */
const ELF_MACHINE: Record<string, number> = { x64: 62, arm64: 183 };

/** Why the library cannot be preloaded into this machine's programs, in words for the user (null: it can). */
export function preloadProblem(path = PRELOAD_PATH): string | null {
  const build = `build it with: node ${BUILD_SCRIPT} (needs a C compiler, e.g. apt-get install gcc)`;
  let head: Buffer;
  try {
    const fd = openSync(path, 'r');
    try {
      head = Buffer.alloc(20);
      readSync(fd, head, 0, 20, 0);
    } finally {
      closeSync(fd);
    }
  } catch {
    return `the preload library ${path} is missing (no C compiler when the package was built?): ${build}`;
  }
  const want = ELF_MACHINE[process.arch];
  if (head.readUInt32BE(0) !== 0x7f454c46 || head[4] !== 2 || (want !== undefined && head.readUInt16LE(18) !== want))
    return `the preload library ${path} is not built for this machine (${process.arch}): ${build}`;
  return null;
}

/** softverbs preload-path */
export function preloadPathMain(argv: string[]): number {
  if (argv.length) {
    process.stderr.write(argv[0] === '-h' || argv[0] === '--help' ? '' : `softverbs preload-path: unexpected argument '${argv[0]}'\n`);
    process.stderr.write('Usage: softverbs preload-path\n\nPrints the path of the preload library that `softverbs exec` sets in LD_PRELOAD.\n');
    return argv[0] === '-h' || argv[0] === '--help' ? 0 : 255;
  }
  process.stdout.write(`${PRELOAD_PATH}\n`);
  const why = preloadProblem();
  if (why) process.stderr.write(`softverbs preload-path: ${why}\n`);
  return why ? 1 : 0;
}

function fail(msg: string, usage = false): number {
  process.stderr.write(`softverbs exec: ${msg}\n${usage ? USAGE : ''}`);
  return 125;
}

/** softverbs exec */
export async function main(argv: string[]): Promise<number> {
  let root: string | null = null;
  let i = 0;
  for (; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      i++;
      break;
    }
    if (a === '-h' || a === '--help') {
      process.stdout.write(USAGE);
      return 0;
    }
    if (a === '--root' || a.startsWith('--root=')) {
      root = a === '--root' ? argv[++i] ?? null : a.slice('--root='.length);
      if (!root) return fail("option '--root' requires an argument", true);
      continue;
    }
    if (a.startsWith('-')) return fail(`unrecognized option '${a}'`, true);
    break;
  }
  const [program, ...args] = argv.slice(i);
  if (!program) return fail('no PROGRAM to run', true);
  const lib = preloadProblem();
  if (lib) return fail(lib);
  root = resolve(root ?? defaultRoot());
  // a root another user could have planted is not where this program's device files are looked for
  const bad = rootProblem(root);
  if (bad) return fail(bad.message);
  return run(program, args, preloadEnv(root));
}

/** The environment a program runs in through the preload library, against the daemon whose root is `root`. */
export function preloadEnv(root: string, base: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  return {
    ...base,
    LD_PRELOAD: base.LD_PRELOAD ? `${PRELOAD_PATH}:${base.LD_PRELOAD}` : PRELOAD_PATH,
    SYSFS_PATH: join(root, 'sys'),
    SOFTVERBS_ROOT: root,
  };
}

/**
 * Runs the program in our place, as env(1) does: execve, same pid, its stdio, its exit status and signals its
 * own; a `softverbs exec` killed (even by SIGKILL) is the program killed, and nothing is left running.
 */
function run(program: string, args: string[], env: NodeJS.ProcessEnv): number {
  const code = execInPlace(program, args, env);
  // only a program that could not be started comes back here
  const notFound = code === 'ENOENT' || code === 'ENOTDIR';
  process.stderr.write(`softverbs exec: ${program}: ${notFound ? 'No such file or directory' : code === 'EACCES' ? 'Permission denied' : code}\n`);
  return notFound ? 127 : 126;
}
