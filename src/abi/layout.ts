/**
 * C struct layouts as data. A struct is a list of fields; offsets, sizes and
 * alignment follow the x86-64 System V rules the kernel headers are compiled
 * with, so the tables in `uverbs.ts` and `queue.ts` can be written in header
 * order and the offsets fall out. The field list also gives the struct its
 * TypeScript type: `unpack(CREATE_QP, …)` returns `{ qp_type: number,
 * user_handle: bigint, … }` and `pack` refuses a field the struct does not
 * have. Tests pin the computed offsets to values written down from
 * `ib_user_verbs.h` by hand, so a mistake in either shows.
 */

/** A scalar C type: unsigned/signed ints of 8..64 bits. */
export type Scalar = 'u8' | 'u16' | 'u32' | 'u64' | 's16' | 's32';

/** One field: a scalar, a byte array, or a nested struct. */
export type FieldType = Scalar | { readonly bytes: number } | StructDef;

export type Field = readonly [string, FieldType];

/** A struct definition as written in the header. `F` keeps the field names and types for inference. */
export interface StructDef<F extends readonly Field[] = readonly Field[]> {
  readonly name: string;
  readonly fields: F;
}

/** Declares a struct; the literal field list is kept so `Infer` can read it. */
export function struct<const F extends readonly Field[]>(name: string, fields: F): StructDef<F> {
  return { name, fields };
}

type ValueOf<T> = T extends 'u64' ? bigint : T extends Scalar ? number : T extends { bytes: number } ? Uint8Array : T extends StructDef<infer G> ? ValuesOf<G> : never;
type InputOf<T> = T extends 'u64' ? bigint | number : T extends Scalar ? number : T extends { bytes: number } ? Uint8Array : T extends StructDef<infer G> ? InputsOf<G> : never;
type ValuesOf<F extends readonly Field[]> = { [E in F[number] as E[0]]: ValueOf<E[1]> };
type InputsOf<F extends readonly Field[]> = { [E in F[number] as E[0]]?: InputOf<E[1]> };

/** What decoding a struct gives: numbers for ≤32-bit fields, bigint for u64, Uint8Array for byte arrays, objects for nested structs. */
export type Infer<S extends StructDef> = S extends StructDef<infer F> ? ValuesOf<F> : never;
/** What encoding a struct takes: any subset of its fields (the rest are zero); u64 fields also take a number. */
export type Input<S extends StructDef> = S extends StructDef<infer F> ? InputsOf<F> : never;
/** The field names of a struct. */
export type FieldName<S extends StructDef> = S extends StructDef<infer F> ? F[number][0] : never;

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

const SCALAR_SIZE: Record<Scalar, number> = { u8: 1, u16: 2, u32: 4, u64: 8, s16: 2, s32: 4 };
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

/** A decoded struct seen without its type (the codec's own view). */
type Values = { [k: string]: number | bigint | Uint8Array | Values };

/** Reads a struct at `off`. The caller has checked that `off + size` fits. */
export function decode<S extends StructDef>(def: S, dv: DataView, off = 0): Infer<S> {
  const l = layout(def);
  const out: Values = {};
  for (const f of l.fields) {
    const o = off + f.offset;
    const t = f.type;
    if (t === 'u8') out[f.name] = dv.getUint8(o);
    else if (t === 'u16') out[f.name] = dv.getUint16(o, true);
    else if (t === 'u32') out[f.name] = dv.getUint32(o, true);
    else if (t === 's16') out[f.name] = dv.getInt16(o, true);
    else if (t === 's32') out[f.name] = dv.getInt32(o, true);
    else if (t === 'u64') out[f.name] = dv.getBigUint64(o, true);
    else if (isStruct(t)) out[f.name] = decode(t, dv, o) as Values;
    else out[f.name] = new Uint8Array(dv.buffer, dv.byteOffset + o, t.bytes).slice();
  }
  return out as Infer<S>;
}

/** Writes a struct at `off`; missing fields are zero (reserved stays zero). */
export function encode<S extends StructDef>(def: S, input: Input<S>, dv: DataView, off = 0): void {
  const l = layout(def);
  const v = input as Partial<Values>;
  for (const f of l.fields) {
    const o = off + f.offset;
    const t = f.type;
    const x = v[f.name];
    if (isStruct(t)) {
      encode(t, (x ?? {}) as Input<typeof t>, dv, o);
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
    else if (t === 'u16' || t === 's16') dv.setUint16(o, n & 0xffff, true);
    else if (t === 'u32') dv.setUint32(o, n >>> 0, true);
    else dv.setInt32(o, n | 0, true);
  }
}

/** Encodes a struct into a fresh Buffer of exactly sizeof(struct). */
export function pack<S extends StructDef>(def: S, v: Input<S>): Buffer {
  const b = Buffer.alloc(layout(def).size);
  encode(def, v, new DataView(b.buffer, b.byteOffset, b.byteLength));
  return b;
}

/** Decodes a struct from a Buffer (zero-extended if the buffer is short, as the kernel does for shorter userspace structs). */
export function unpack<S extends StructDef>(def: S, b: Uint8Array, off = 0): Infer<S> {
  const size = layout(def).size;
  let src = b.subarray(off, off + size);
  if (src.byteLength < size) {
    const z = new Uint8Array(size);
    z.set(src);
    src = z;
  }
  return decode(def, new DataView(src.buffer, src.byteOffset, size));
}

/** Byte offsets of a struct's fields by name (for fast-path DataView access without decoding the whole struct). */
export function offsets<S extends StructDef>(def: S): { readonly [K in FieldName<S>]: number } & { readonly SIZE: number } {
  const l = layout(def);
  // made whole by fromEntries, not a property at a time: past a dozen keyed stores V8 turns an object into a hash
  // table, and every `SW.opcode` on the rings' hot paths was a generic inline-cache lookup (the send WQE's writer:
  // 160 -> 95 ns a post)
  const o = Object.fromEntries([['SIZE', l.size], ...l.fields.map((f) => [f.name, f.offset] as const)]);
  return o as { readonly [K in FieldName<S>]: number } & { readonly SIZE: number };
}
