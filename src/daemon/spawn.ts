/**
 * Starting softverbsd as a child process in a fresh root and stopping it
 * again: what the demo, the bench and the tests all need.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ErrnoError } from '../common/errors.js';

export const DAEMON_MAIN = join(dirname(fileURLToPath(import.meta.url)), '..', 'bin', 'softverbsd.js');

export interface SpawnedDaemon {
  root: string;
  proc: ChildProcess;
  /** everything it wrote to stderr so far */
  stderr(): string;
  /** SIGTERM, wait for exit, remove the root (unless kept) */
  stop(): Promise<void>;
}

/** Starts softverbsd with `args` (plus --root) and resolves once it prints "softverbsd: ready". */
export async function spawnDaemon(args: string[], opts: { root?: string; keepRoot?: boolean; timeoutMs?: number; wrapper?: string[]; nodeArgs?: string[] } = {}): Promise<SpawnedDaemon> {
  const root = opts.root ?? mkdtempSync(join(tmpdir(), 'softverbs-'));
  // wrapper: a command the daemon runs under (a test drops a capability with setpriv)
  // nodeArgs: options for node itself (the bench's --cpu-prof)
  const argv = [...(opts.wrapper ?? []), process.execPath, ...(opts.nodeArgs ?? []), DAEMON_MAIN, '--root', root, ...args];
  const proc = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new ErrnoError('ETIMEDOUT', `softverbsd not ready in ${opts.timeoutMs ?? 10000} ms:\n${err}`)), opts.timeoutMs ?? 10000);
    const onData = () => {
      if (err.includes('softverbsd: ready')) {
        clearTimeout(t);
        proc.stderr!.off('data', onData);
        proc.off('exit', onExit);
        resolve();
      }
    };
    const onExit = (c: number | null) => {
      clearTimeout(t);
      reject(new ErrnoError('ESRCH', `softverbsd exited (${c}):\n${err}`));
    };
    proc.stderr!.on('data', onData);
    proc.once('exit', onExit);
  });
  return {
    root,
    proc,
    stderr: () => err,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        const done = new Promise((r) => proc.once('exit', r));
        proc.kill('SIGTERM');
        await done;
      }
      if (!opts.keepRoot) rmSync(root, { recursive: true, force: true });
    },
  };
}
