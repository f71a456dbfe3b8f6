/**
 * The rdma_cm structs (abi/ucma.ts) against the installed kernel header
 * (linux-libc-dev's <rdma/rdma_user_cm.h>, with <rdma/ib_user_sa.h> and
 * <rdma/ib_user_verbs.h>), compiled with cc: every struct's size and every
 * field's offset as the compiler lays them out. A C program's librdmacm
 * writes these bytes straight from its own structs, so they must agree.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { layout, type StructDef } from '../../src/abi/layout.js';
import * as C from '../../src/abi/ucma.js';

const HEADER = '/usr/include/rdma/rdma_user_cm.h';
const skip = !existsSync(HEADER) ? `${HEADER} is not installed (apt-get install linux-libc-dev)` : spawnSync('cc', ['--version']).error ? 'no C compiler (cc)' : false;

/** Our structs that are the kernel's, by the kernel's name; ours alone (sv_*) are not in the header. */
const isStruct = (v: unknown): v is StructDef => typeof v === 'object' && v !== null && 'fields' in v;
const structs: StructDef[] = (Object.values(C) as unknown[]).filter(isStruct).filter((s) => !s.name.startsWith('sv_'));
/** The address structs are opaque bytes to us (their one field, `bytes`): only their size is the header's. */
const fieldsOf = (s: StructDef) => (s.fields.length === 1 && s.fields[0]![0] === 'bytes' ? [] : s.fields.map(([f]) => f));
/** Where a field of ours is an element of the header's array. */
const member = (s: StructDef, f: string) => (s === C.QUERY_ROUTE_RESP && /^ib_route\d$/.test(f) ? `ib_route[${f.slice(-1)}]` : f);

test('every rdma_cm struct has the size and offsets the kernel header gives', { skip }, () => {
  const tmp = mkdtempSync(join(tmpdir(), 'softverbs-ucma-'));
  try {
    const lines = structs.flatMap((s) => [
      `printf("${s.name} %zu\\n", sizeof(struct ${s.name}));`,
      ...fieldsOf(s).map((f) => `printf("${s.name}.${f} %zu\\n", offsetof(struct ${s.name}, ${member(s, f)}));`),
    ]);
    writeFileSync(join(tmp, 'l.c'), `#include <stddef.h>
#include <stdio.h>
#include <netinet/in.h>
#include <rdma/ib_user_verbs.h>
#include <rdma/ib_user_sa.h>
#include <rdma/rdma_user_cm.h>
int main(void)
{
${lines.map((l) => `\t${l}`).join('\n')}
\treturn 0;
}
`);
    const cc = spawnSync('cc', ['-o', join(tmp, 'l'), join(tmp, 'l.c')], { encoding: 'utf8' });
    assert.equal(cc.status, 0, cc.stderr);
    const got = new Map(spawnSync(join(tmp, 'l'), { encoding: 'utf8' }).stdout.trim().split('\n').map((l) => l.split(' ') as [string, string]).map(([k, v]) => [k, Number(v)]));
    assert.ok(structs.length > 30, `${structs.length} structs`);
    for (const s of structs) {
      const l = layout(s);
      assert.equal(l.size, got.get(s.name), `sizeof(struct ${s.name})`);
      for (const f of fieldsOf(s)) assert.equal(l.byName.get(f)!.offset, got.get(`${s.name}.${f}`), `offsetof(struct ${s.name}, ${member(s, f)})`);
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});
