// The transposed float product for many rows (training's input gradient):
// dx[r, c] = w_scale * Σ_o dy[r, o] * code[o, c].
//
// TILE: a 128 x 128 tile of dx per workgroup (256 threads, 8 x 8 outputs
//   each: rows 4(ty + 16g) + i, columns 4(tx + 16h) + j for g, h in 0..2),
//   8 features per slice. The slice of dy (128 rows x 8 features) and the
//   codes of the slice (8 feature rows x 8 packed words = 128 columns),
//   decoded once to f32, are staged k-major in workgroup memory as padded
//   rows of vec4; the next slice is loaded into registers while the current
//   one is multiplied. The accumulators are named registers (written out by
//   ternary.rs). Without SPLIT the tile is scaled and written (`first`) or
//   added to dx; with SPLIT workgroup z covers features
//   [z kchunk, (z + 1) kchunk) of the chunk and writes its raw partial sums
//   to slice z of `part` (row stride nn), summed in order by
//   `ternary_float_sumk.wgsl`.
// The sum of the partials is `ternary_float_sumk.wgsl`.
//
// Packed layout: word k of a weight row holds columns 16k..16k+15, column
// 16k + 4t + i in bits 8i + 2t as u = code + 1.
//#include ternary_float_params
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
#ifdef SPLIT
@group(0) @binding(3) var<storage, read_write> part: array<f32>;
#endif
#ifndef SPLIT
@group(0) @binding(3) var<storage, read> wscale: array<f32>;
@group(0) @binding(4) var<storage, read_write> o: array<f32>;
#endif

const BM: u32 = 128u;
const BN: u32 = 128u;
const BK: u32 = 8u;
const TX: u32 = 16u;
const TY: u32 = 16u;
const PA: u32 = BM / 4u + 1u;
const PB: u32 = BN / 4u + 1u;
const M2: u32 = 0x03030303u;

var<workgroup> tile_a: array<vec4<f32>, BK * PA>;
// the decoded codes (-1, 0, 1: exact in f16, which halves this tile where
// the adapter offers SHADER_F16)
var<workgroup> tile_b: array<vec4<{{CT}}>, BK * PB>;

// dy[i0 + i, kk] (zero outside)
fn load_a(i: u32, kk: u32, i0: u32, kend: u32) -> f32 {
    if (i0 + i < p.nr && kk < kend) {
        return a[p.sa + (i0 + i) * p.astride + kk];
    }
    return 0.0;
}

// The packed word `wc` (0..8) of the tile for feature kk (codes 0 outside).
fn load_w(wc: u32, kk: u32, j0: u32, kend: u32) -> u32 {
    if (kk < kend && j0 + 16u * wc < p.nn) {
        return w[p.sw + kk * p.wpr + j0 / 16u + wc];
    }
    return 0x55555555u;
}

fn write4(row: u32, col: u32, v: vec4<f32>, scale: f32) {
    if (row >= p.nr) {
        return;
    }
    write1(row, col, v.x, scale);
    write1(row, col + 1u, v.y, scale);
    write1(row, col + 2u, v.z, scale);
    write1(row, col + 3u, v.w, scale);
}

fn write1(row: u32, col: u32, v: f32, scale: f32) {
    if (col >= p.nn) {
        return;
    }
#ifdef SPLIT
    part[p.sp + p.zs * scale_z + row * p.nn + col] = v;
#endif
#ifndef SPLIT
    let idx = p.so + row * p.os + col;
    if (p.first == 1u) {
        o[idx] = v * scale;
    } else {
        o[idx] = o[idx] + v * scale;
    }
#endif
}

#ifdef SPLIT
var<private> scale_z: u32;
#endif

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let tx = t % TX;
    let ty = t / TX;
    let i0 = wg.y * BM;
    let j0 = wg.x * BN;
    let kbeg = min(p.nk, wg.z * p.kchunk);
    let kend = min(p.nk, kbeg + p.kchunk);
    let nslices = (kend - kbeg + BK - 1u) / BK;
#ifdef SPLIT
    scale_z = wg.z;
#endif
    // loaders: dy row t / 2, features 4(t % 2)..+4; weight word t / 4 (feature
    // (t / 4) / 8, word (t / 4) % 8), column group t % 4 of the word
    let li = t / 2u;
    let lk = (t % 2u) * 4u;
    let wf = t / 32u;
    let wc = (t / 4u) % 8u;
    let wq = t % 4u;
{{DECL}}    var ra0 = load_a(li, kbeg + lk, i0, kend);
    var ra1 = load_a(li, kbeg + lk + 1u, i0, kend);
    var ra2 = load_a(li, kbeg + lk + 2u, i0, kend);
    var ra3 = load_a(li, kbeg + lk + 3u, i0, kend);
    var rw = load_w(wc, kbeg + wf, j0, kend);
    for (var s = 0u; s < nslices; s++) {
        let ai = li / 4u;
        let ac = li % 4u;
        tile_a[lk * PA + ai][ac] = ra0;
        tile_a[(lk + 1u) * PA + ai][ac] = ra1;
        tile_a[(lk + 2u) * PA + ai][ac] = ra2;
        tile_a[(lk + 3u) * PA + ai][ac] = ra3;
        tile_b[wf * PB + 4u * wc + wq] = vec4<{{CT}}>(vec4<f32>(unpack4xU8((rw >> (2u * wq)) & M2)) - 1.0);
        workgroupBarrier();
        if (s + 1u < nslices) {
            let pn = kbeg + (s + 1u) * BK;
            ra0 = load_a(li, pn + lk, i0, kend);
            ra1 = load_a(li, pn + lk + 1u, i0, kend);
            ra2 = load_a(li, pn + lk + 2u, i0, kend);
            ra3 = load_a(li, pn + lk + 3u, i0, kend);
            rw = load_w(wc, pn + wf, j0, kend);
        }
        for (var kk = 0u; kk < BK; kk++) {
{{FMA}}        }
        workgroupBarrier();
    }
#ifdef SPLIT
    let scale = 1.0;
#endif
#ifndef SPLIT
    let scale = wscale[p.sc];
#endif
{{WRITE}}}
