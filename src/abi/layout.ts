/**
 * C struct layouts as data. A struct is a list of fields; offsets, sizes and
 * alignment follow the x86-64 System V rules the kernel headers are compiled
 * with, so the tables in `uverbs.ts` can be written in header order and the
 * offsets fall out. Tests pin the computed offsets to values written down
 * from `ib_user_verbs.h` by hand, so a mistake in either shows.
 */

/** A scalar C type: unsigned/signed ints of 8..64 bits. */
export type Scalar = 'u8' | 'u16' | 'u32' | 'u64' | 's32';

/** One field: a scalar, a byte array, or a nested struct. */
export type FieldType = Scalar | { bytes: number } | StructDef;

/** A struct definition as written in the header. */
export interface StructDef {
  readonly name: string;
  readonly fields: ReadonlyArray<readonly [string, FieldType]>;
}

/** A field after layout. */
export interface LaidField {
  readonly name: string;
  readonly type: FieldType;
  readonly offset: number;
  readonly size: number;
}

/** A struct after layout: size padded to its alignment, as sizeof() gives. */
export interface Layout {
  readonly name: string;
  readonly size: number;
  readonly align: number;
  readonly fields: readonly LaidField[];
  readonly byName: ReadonlyMap<string, LaidField>;
}

const SCALAR_SIZE: Record<Scalar, number> = { u8: 1, u16: 2, u32: 4, u64: 8, s32: 4 };
const cache = new WeakMap<StructDef, Layout>();

function isStruct(t: FieldType): t is StructDef {
  return typeof t === 'object' && 'fields' in t;
}

function sizeAlign(t: FieldType): [number, number] {
  if (typeof t === 'string') return [SCALAR_SIZE[t], SCALAR_SIZE[t]];
  if (isStruct(t)) {
    const l = layout(t);
    return [l.size, l.align];
  }
  return [t.bytes, 1];
}

/** Lays a struct out with C rules (natural alignment, tail padding). */
export function layout(def: StructDef): Layout {
  const hit = cache.get(def);
  if (hit) return hit;
  let off = 0;
  let align = 1;
  const fields: LaidField[] = [];
  for (const [name, type] of def.fields) {
    const [size, a] = sizeAlign(type);
    off = Math.ceil(off / a) * a;
    fields.push({ name, type, offset: off, size });
    off += size;
    align = Math.max(align, a);
  }
  const size = Math.ceil(off / align) * align;
  const l: Layout = { name: def.name, size, align, fields, byName: new Map(fields.map((f) => [f.name, f])) };
  cache.set(def, l);
  return l;
}

/** Decoded struct values: numbers for ≤32-bit fields, bigint for u64, Uint8Array for bytes, objects for nested. */
export type Values = { [k: string]: number | bigint | Uint8Array | Values };

/** Reads a struct at `off`. The caller has checked that `off + size` fits. */
export function decode(def: StructDef, dv: DataView, off = 0): Values {
  const l = layout(def);
  const out: Values = {};
  for (const f of l.fields) {
    const o = off + f.offset;
    const t = f.type;
    if (t === 'u8') out[f.name] = dv.getUint8(o);
    else if (t === 'u16') out[f.name] = dv.getUint16(o, true);
    else if (t === 'u32') out[f.name] = dv.getUint32(o, true);
    else if (t === 's32') out[f.name] = dv.getInt32(o, true);
    else if (t === 'u64') out[f.name] = dv.getBigUint64(o, true);
    else if (isStruct(t)) out[f.name] = decode(t, dv, o);
    else out[f.name] = new Uint8Array(dv.buffer, dv.byteOffset + o, t.bytes).slice();
  }
  return out;
}

/** Writes a struct at `off`; missing fields are zero (reserved stays zero). */
export function encode(def: StructDef, v: Partial<Values>, dv: DataView, off = 0): void {
  const l = layout(def);
  for (const f of l.fields) {
    const o = off + f.offset;
    const t = f.type;
    const x = v[f.name];
    if (isStruct(t)) {
      encode(t, (x as Values | undefined) ?? {}, dv, o);
      continue;
    }
    if (typeof t === 'object') {
      const bytes = new Uint8Array(dv.buffer, dv.byteOffset + o, t.bytes);
      bytes.fill(0);
      if (x instanceof Uint8Array) bytes.set(x.subarray(0, t.bytes));
      continue;
    }
    if (t === 'u64') {
      dv.setBigUint64(o, BigInt.asUintN(64, typeof x === 'bigint' ? x : BigInt((x as number | undefined) ?? 0)), true);
      continue;
    }
    const n = Number(x ?? 0);
    if (t === 'u8') dv.setUint8(o, n & 0xff);
    else if (t === 'u16') dv.setUint16(o, n & 0xffff, true);
    else if (t === 'u32') dv.setUint32(o, n >>> 0, true);
    else dv.setInt32(o, n | 0, true);
  }
}

/** Encodes a struct into a fresh Buffer of exactly sizeof(struct). */
export function pack(def: StructDef, v: Partial<Values>): Buffer {
  const b = Buffer.alloc(layout(def).size);
  encode(def, v, new DataView(b.buffer, b.byteOffset, b.byteLength));
  return b;
}

/** Decodes a struct from a Buffer (zero-extended if the buffer is short, as the kernel does for shorter userspace structs). */
export function unpack(def: StructDef, b: Uint8Array, off = 0): Values {
  const size = layout(def).size;
  let src = b.subarray(off, off + size);
  if (src.byteLength < size) {
    const z = new Uint8Array(size);
    z.set(src);
    src = z;
  }
  return decode(def, new DataView(src.buffer, src.byteOffset, size));
}
