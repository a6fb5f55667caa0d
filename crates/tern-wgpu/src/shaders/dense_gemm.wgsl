// Dense products `C = alpha op(A) op(B) + beta C` over one block of the
// problem; the host cuts the problem into blocks whose operands fit one
// binding each and passes the block's leading dimensions and shifts.
//
// TILE: a BM x BN tile of C per workgroup, BK-deep slices of A and B staged in
//   workgroup memory (k-major, padded rows of vec4), each thread holding a
//   TM x TN register block made of 4-wide column groups. The next slice is
//   loaded into registers while the current one is multiplied. With SPLIT,
//   workgroup z covers k range [z kchunk, (z + 1) kchunk) and writes its raw
//   partial product to a scratch slice (summed by SUMK).
//#include gemm_params

@group(0) @binding(1) var<storage, read> a: array<f32>;
#ifndef HB
@group(0) @binding(2) var<storage, read> b: array<f32>;
#endif
#ifdef HB
// HB: B holds f16 values packed two per u32 (low half first), widened to f32
// as the slice is loaded; its shift and leading dimension count halves (the
// loads read B through the slots B_AT / B_END: `b_at(..)` here, `b[..]`
// without HB).
@group(0) @binding(2) var<storage, read> b: array<u32>;

fn b_at(h: u32) -> f32 {
    let v = unpack2x16float(b[h >> 1u]);
    return select(v.x, v.y, (h & 1u) == 1u);
}
#endif
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

const BM: u32 = {{BM}}u;
const BN: u32 = {{BN}}u;
const BK: u32 = {{BK}}u;
const TM: u32 = {{TM}}u;
const TN: u32 = {{TN}}u;
// threads along n and m
const TX: u32 = BN / TN;
const TY: u32 = BM / TM;
const NT: u32 = TX * TY;
// padded row strides of the staged slices, in vec4
const PA: u32 = BM / 4u + 1u;
const PB: u32 = BN / 4u + 1u;

var<workgroup> tile_a: array<vec4<f32>, BK * PA>;
var<workgroup> tile_b: array<vec4<f32>, BK * PB>;

// Element e of the A slice starting at k index p0 (zero outside).
fn load_a(e: u32, i0: u32, p0: u32, kend: u32) -> f32 {
#ifdef TA
    let i = e % BM;
    let kk = e / BM;
    if (i0 + i < p.m && p0 + kk < kend) {
        return a[p.sa + (p0 + kk) * p.lda + i0 + i];
    }
#endif
#ifndef TA
    let kk = e % BK;
    let i = e / BK;
    if (i0 + i < p.m && p0 + kk < kend) {
        return a[p.sa + (i0 + i) * p.lda + p0 + kk];
    }
#endif
    return 0.0;
}

fn put_a(e: u32, v: f32) {
#ifdef TA
    let i = e % BM;
    let kk = e / BM;
#endif
#ifndef TA
    let kk = e % BK;
    let i = e / BK;
#endif
    tile_a[kk * PA + i / 4u][i % 4u] = v;
}

fn load_b(e: u32, j0: u32, p0: u32, kend: u32) -> f32 {
#ifdef TB
    let kk = e % BK;
    let j = e / BK;
    if (j0 + j < p.n && p0 + kk < kend) {
        return {{B_AT}}p.sb + (j0 + j) * p.ldb + p0 + kk{{B_END}};
    }
#endif
#ifndef TB
    let j = e % BN;
    let kk = e / BN;
    if (j0 + j < p.n && p0 + kk < kend) {
        return {{B_AT}}p.sb + (p0 + kk) * p.ldb + j0 + j{{B_END}};
    }
#endif
    return 0.0;
}

fn put_b(e: u32, v: f32) {
#ifdef TB
    let kk = e % BK;
    let j = e / BK;
#endif
#ifndef TB
    let j = e % BN;
    let kk = e / BN;
#endif
    tile_b[kk * PB + j / 4u][j % 4u] = v;
}

// Writes 4 consecutive columns of one row of the block.
fn write4(row: u32, col: u32, z: u32, v: vec4<f32>) {
    if (row >= p.m) {
        return;
    }
    write1(row, col, z, v.x);
    write1(row, col + 1u, z, v.y);
    write1(row, col + 2u, z, v.z);
    write1(row, col + 3u, z, v.w);
}

fn write1(row: u32, col: u32, z: u32, v: f32) {
    if (col >= p.n) {
        return;
    }
#ifdef SPLIT
    c[p.sc + z * p.zs + row * p.ldc + col] = v;
#endif
#ifndef SPLIT
    let idx = p.sc + row * p.ldc + col;
    var o = p.alpha * v;
    if (p.beta != 0.0) {
        o = o + p.beta * c[idx];
    }
    c[idx] = o;
#endif
}

// The register block is written out by the host (dense.rs, `gemm_source`)
// as named variables: no private arrays, which drivers may leave in memory.
@compute @workgroup_size(NT)
fn main(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let tx = t % TX;
    let ty = t / TX;
    let i0 = wg.y * BM;
    let j0 = wg.x * BN;
    let kbeg = min(p.k, wg.z * p.kchunk);
    let kend = min(p.k, kbeg + p.kchunk);
    let nslices = (kend - kbeg + BK - 1u) / BK;
{{DECL}}
{{FETCH_FIRST}}
    for (var s = 0u; s < nslices; s++) {
{{PUT}}
        workgroupBarrier();
        if (s + 1u < nslices) {
            let pn = kbeg + (s + 1u) * BK;
{{FETCH_NEXT}}
        }
        for (var kk = 0u; kk < BK; kk++) {
{{FMA}}
        }
        workgroupBarrier();
    }
{{WRITE}}
}
